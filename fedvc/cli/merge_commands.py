"""``fedvc merge`` and ``fedvc barrier``: merging models from the command line.

INPUTs are revisions or model files. Inside a repository the merge is recorded as a commit
whose parents are the base and the inputs that are commits, with the strategy spec, the
weights and the interference summary in its metadata, so ``fedvc show`` tells later how
the model was made.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedvc import render
from fedvc.admission import (
    check_grams,
    check_structure,
    check_values,
    params_layout,
)
from fedvc.align import (
    PermutationSpec,
    activation_matching,
    apply_permutation,
    infer_spec,
    merge_many,
    weight_matching,
)
from fedvc.barrier import loss_barrier
from fedvc.cli.common import (
    UsageError,
    is_model_file,
    load_model,
    maybe_repo,
    model_and_data,
    parse_assignments,
    read_spec,
)
from fedvc.interference import interference_report
from fedvc.merge import MergeStrategy, StrategySpec, Update, align, chain, fedavg, make
from fedvc.merge.base import uses_fisher, uses_grams
from fedvc.merge.matched import permute_update
from fedvc.objects import ObjectId, short_id
from fedvc.repo import Repository, branch_ref
from fedvc.round import UpdateRejected
from fedvc.round_store import attached_snapshots
from fedvc.signing import SigningKey
from fedvc.tensor_files import load_params, save_params
from fedvc.tensors import ParamMap


def _client_id(repo: Repository | None, spec: str) -> str:
    if is_model_file(spec):  # hashed in blocks: a model file is never held twice in memory
        digest = hashlib.sha256()
        with open(spec, "rb") as file:
            for block in iter(lambda: file.read(1 << 22), b""):
                digest.update(block)
        return "file:" + digest.hexdigest()
    assert repo is not None  # load_model already refused a non-file without a repository
    return repo.resolve(spec)


def _weights(text: str | None, count: int) -> list[float]:
    if text is None:
        return [1.0] * count
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise UsageError(f"--weights expects numbers separated by commas, got {text!r}") from None
    if len(weights) != count:
        raise UsageError(
            f"--weights has {len(weights)} numbers for {count} inputs: give one per INPUT"
        )
    return weights


def _strategy(args: argparse.Namespace) -> MergeStrategy:
    built = make(args.strategy, parse_assignments(args.param, "--param"))
    if not isinstance(built, MergeStrategy):
        raise UsageError(
            f"{args.strategy!r} transforms updates; use a merge strategy with --strategy"
        )
    return built


def _activation_aligned(
    args: argparse.Namespace,
    base: ParamMap | None,
    updates: list[Update],
    spec: PermutationSpec | None,
) -> list[Update]:
    """Align updates by their activations on the user's data.

    The reference is the base, or without one the mean of the set after MergeMany, so no
    single input is privileged. Each permutation is hooked on the module whose weight
    carries it on axis 0 (``0.weight`` → module ``0``).
    """
    if not (args.model and args.data):
        raise UsageError(
            "--align activation runs the model: give --model MODULE:FACTORY and --data MODULE:LOADER"
        )
    factory, inputs, _ = model_and_data(args)
    symmetry = spec or infer_spec(base if base is not None else updates[0].params)
    layers = {}
    for perm, axes in symmetry.perm_to_axes.items():
        carriers = [name.rsplit(".", 1)[0] for name, axis in axes if axis == 0]
        if not carriers:
            raise UsageError(
                f"--align activation hooks permutation {perm!r} on the module whose weight "
                "carries it on axis 0, but no tensor of the spec does: align by weight instead"
            )
        layers[perm] = carriers[0]
    if base is None:
        together = merge_many(
            symmetry, [u.params for u in updates], weights=[u.weight for u in updates]
        )
        aligned_set = [u.with_params(m) for u, m in zip(updates, together.models, strict=True)]
        base = fedavg().merge(None, aligned_set, {})[0]

    from fedvc import torch_io  # torch loads only for the commands that run a model

    def activations(params: ParamMap) -> dict[str, np.ndarray]:
        module = factory()
        torch_io.load_into_module(module, params, strict=True)
        return torch_io.collect_activations(module, np.asarray(inputs, dtype=np.float32), layers)

    reference = activations(base)
    aligned = []
    for update in updates:
        perms = activation_matching(reference, activations(update.params))
        aligned.append(permute_update(symmetry, perms, update))
    return aligned


def _attached(
    repo: Repository | None,
    args: argparse.Namespace,
    models: Sequence[ParamMap],
    kind: str,
    needed: bool,
) -> list[ParamMap | None]:
    """Each INPUT's Fisher (``kind="fisher"``) or Grams (``"grams"``), checked against it.

    They come from the files given with ``--fisher`` / ``--gram``, one per INPUT, or, when
    the strategy needs them and no file is given, from what each INPUT commit attached
    (an update of a round names its Fisher and Grams in its metadata), so a round's
    updates can be merged again from the command line with the same information.
    """
    option = "--fisher" if kind == "fisher" else "--gram"
    files: list[str] = getattr(args, kind)
    if files and len(files) != len(args.inputs):
        raise UsageError(
            f"{option} given {len(files)} times for {len(args.inputs)} inputs: one per INPUT"
        )
    found: list[tuple[str, ParamMap | None]]
    if files:
        found = [(f"{option} {f}", load_params(Path(f))) for f in files]
    elif needed:
        found = [
            (f"the {kind} INPUT {spec} attached", _attachment(repo, spec, kind))
            for spec in args.inputs
        ]
    else:
        return [None] * len(args.inputs)
    for (source, attached), model, spec in zip(found, models, args.inputs, strict=True):
        if attached is None:
            raise UsageError(
                f"INPUT {spec!r} carries no {kind}, and the strategy merges with one per INPUT: "
                f"give {option} FILE for every INPUT (same order), or merge update commits "
                f"whose clients sent their {kind}"
            )
        try:
            if kind == "fisher":
                check_structure(
                    "Fisher", params_layout(model), params_layout(attached), fisher=True
                )
            else:
                check_grams(params_layout(model), params_layout(attached))
            check_values(kind, attached, fisher=kind == "fisher")
        except UpdateRejected as bad:
            raise UsageError(f"{source} does not fit INPUT {spec!r}: {bad.detail}") from None
    return [attached for _, attached in found]


def _attachment(repo: Repository | None, spec: str, kind: str) -> ParamMap | None:
    """The Fisher or Grams snapshot an INPUT commit names in its metadata, if any."""
    if repo is None or is_model_file(spec):
        return None
    role = "Fisher" if kind == "fisher" else "Grams"
    snapshot = attached_snapshots(repo.get_commit(repo.resolve(spec))).get(role)
    return repo.read_snapshot(snapshot) if snapshot is not None else None


def cmd_merge(args: argparse.Namespace) -> int:
    repo = maybe_repo(args)
    base = load_model(repo, args.base)[0] if args.base else None
    weights = _weights(args.weights, len(args.inputs))
    strategy = _strategy(args)
    models = [load_model(repo, spec)[0] for spec in args.inputs]
    clients = [_client_id(repo, spec) for spec in args.inputs]
    for i, client in enumerate(clients):
        if client in clients[:i]:
            raise UsageError(
                f"INPUT {args.inputs[i]!r} is the same model as {args.inputs[clients.index(client)]!r}:"
                " give each model once, and --weights to make one count more"
            )
    fishers = _attached(repo, args, models, "fisher", uses_fisher(strategy.spec))
    grams = _attached(repo, args, models, "grams", uses_grams(strategy.spec))
    updates = [
        Update(model, weight=w, client=client, fisher=f, grams=g)
        for model, client, w, f, g in zip(models, clients, weights, fishers, grams, strict=True)
    ]
    spec = read_spec(args.spec)
    recorded = strategy.spec
    if args.align == "weight":  # align here, so interference is measured in one basis too
        aligner = align(spec)
        updates = aligner.apply(base, updates)
        recorded = chain(aligner, strategy).spec
    elif args.align == "activation":
        updates = _activation_aligned(args, base, updates, spec)
    merged, _ = strategy.merge(base, updates, strategy.init(base))
    out = Path(args.output)
    save_params(merged, out)
    print(f"merged {len(updates)} inputs with {recorded} -> {out}")

    summary = interference_report(base, updates).summary() if base is not None and updates else None
    if summary is not None:
        print(
            f"interference score {render.number(summary['score'])}, "
            f"mean cosine {render.number(summary['mean_cosine'])}"
        )
    if repo is not None and not args.no_commit:
        _record(repo, args, merged, updates, recorded, summary)
    return 0


def _record(
    repo: Repository,
    args: argparse.Namespace,
    merged: dict[str, np.ndarray],
    updates: Sequence[Update],
    strategy: StrategySpec,
    interference: dict[str, Any] | None,
) -> None:
    """Commit the merge; move ``--branch`` (or HEAD's branch when its tip is a parent)."""
    base_id = None if args.base is None or is_model_file(args.base) else repo.resolve(args.base)
    parents = [base_id] if base_id else []
    parents += [
        ObjectId(u.client)
        for u in updates
        if not u.client.startswith("file:") and u.client not in parents
    ]
    metadata = {
        "merge": {
            "strategy": strategy.to_json(),
            "align": args.align,
            "inputs": [{"input": u.client, "weight": u.weight} for u in updates],
            "interference": interference,
        }
    }
    signer = SigningKey.load(args.key) if args.key else None
    message = args.message or f"merge {len(updates)} models with {strategy}"
    snapshot = repo.write_snapshot(merged)
    oid = repo.write_commit(
        snapshot, parents=parents, message=message, metadata=metadata, signer=signer
    )
    branch = args.branch or repo.head_branch
    tip = repo.refs.get_ref(branch_ref(branch))
    if args.branch or (tip is not None and tip in parents):
        repo.refs.set_ref(branch_ref(branch), oid, tip)
        print(f"[{branch} {short_id(oid)}] {message}")
    else:
        print(
            f"commit {short_id(oid)} (on no branch: keep it with 'fedvc branch NAME {short_id(oid)}')"
        )


def cmd_barrier(args: argparse.Namespace) -> int:
    repo = maybe_repo(args)
    a, b = load_model(repo, args.a)[0], load_model(repo, args.b)[0]
    factory, inputs, targets = model_and_data(args)
    module = factory()
    from fedvc import torch_io  # torch loads only for the commands that run a model

    def evaluate(params: ParamMap) -> float:
        return torch_io.classification_loss(module, params, inputs, targets)

    spec = read_spec(args.spec) or infer_spec(a)
    aligned_b = apply_permutation(spec, weight_matching(spec, a, b), b)
    results = {
        "naive": loss_barrier(a, b, evaluate, steps=args.steps),
        "aligned": loss_barrier(a, aligned_b, evaluate, steps=args.steps),
    }
    for name, result in results.items():
        print(f"{name:<8} barrier {result.barrier:.4f}  midpoint {result.midpoint:.4f}")
    if args.plot:
        from fedvc.plots import plot_barriers  # matplotlib loads only when plotting

        plot_barriers(results, Path(args.plot))
        print(f"wrote {args.plot}")
    if args.json:
        print(json.dumps({k: r.to_json() for k, r in results.items()}, indent=2))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("merge", help="merge models (revisions or files) with a strategy")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("-o", "--output", required=True, help="OUT.safetensors or OUT.npz")
    p.add_argument(
        "--strategy", default="fedavg", help="a registered strategy name (default: fedavg)"
    )
    p.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="strategy parameter"
    )
    p.add_argument("--base", metavar="REV_OR_FILE", help="the common base the inputs started from")
    p.add_argument(
        "--weights", metavar="W1,W2,...", help="one weight per INPUT, e.g. example counts"
    )
    p.add_argument(
        "--align",
        choices=["none", "weight", "activation"],
        default="none",
        help="permutation alignment before merging",
    )
    p.add_argument(
        "--fisher",
        action="append",
        default=[],
        metavar="FILE",
        help="diagonal Fisher per INPUT, same order (for the fisher strategies; "
        "default: the Fisher each INPUT commit attached)",
    )
    p.add_argument(
        "--gram",
        dest="grams",
        action="append",
        default=[],
        metavar="FILE",
        help="layer input Grams per INPUT, same order (for regmean; default: the Grams each "
        "INPUT commit attached)",
    )
    p.add_argument(
        "--spec", metavar="SPEC.json", help="permutation spec when it cannot be inferred"
    )
    p.add_argument(
        "--model", metavar="MODULE:FACTORY", help="model factory (for --align activation)"
    )
    p.add_argument("--data", metavar="MODULE:LOADER", help="returns (inputs, targets) arrays")
    p.add_argument("-m", "--message", default="")
    p.add_argument("--key", help="sign the merge commit with this private key file")
    p.add_argument("--branch", help="move this branch to the merge commit")
    p.add_argument("--no-commit", action="store_true", help="only write OUT, record nothing")
    p.set_defaults(run=cmd_merge)

    p = sub.add_parser("barrier", help="loss barrier along the linear path between two models")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--model", required=True, metavar="MODULE:FACTORY")
    p.add_argument(
        "--data", required=True, metavar="MODULE:LOADER", help="returns (inputs, targets)"
    )
    p.add_argument("--spec", metavar="SPEC.json")
    p.add_argument("--steps", type=int, default=11)
    p.add_argument("--plot", metavar="PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_barrier)
