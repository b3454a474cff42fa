"""Merge quality: what aligning hidden units buys when models share no ancestor.

Two figures the merge engine promises, on scikit-learn's bundled digits (8x8 images, 10
classes; nothing is downloaded), inputs scaled to [0, 1], one fixed stratified 70/30
train/test split:

(a) One-shot merge of five clients. Each client trains an MLP 64-256-256-10 from its own
    random initialisation on its own Dirichlet(alpha=0.5) label split of the training
    set; the five models are merged once, with no common base, by naive averaging
    (``fedavg``), matched averaging (``matched``: Git Re-Basin's MergeMany, then the
    example-weighted mean) and matched Fisher merging (``matched_fisher``: the same
    alignment, then each coordinate weighted by its client's diagonal Fisher, which the
    alignment permutes with the weights), and RegMean (``regmean``: each linear layer
    solved as the regression that best reproduces every client's layer on its own
    inputs, from the Gram matrices of those inputs that each client sends; no alignment).
    Printed: each client's test accuracy, the best client, the four merges, and the
    ensemble that averages the five clients' logits (five models' inference cost, a
    reference point rather than a merge).
    Targets: naive collapses (about 0.2), matched >= 0.78, matched + Fisher >= 0.85 and
    above the best single client.

(b) Loss barrier. Two MLPs 64-512-512-512-10 trained from different seeds on the whole
    training set; the test cross-entropy along the straight line between them, naive and
    after weight matching. Targets: midpoint barrier >= 0.5 naive, <= 0.05 aligned. The
    curves are drawn to OUT/barrier.png and all figures written to OUT/merge.json.

Every model is trained with one recipe (``Recipe``): SGD with momentum, weight decay and a
cosine learning-rate schedule. Each client's Fisher is the true Fisher (labels drawn from
the model's own prediction, not the data's), estimated on the client's own training data
with ``FISHER_DRAWS`` label draws per example: a well-fit model is confident, so a single
draw almost always returns the predicted label and the rare other draws, which carry most
of the information, make a one-draw estimate noisy.

Every random choice (partition, initialisations, batch order, Fisher draws, alignment)
follows from ``--seed``; the train/test split is the same for every seed, so figures from
different seeds compare on one test set. The recipe was chosen on a validation split held
out of the training set, never on the test set, and is the same for every client, model
and seed.

With ``--seeds 0-9`` only phase (a) runs, once per seed (partition, initialisations and
batch order all change with it), and a table shows how often each target is met: one
seed is one draw of five clients, and a merge target worth stating holds on most draws.

Usage: python bench/merge.py [--seed 0 | --seeds 0-9] [--out bench/out] [--fisher-draws 16]
                             [--empirical-fisher]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from fedvc_client.fisher import estimate_fisher
from fedvc_client.regmean import layer_grams
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fedvc.align import apply_permutation, infer_spec, weight_matching
from fedvc.barrier import BarrierResult, loss_barrier
from fedvc.merge import Update, fedavg, matched, matched_fisher, regmean
from fedvc.plots import plot_barriers
from fedvc.simulation import dirichlet, partition_table
from fedvc.tensors import ParamMap
from fedvc.torch_io import load_into_module, module_params

nn = torch.nn

SPLIT_SEED = 0
"""The train/test split's seed: fixed, so every --seed is scored on the same test set."""
TEST_FRACTION = 0.3
CLIENTS = 5
ALPHA = 0.5
CLIENT_WIDTHS = (64, 256, 256, 10)
BARRIER_WIDTHS = (64, 512, 512, 512, 10)
FISHER_DRAWS = 16
"""Labels drawn per example for each client's true Fisher (see the module docstring)."""


@dataclass(frozen=True)
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class Recipe:
    """How every model in this benchmark is trained: one recipe for all of them.

    Weight decay and the cosine schedule matter to the merge: decay shrinks what is left
    of each model's random initialisation, which no permutation can align, and ending
    at a small learning rate leaves each model at the bottom of its basin, not on a wall
    of it; both also keep the models' confidence moderate, which the Fisher depends on.
    """

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-3
    epochs: int = 300
    batch_size: int = 32


@dataclass(frozen=True)
class MergeFigures:
    """Test accuracies of phase (a)."""

    clients: list[float]
    sizes: list[int]
    best_client: float
    ensemble: float
    naive: float
    matched: float
    matched_fisher: float
    regmean: float


def load_data() -> Data:
    """Digits scaled to [0, 1], split stratified by class with a fixed seed."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    return Data(x_train, y_train, x_test, y_test)


def make_mlp(widths: Sequence[int], seed: int) -> nn.Sequential:
    """Linear-ReLU-...-Linear with PyTorch's default initialisation drawn from ``seed``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, recipe: Recipe, seed: int) -> None:
    """Minibatch cross-entropy training; the batch order is drawn from ``seed``."""
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
    )
    batches = -(-len(x) // recipe.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.epochs * batches)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), recipe.batch_size):
            rows = order[start : start + recipe.batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[rows]), targets[rows])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
    model.eval()


def logits_of(model: nn.Module, params: ParamMap, x: np.ndarray) -> torch.Tensor:
    """``params`` loaded into ``model`` (a module of the right shape) and run on ``x``."""
    load_into_module(model, params)
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(torch.from_numpy(x))
    return out


def accuracy(logits: torch.Tensor, y: np.ndarray) -> float:
    return float((logits.argmax(1).numpy() == y).mean())


def frozen(model: nn.Module) -> dict[str, np.ndarray]:
    """The module's params as copies: ``module_params`` gives views that training changes."""
    return {name: array.copy() for name, array in module_params(model).items()}


def client_fisher(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    draws: int,
    empirical: bool,
    seed: int,
) -> dict[str, np.ndarray]:
    """The client's diagonal Fisher on its own data.

    The true Fisher repeats every example ``draws`` times, so each copy gets its own label
    drawn from the model's prediction: the mean over copies is the mean of ``draws``
    one-draw estimates, with a ``draws``-fold smaller variance. The empirical Fisher uses
    the data's labels and needs no draws.
    """
    if empirical:
        return estimate_fisher(model, x, y, empirical=True, seed=seed)
    return estimate_fisher(model, x, draws=draws, batch_size=256, seed=seed)


def run_merge(
    data: Data,
    recipe: Recipe,
    seed: int,
    *,
    clients: int = CLIENTS,
    widths: Sequence[int] = CLIENT_WIDTHS,
    fisher_draws: int = FISHER_DRAWS,
    empirical: bool = False,
    verbose: bool = True,
) -> MergeFigures:
    """Phase (a): train ``clients`` models apart, merge them once three ways, score all."""
    parts = dirichlet(data.y_train, clients, ALPHA, seed=seed, min_size=10)
    if verbose:
        print(f"  Dirichlet(alpha={ALPHA}) split of the training set, examples per class:")
        for i, row in enumerate(partition_table(data.y_train, parts)):
            print(f"    client {i}: {' '.join(f'{n:3d}' for n in row)}  ({row.sum()})")
    probe = make_mlp(widths, seed)  # a module to load parameter maps into
    updates: list[Update] = []
    scores: list[float] = []
    for i, rows in enumerate(parts):
        started = time.perf_counter()
        client_seed = seed * 1000 + i + 1
        model = make_mlp(widths, client_seed)  # every client its own initialisation
        x, y = data.x_train[rows], data.y_train[rows]
        train(model, x, y, recipe, seed=client_seed)
        fisher = client_fisher(
            model, x, y, draws=fisher_draws, empirical=empirical, seed=client_seed
        )
        params = frozen(model)
        grams = layer_grams(model, x)
        updates.append(
            Update(params, weight=float(len(rows)), client=f"client{i}", fisher=fisher, grams=grams)
        )
        scores.append(accuracy(logits_of(probe, params, data.x_test), data.y_test))
        if verbose:
            print(
                f"  client {i}: {len(rows)} examples, test accuracy {scores[-1]:.3f} "
                f"(trained + Fisher + Grams in {time.perf_counter() - started:.1f} s)"
            )
    total = sum(update.weight for update in updates)
    ensemble = torch.zeros(len(data.y_test), widths[-1])
    for update in updates:
        ensemble += (update.weight / total) * logits_of(probe, update.params, data.x_test)
    merged: dict[str, float] = {}
    for name, strategy in (
        ("naive", fedavg()),
        ("matched", matched()),
        ("matched_fisher", matched_fisher()),
        ("regmean", regmean()),
    ):
        started = time.perf_counter()
        params, _ = strategy.merge(None, updates, {})
        merged[name] = accuracy(logits_of(probe, params, data.x_test), data.y_test)
        if verbose:
            print(
                f"  merged with {strategy.spec.name}: test accuracy {merged[name]:.3f} "
                f"({time.perf_counter() - started:.1f} s)"
            )
    return MergeFigures(
        clients=scores,
        sizes=[len(rows) for rows in parts],
        best_client=max(scores),
        ensemble=accuracy(ensemble, data.y_test),
        naive=merged["naive"],
        matched=merged["matched"],
        matched_fisher=merged["matched_fisher"],
        regmean=merged["regmean"],
    )


def run_barrier(
    data: Data,
    recipe: Recipe,
    seed: int,
    *,
    widths: Sequence[int] = BARRIER_WIDTHS,
    steps: int = 11,
    verbose: bool = True,
) -> dict[str, BarrierResult]:
    """Phase (b): two models from different seeds; test loss on the path between them."""
    models = []
    for k in (1, 2):
        started = time.perf_counter()
        model_seed = seed * 1000 + 100 + k
        model = make_mlp(widths, model_seed)
        train(model, data.x_train, data.y_train, recipe, seed=model_seed)
        models.append(frozen(model))
        if verbose:
            print(f"  model {k} trained in {time.perf_counter() - started:.1f} s")
    a, b = models
    spec = infer_spec(a)
    started = time.perf_counter()
    b_aligned = apply_permutation(spec, weight_matching(spec, a, b, seed=seed), b)
    if verbose:
        print(f"  weight matching took {time.perf_counter() - started:.2f} s")
    probe = make_mlp(widths, seed)
    targets = torch.from_numpy(data.y_test)

    def test_loss(params: ParamMap) -> float:
        return float(nn.functional.cross_entropy(logits_of(probe, params, data.x_test), targets))

    return {
        "naive": loss_barrier(a, b, test_loss, steps=steps),
        "aligned": loss_barrier(a, b_aligned, test_loss, steps=steps),
    }


def _mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report_merge(figures: MergeFigures) -> None:
    """The table of phase (a), with each figure's target."""
    best = figures.best_client
    rows: list[tuple[str, float, str]] = [
        (f"client {i} ({n} examples)", score, "")
        for i, (score, n) in enumerate(zip(figures.clients, figures.sizes, strict=True))
    ]
    rows += [
        ("best single client", best, ""),
        ("naive average (fedavg)", figures.naive, "target: collapses, about 0.2"),
        (
            "matched (MergeMany + fedavg)",
            figures.matched,
            f"target >= 0.78: {_mark(matched_target(figures))}",
        ),
        (
            "matched + Fisher",
            figures.matched_fisher,
            f"target >= 0.85 and > best client: {_mark(matched_fisher_target(figures))}",
        ),
        (
            "regmean (layer Gram matrices)",
            figures.regmean,
            f"above the best client: {'yes' if figures.regmean > best else 'no'}",
        ),
        ("ensemble of logits (reference)", figures.ensemble, "5 models at inference"),
    ]
    print(f"  {'model':<32} {'test acc':>8}")
    for name, value, note in rows:
        print(f"  {name:<32} {value:>8.3f}  {note}".rstrip())


def matched_target(figures: MergeFigures) -> bool:
    return figures.matched >= 0.78


def matched_fisher_target(figures: MergeFigures) -> bool:
    return figures.matched_fisher >= 0.85 and figures.matched_fisher > figures.best_client


def report_seeds(runs: Sequence[tuple[int, MergeFigures]]) -> None:
    """Phase (a) over several seeds: one row each, then how often each target held."""
    print(
        f"  {'seed':>4} {'best':>6} {'naive':>6} {'matched':>8} {'+Fisher':>8} "
        f"{'regmean':>8} {'ensemble':>9}"
    )
    for seed, f in runs:
        print(
            f"  {seed:>4} {f.best_client:>6.3f} {f.naive:>6.3f} {f.matched:>7.3f}"
            f"{' ' if matched_target(f) else '*'} "
            f"{f.matched_fisher:>7.3f}{' ' if matched_fisher_target(f) else '*'} "
            f"{f.regmean:>8.3f} {f.ensemble:>9.3f}"
        )
    n = len(runs)
    figures = [f for _, f in runs]
    counts = {
        "matched >= 0.78": sum(map(matched_target, figures)),
        "matched + Fisher >= 0.85 and > best client": sum(map(matched_fisher_target, figures)),
        "regmean > best client": sum(f.regmean > f.best_client for f in figures),
        "naive <= 0.3 (collapses)": sum(f.naive <= 0.3 for f in figures),
    }
    print("  (* marks a missed target)")
    for name, count in counts.items():
        print(f"  {name}: {count} of {n} seeds")
    for name in ("naive", "matched", "matched_fisher", "regmean", "best_client"):
        values = np.array([getattr(f, name) for f in figures])
        print(
            f"  {name:<15} median {np.median(values):.3f}, "
            f"range {values.min():.3f}-{values.max():.3f}"
        )


def parse_seeds(text: str) -> list[int]:
    """``"0-9"`` or ``"0,3,5"`` (or both: ``"0-3,7"``) as a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        first, dash, last = part.partition("-")
        try:
            seeds += list(range(int(first), int(last) + 1)) if dash else [int(first)]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--seeds expects a range like 0-9 or a list like 0,3,5, got {text!r}"
            ) from None
    return seeds


def report_barrier(barriers: dict[str, BarrierResult]) -> None:
    targets = {"naive": (">= 0.5", lambda v: v >= 0.5), "aligned": ("<= 0.05", lambda v: v <= 0.05)}
    print(f"  {'path':<8} {'L(a)':>6} {'L(mid)':>7} {'L(b)':>6} {'midpoint':>9} {'barrier':>8}")
    for name, result in barriers.items():
        mid = result.losses[result.ts.index(0.5)]
        text, check = targets.get(name, ("", lambda v: True))
        print(
            f"  {name:<8} {result.losses[0]:>6.3f} {mid:>7.3f} {result.losses[-1]:>6.3f} "
            f"{result.midpoint:>9.3f} {result.barrier:>8.3f}  midpoint target {text}: "
            f"{_mark(check(result.midpoint))}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed for everything (default 0)")
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        metavar="0-9",
        help="run only the one-shot merge, once per seed, and count the targets met",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench/out"),
        help="folder for barrier.png and merge.json (default bench/out)",
    )
    parser.add_argument(
        "--fisher-draws",
        type=int,
        default=FISHER_DRAWS,
        help=f"labels drawn per example for the true Fisher (default {FISHER_DRAWS})",
    )
    parser.add_argument(
        "--empirical-fisher",
        action="store_true",
        help="use the empirical Fisher (the data's labels) instead of the true Fisher",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    recipe = Recipe()
    data = load_data()
    fisher = "empirical" if args.empirical_fisher else f"true, {args.fisher_draws} draws/example"
    print(
        f"digits: {len(data.y_train)} train / {len(data.y_test)} test examples"
        f"{'' if args.seeds else f', seed {args.seed}'}\n"
        f"recipe: {asdict(recipe)}; Fisher: {fisher}"
    )
    began = time.perf_counter()
    if args.seeds:
        run_seeds(args, data, recipe, fisher)
        print(f"took {time.perf_counter() - began:.1f} s")
        return
    print(f"(a) one-shot merge of {CLIENTS} clients, MLP {'-'.join(map(str, CLIENT_WIDTHS))}")
    figures = run_merge(
        data, recipe, args.seed, fisher_draws=args.fisher_draws, empirical=args.empirical_fisher
    )
    report_merge(figures)
    phase_a = time.perf_counter() - began
    print(f"(b) loss barrier, MLP {'-'.join(map(str, BARRIER_WIDTHS))}, test cross-entropy")
    barriers = run_barrier(data, recipe, args.seed)
    report_barrier(barriers)
    png = plot_barriers(
        barriers,
        args.out / "barrier.png",
        title="Test loss between two MLPs trained from different seeds",
        ylabel="test cross-entropy",
    )
    phase_b = time.perf_counter() - began - phase_a
    summary = {
        "seed": args.seed,
        "recipe": asdict(recipe),
        "fisher": fisher,
        "merge": asdict(figures),
        "barrier": {name: result.to_json() for name, result in barriers.items()},
        "seconds": {"merge": phase_a, "barrier": phase_b},
    }
    (args.out / "merge.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {png} and {args.out / 'merge.json'}")
    print(f"timings: (a) {phase_a:.1f} s, (b) {phase_b:.1f} s, total {phase_a + phase_b:.1f} s")


def run_seeds(args: argparse.Namespace, data: Data, recipe: Recipe, fisher: str) -> None:
    """Phase (a) once per seed; the table, and every figure to OUT/merge-seeds.json."""
    print(f"(a) one-shot merge of {CLIENTS} clients on seeds {args.seeds}")
    runs = []
    for seed in args.seeds:
        started = time.perf_counter()
        figures = run_merge(
            data,
            recipe,
            seed,
            fisher_draws=args.fisher_draws,
            empirical=args.empirical_fisher,
            verbose=False,
        )
        runs.append((seed, figures))
        print(f"  seed {seed} done in {time.perf_counter() - started:.1f} s", flush=True)
    report_seeds(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "merge-seeds.json"
    summary = {
        "recipe": asdict(recipe),
        "fisher": fisher,
        "runs": {seed: asdict(f) for seed, f in runs},
    }
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
