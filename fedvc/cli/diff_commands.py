"""Comparing models: ``fedvc diff`` (tensor by tensor, interference across updates,
modulo permutation)."""

from __future__ import annotations

import argparse

from fedvc import render
from fedvc.cli.common import load_model, maybe_repo, print_json
from fedvc.diff import ParamDiff, diff_params


def cmd_diff(args: argparse.Namespace) -> int:
    repo = maybe_repo(args)
    a, blobs_a = load_model(repo, args.a)
    b, blobs_b = load_model(repo, args.b)

    def known_equal(name: str) -> bool:
        return name in blobs_a and blobs_a.get(name) == blobs_b.get(name)

    result = diff_params(a, b, known_equal=known_equal)
    if args.json:
        print_json(result.to_json())
    else:
        print("\n".join(diff_lines(result, show_all=args.all)))
    return 0


def diff_lines(result: ParamDiff, *, show_all: bool) -> list[str]:
    shown = result.tensors if show_all else result.differences
    rows = [
        (
            t.status,
            t.name,
            t.new_dtype or t.old_dtype,
            _shape(t.new_shape or t.old_shape),
            t.l2,
            t.relative,
            t.cosine,
            t.changed_fraction,
        )
        for t in shown
    ]
    lines = (
        render.table(
            ["status", "tensor", "dtype", "shape", "l2", "relative", "cosine", "changed"],
            rows,
            "llllrrrr",
        )
        if rows
        else ["no tensor differs"]
    )
    counts = ", ".join(f"{n} {status}" for status, n in result.counts.items() if n)
    lines += [
        "",
        f"summary: {counts or 'no tensors'}",
        f"  l2 {render.number(result.total_l2)}, relative {render.number(result.total_relative)}, "
        f"cosine {render.number(result.cosine)}, entries changed {render.number(result.changed_fraction)}",
    ]
    return lines


def _shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "x".join(map(str, shape)) or "scalar"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("diff", help="compare two models (revisions or files)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="list unchanged tensors too")
    p.set_defaults(run=cmd_diff)
