"""Workloads for simulations: data that needs no download, small models, the reference loop.

Each factory returns a ``fedvc.simulation.workload.Workload``; simulation configs name
them as ``fedvc_client.workloads:digits`` (alias ``digits``) and
``fedvc_client.workloads:stdlib_chars`` (alias ``stdlib-chars``).

- ``digits``: scikit-learn's bundled 8x8 digits, a seeded stratified train/test split and
  an MLP, the smallest data set on which label skew visibly hurts FedAvg.
- ``stdlib_chars``: character-level next-token prediction on the Python standard
  library's own sources, already on disk. Its natural partition is one client per
  package (``json``, ``email``, ``asyncio``...), a skew of style and vocabulary rather
  than of labels, like text from different writers.
- ``TorchDatasetWorkload``: any map-style torch ``Dataset`` of ``(input, label)`` pairs
  the user brings, with a model factory.

Every client's training runs on one torch thread: training many small models in
parallel processes is faster that way, and the same thread count in and out of worker
processes gives bit-identical models, hence identical commit ids.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import sysconfig
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedvc.participant import TrainResult
from fedvc.simulation.partition import stratified_holdout
from fedvc.tensors import ParamMap
from fedvc.torch_io import load_into_module, module_params
from fedvc_client.fisher import estimate_fisher
from fedvc_client.regmean import layer_grams
from fedvc_client.training import TrainConfig, evaluate, train

ModelFactory = Callable[[], torch.nn.Module]

MIN_EXAMPLES = 256
"""A standard-library package with fewer training windows than this is left out."""

SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages"})
"""Never read as text sources: test suites (mostly fixtures) and installed packages."""


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block on ``count`` intra-op threads, then restore the previous setting."""
    before = torch.get_num_threads()
    if before != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if before != count:
            torch.set_num_threads(before)


def train_config(config: Mapping[str, Any]) -> TrainConfig:
    """The reference loop's settings from a round's training config (other keys ignored).

    Without an explicit ``seed`` the round number seeds the shuffling, so a client never
    sees its batches in the same order twice.
    """
    defaults = TrainConfig()
    return TrainConfig(
        epochs=int(config.get("epochs", defaults.epochs)),
        batch_size=int(config.get("batch_size", defaults.batch_size)),
        lr=float(config.get("lr", defaults.lr)),
        momentum=float(config.get("momentum", defaults.momentum)),
        weight_decay=float(config.get("weight_decay", defaults.weight_decay)),
        mu=float(config.get("mu", defaults.mu)),
        seed=int(config.get("seed", config.get("round", defaults.seed))),
    )


class ArrayTask:
    """One client's share of a classifier workload: trains a fresh model from the base."""

    def __init__(self, model: ModelFactory, inputs: np.ndarray, targets: np.ndarray) -> None:
        if len(inputs) == 0:
            raise ValueError("a client task needs at least one training example, got none")
        self.model, self.inputs, self.targets = model, inputs, targets

    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult:
        settings = train_config(config)
        with torch_threads(1):
            module = self.model()
            load_into_module(module, params)
            result = train(module, self.inputs, self.targets, settings, base=params)
            fisher = None
            if config.get("fisher"):
                fisher = estimate_fisher(
                    module,
                    self.inputs,
                    samples=int(config.get("fisher_samples", 256)),
                    draws=int(config.get("fisher_draws", 4)),
                    seed=settings.seed,
                )
            grams = layer_grams(module, self.inputs) if config.get("grams") else None
        return TrainResult(
            params=module_params(module),  # views of a module made for this call alone
            examples=result.examples,
            metrics={"loss": result.loss},
            fisher=fisher,
            grams=grams,
        )


class ArrayWorkload:
    """A classifier workload over arrays held in memory (the bundled data sets)."""

    def __init__(
        self,
        model: ModelFactory,
        train_data: tuple[np.ndarray, np.ndarray],
        test_data: tuple[np.ndarray, np.ndarray],
        *,
        groups: np.ndarray | None = None,
        names: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.x_train, self.y_train = train_data
        self.x_test, self.y_test = test_data
        self._groups, self._names = groups, list(names)

    def labels(self) -> np.ndarray:
        return self.y_train

    def groups(self) -> np.ndarray | None:
        return self._groups

    def group_names(self) -> list[str]:
        return list(self._names)

    def initial_params(self, seed: int) -> ParamMap:
        """The model's initialisation under ``seed``, without touching torch's global RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return module_params(self.model())  # views that keep the new module's tensors

    def client_task(self, indices: np.ndarray) -> ArrayTask:
        rows = np.asarray(indices, dtype=np.int64)
        return ArrayTask(self.model, self.x_train[rows], self.y_train[rows])

    def evaluate(self, params: ParamMap) -> dict[str, float]:
        module = self.model()
        load_into_module(module, params)
        accuracy, loss = evaluate(module, self.x_test, self.y_test)
        return {"accuracy": accuracy, "loss": loss}


def mlp(widths: Sequence[int]) -> torch.nn.Sequential:
    """Linear layers of the given widths with ReLU between them."""
    layers: list[torch.nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(fan_in, fan_out))
    return torch.nn.Sequential(*layers)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(images / 16 as float32 rows of 64, int64 labels)``.

    Read straight from the CSV file scikit-learn ships, found without importing
    scikit-learn: its import costs about a second, paid again by every worker process
    and fleet client that builds this workload. Falls back to ``load_digits`` if a
    release moves the file.
    """
    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(roots[0]) / "datasets" / "data" / "digits.csv.gz" if roots else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        x, y = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - depends on scikit-learn's layout
        from sklearn.datasets import load_digits as sklearn_digits

        x, y = sklearn_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _digits_split(test_size: float, split_seed: int) -> tuple[np.ndarray, ...]:
    x, y = load_digits()
    train_rows, test_rows = stratified_holdout(y, test_size, split_seed)
    return x[train_rows], x[test_rows], y[train_rows], y[test_rows]


def digits(
    hidden: Sequence[int] = (64,), test_size: float = 0.25, split_seed: int = 0
) -> ArrayWorkload:
    """scikit-learn's digits (1797 8x8 images, 10 classes) and a 64-hidden-...-10 MLP.

    The train/test split is stratified and seeded by ``split_seed``, so every process
    (and every strategy of an experiment) sees the same split.
    """
    x_train, x_test, y_train, y_test = _digits_split(float(test_size), int(split_seed))
    widths = [64, *(int(h) for h in hidden), 10]
    return ArrayWorkload(lambda: mlp(widths), (x_train, y_train), (x_test, y_test))


class CharModel(torch.nn.Module):
    """Next character from the previous ``context``: embed, flatten, one hidden layer."""

    def __init__(self, context: int, vocab: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, embed)
        self.hidden = torch.nn.Linear(context * embed, hidden)
        self.out = torch.nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.embed(x.long()).flatten(1)
        return self.out(torch.relu(self.hidden(features)))  # type: ignore[no-any-return]


def stdlib_packages(root: Path | None = None) -> list[str]:
    """The standard library's top-level packages, test suites excluded, sorted."""
    base = root or Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        entry.name
        for entry in base.iterdir()
        if (entry / "__init__.py").is_file() and entry.name not in SKIPPED_DIRS
    )


def package_text(package: Path, limit: int) -> bytes:
    """The first ``limit`` bytes of a package's sources, files in sorted path order."""
    chunks: list[bytes] = []
    size = 0
    for path in sorted(package.rglob("*.py")):
        if SKIPPED_DIRS.intersection(path.relative_to(package).parts):
            continue
        data = path.read_bytes()
        chunks.append(data[: limit - size])
        size += len(chunks[-1])
        if size >= limit:
            break
    return b"".join(chunks)


def windows(text: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Every ``context`` symbols of ``text`` (inputs) and the symbol after them (target)."""
    if len(text) <= context:
        return np.zeros((0, context), np.uint8), np.zeros(0, np.int64)
    view = np.lib.stride_tricks.sliding_window_view(text[:-1], context)
    return np.ascontiguousarray(view), text[context:].astype(np.int64)


def stdlib_chars(
    packages: Sequence[str] | None = None,
    bytes_per_package: int = 8192,
    context: int = 16,
    test_fraction: float = 0.1,
    embed: int = 16,
    hidden: int = 128,
) -> ArrayWorkload:
    """Next-character prediction on the standard library's sources, grouped by package.

    Each package contributes the first ``bytes_per_package`` bytes of its ``.py`` files;
    the last ``test_fraction`` of them is its share of the test set, so the test set
    covers every package and never overlaps training text. Bytes above 127 become 127
    (the vocabulary is ASCII). ``groups()`` is the package of each train example.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    root = Path(sysconfig.get_paths()["stdlib"])
    chosen = list(packages) if packages is not None else stdlib_packages(root)
    vocab = 128
    train_x: list[np.ndarray] = []
    train_y: list[np.ndarray] = []
    test_x: list[np.ndarray] = []
    test_y: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    names: list[str] = []
    for name in chosen:
        if not (root / name / "__init__.py").is_file():
            raise ValueError(
                f"{name!r} is not a package of the standard library in {root}; "
                f"available: {', '.join(stdlib_packages(root))}"
            )
        text = np.minimum(
            np.frombuffer(package_text(root / name, bytes_per_package), np.uint8), 127
        )
        cut = int(len(text) * (1 - test_fraction))
        x, y = windows(text[:cut], context)
        tx, ty = windows(text[cut:], context)
        if len(x) < MIN_EXAMPLES or len(tx) < 1:
            continue  # too little text to be a client (such as the tiny __phello__)
        train_x.append(x)
        train_y.append(y)
        test_x.append(tx)
        test_y.append(ty)
        groups.append(np.full(len(x), len(names), np.int64))
        names.append(name)
    if not names:
        raise ValueError("no standard-library package had enough text; raise bytes_per_package")
    return ArrayWorkload(
        lambda: CharModel(context, vocab, embed, hidden),
        (np.concatenate(train_x), np.concatenate(train_y)),
        (np.concatenate(test_x), np.concatenate(test_y)),
        groups=np.concatenate(groups),
        names=names,
    )


def _stack(dataset: Any, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inputs, targets = [], []
    for index in indices:
        x, y = dataset[int(index)]
        inputs.append(np.asarray(x))
        targets.append(int(y))
    return np.stack(inputs), np.asarray(targets, dtype=np.int64)


class TorchDatasetWorkload(ArrayWorkload):
    """Any map-style torch ``Dataset`` of ``(input, integer label)`` pairs, and a model.

    Labels come from the dataset's ``targets`` attribute when it has one (torchvision's
    data sets do), else from reading every item once. A client's examples are stacked
    into arrays only when its task is built, so a large training set is never copied
    whole; the test set is stacked once, for central evaluation.
    """

    def __init__(
        self,
        model: ModelFactory,
        train_dataset: Any,
        test_dataset: Any,
        *,
        groups: np.ndarray | None = None,
        names: Sequence[str] = (),
    ) -> None:
        targets = getattr(train_dataset, "targets", None)
        if targets is not None:
            labels = np.asarray(targets, dtype=np.int64)
        else:
            labels = np.asarray([int(train_dataset[i][1]) for i in range(len(train_dataset))])
        test = _stack(test_dataset, np.arange(len(test_dataset)))
        # no train inputs held here: client_task reads each client's from the dataset
        super().__init__(model, (np.zeros(0), labels), test, groups=groups, names=names)
        self.train_dataset = train_dataset

    def client_task(self, indices: np.ndarray) -> ArrayTask:
        inputs, targets = _stack(self.train_dataset, np.asarray(indices, dtype=np.int64))
        return ArrayTask(self.model, inputs, targets)
