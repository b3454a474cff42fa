"""Comparing models: ``fedvc diff`` (tensor by tensor, interference across updates,
modulo permutation)."""

from __future__ import annotations

import argparse

from fedvc import render
from fedvc.align import apply_permutation, infer_spec, l2_distance, weight_matching
from fedvc.cli.common import UsageError, load_model, maybe_repo, print_json, read_spec
from fedvc.diff import ParamDiff, diff_params
from fedvc.interference import InterferenceReport, interference_report
from fedvc.repo import Repository


def cmd_diff(args: argparse.Namespace) -> int:
    repo = maybe_repo(args)
    if args.interference:
        return _interference(args, repo)
    if len(args.inputs) != 2:
        raise UsageError(
            f"fedvc diff compares two models, got {len(args.inputs)} (use --interference for more)"
        )
    if args.aligned:
        return _aligned(args, repo)
    a, blobs_a = load_model(repo, args.inputs[0])
    b, blobs_b = load_model(repo, args.inputs[1])

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


def _interference(args: argparse.Namespace, repo: Repository | None) -> int:
    if not args.base:
        raise UsageError(
            "--interference measures deltas from a common base: give --base REV_OR_FILE"
        )
    base = load_model(repo, args.base)[0]
    updates = [load_model(repo, spec)[0] for spec in args.inputs]
    labels = [
        spec if args.inputs.count(spec) == 1 else f"{spec} #{i}"
        for i, spec in enumerate(args.inputs, 1)
    ]
    report = interference_report(base, updates, clients=labels)
    if args.json:
        print_json(report.to_json())
    else:
        print("\n".join(interference_lines(report)))
    return 0


def interference_lines(report: InterferenceReport) -> list[str]:
    """Per-client norms, the worst layers, and the whole-model figures."""
    model = report.model
    clients = [
        (c, n, r) for c, n, r in zip(report.clients, model.norms, model.relative_norms, strict=True)
    ]
    lines = render.table(["update", "delta norm", "vs mean"], clients, "lrr")
    worst = [(name, report.layers[name]) for name in report.top_layers]
    if worst:
        lines += ["", "most conflicting layers:"]
        lines += render.table(
            ["layer", "score", "mean cos", "min cos", "sign conflict", "top-k overlap"],
            [
                (n, f.score, f.mean_cosine, f.min_cosine, f.sign_conflict, f.overlap)
                for n, f in worst
            ],
            "lrrrrr",
        )
    lines += [
        "",
        f"interference score {render.number(model.score)} (0 = updates agree, 1 = they cancel)",
        f"  mean cosine {render.number(model.mean_cosine)}, min cosine {render.number(model.min_cosine)}, "
        f"sign conflict {render.number(model.sign_conflict)}, top-{report.density:.0%} overlap "
        f"{render.number(model.overlap)}, norm ratio {render.number(model.norm_ratio)}",
    ]
    return lines


def _aligned(args: argparse.Namespace, repo: Repository | None) -> int:
    a = load_model(repo, args.inputs[0])[0]
    b = load_model(repo, args.inputs[1])[0]
    spec = read_spec(args.spec) or infer_spec(a)
    aligned = apply_permutation(spec, weight_matching(spec, a, b), b)
    raw, after = l2_distance(a, b), l2_distance(a, aligned)
    if args.json:
        print_json({"raw_l2": raw, "aligned_l2": after})
        return 0
    print(f"L2 distance        {raw:.6g}")
    print(
        f"after alignment    {after:.6g}  ({after / raw:.1%} of raw)"
        if raw
        else f"after alignment    {after:.6g}"
    )
    return 0


def _shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "x".join(map(str, shape)) or "scalar"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("diff", help="compare models (revisions or files)")
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="A B, or with --interference the updates"
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="list unchanged tensors too")
    p.add_argument(
        "--interference", action="store_true", help="conflicts among updates from --base"
    )
    p.add_argument("--base", metavar="REV_OR_FILE", help="common base of the updates")
    p.add_argument("--aligned", action="store_true", help="distance modulo permutation")
    p.add_argument(
        "--spec", metavar="SPEC.json", help="permutation spec when it cannot be inferred"
    )
    p.set_defaults(run=cmd_diff)
