"""Experiment files: a TOML description of one simulation, read and checked completely.

An experiment names a workload, a partition of its data among virtual clients, how rounds
are sized, how clients train, and one or more strategies to compare on the same partition
and seed::

    [simulation]
    name = "digits-dirichlet"
    rounds = 10
    seed = 0
    clients = 20
    workers = 2

    [data]
    workload = "digits"            # or "stdlib-chars", or "package.module:factory"
    params = { hidden = [64] }

    [partition]
    kind = "dirichlet"             # iid | dirichlet | shards | quantity_skew | natural
    alpha = 0.5

    [round]
    fraction = 1.0                 # min_clients, max_clients too

    [train]
    epochs = 2
    lr = 0.05
    batch_size = 32

    [[strategy]]
    label = "FedProx"
    name = "fedavg"
    train = { mu = 0.01 }          # overrides [train] for this strategy only

Everything is checked before anything runs: an unknown key or a value of the wrong type is
reported with the key, what was expected, what came and what to write instead, so a typo
never silently falls back to a default halfway through a long run.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvc.errors import FedvcError
from fedvc.merge import MergeError, MergeStrategy, StrategySpec, align, chain, strategy_from_spec
from fedvc.repo import DEFAULT_BRANCH
from fedvc.round import RoundConfig, RoundError
from fedvc.simulation.workload import WorkloadSpec

PARTITION_KINDS = ("iid", "dirichlet", "shards", "quantity_skew", "natural")
ALIGN_CHOICES = ("none", "weight")
_MISSING = object()


class ConfigError(FedvcError):
    """An experiment file that cannot be run as written."""


@dataclass(frozen=True)
class _Check:
    """What a key accepts: ``kinds`` for isinstance, ``test`` for the value, ``expected``
    and ``example`` for the error message."""

    kinds: tuple[type, ...]
    expected: str
    example: str
    test: Any = None


def _positive_int(example: str) -> _Check:
    return _Check((int,), "an integer ≥ 1", example, lambda v: v >= 1)


def _number(expected: str, example: str, test: Any) -> _Check:
    return _Check((int, float), expected, example, lambda v: math.isfinite(v) and test(v))


TRAIN_KEYS: Mapping[str, _Check] = {
    "epochs": _positive_int("epochs = 2"),
    "lr": _number("a number > 0", "lr = 0.05", lambda v: v > 0),
    "batch_size": _positive_int("batch_size = 32"),
    "momentum": _number("a number in [0, 1)", "momentum = 0.9", lambda v: 0 <= v < 1),
    "weight_decay": _number("a number ≥ 0", "weight_decay = 0.0001", lambda v: v >= 0),
    "mu": _number("a number ≥ 0 (FedProx strength)", "mu = 0.01", lambda v: v >= 0),
    "fisher_samples": _positive_int("fisher_samples = 256"),
    "fisher_draws": _positive_int("fisher_draws = 4"),
}
"""Keys of ``[train]`` and of a strategy's ``train``: what every client's task is given."""


def _table(example: str) -> _Check:
    return _Check((dict,), "a table", example)


def _string(example: str) -> _Check:
    return _Check((str,), "a string", example)


@dataclass(frozen=True)
class PartitionConfig:
    """How the train examples are split: ``kind`` and its parameters."""

    kind: str
    alpha: float | None = None
    classes_per_client: int | None = None
    min_size: int | None = None


@dataclass(frozen=True)
class StrategyConfig:
    """One strategy to run: its label (and branch), registry name, params, train overrides."""

    label: str
    name: str
    params: Mapping[str, Any]
    train: Mapping[str, Any]
    align: str = "none"

    @property
    def branch(self) -> str:
        """The branch its rounds are committed on: the label in lower case, words joined by -."""
        return branch_name(self.label)

    def build(self) -> MergeStrategy:
        """The strategy itself; with ``align = "weight"``, weight matching runs first."""
        built = strategy_from_spec(StrategySpec(self.name, dict(self.params)))
        return chain(align(), built) if self.align == "weight" else built


@dataclass(frozen=True)
class SimulationConfig:
    """A whole experiment, checked. ``source`` names where it came from, for messages."""

    name: str
    rounds: int
    seed: int
    clients: int | None
    workers: int
    workload: WorkloadSpec
    partition: PartitionConfig
    round: RoundConfig
    train: Mapping[str, Any]
    strategies: tuple[StrategyConfig, ...]
    source: str = "<config>"

    def round_config(self, strategy: StrategyConfig) -> RoundConfig:
        """This experiment's round sizing with the strategy's merged training settings."""
        return dataclasses.replace(self.round, train={**self.train, **strategy.train})


def branch_name(label: str) -> str:
    """``"Matched averaging"`` → ``"matched-averaging"``: a label as a valid branch name."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def load_config(path: str | Path) -> SimulationConfig:
    """Read and check an experiment file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read experiment file {source}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    return parse_config(data, source)


class _Reader:
    """Takes the keys of one table, checking each; ``finish`` rejects whatever is left."""

    def __init__(self, source: str, where: str, table: Mapping[str, Any]) -> None:
        self.source, self.where, self.left = source, where, dict(table)
        self.known: list[str] = []

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where} {key}: {message}")

    def take(self, key: str, check: _Check, default: Any = _MISSING) -> Any:
        self.known.append(key)
        if key not in self.left:
            if default is _MISSING:
                raise self.error(key, f"missing; expected {check.expected}, e.g. {check.example}")
            return default
        value = self.left.pop(key)
        wrong_kind = isinstance(value, bool) and bool not in check.kinds
        if wrong_kind or not isinstance(value, check.kinds):
            raise self.error(
                key,
                f"expected {check.expected}, got {value!r} ({_kind(value)}); "
                f"write e.g. {check.example}",
            )
        if check.test is not None and not check.test(value):
            raise self.error(
                key, f"expected {check.expected}, got {value!r}; write e.g. {check.example}"
            )
        return value

    def finish(self) -> None:
        if self.left:
            unknown = ", ".join(sorted(self.left))
            raise ConfigError(
                f"{self.source}: {self.where}: unknown key(s) {unknown}; the keys allowed "
                f"here are {', '.join(self.known)}"
            )


def _kind(value: object) -> str:
    return {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        dict: "a table",
        list: "an array",
    }.get(type(value), type(value).__name__)


def _train(source: str, where: str, table: Mapping[str, Any]) -> dict[str, Any]:
    reader = _Reader(source, where, table)
    values = {key: reader.take(key, check, None) for key, check in TRAIN_KEYS.items()}
    reader.finish()
    return {key: value for key, value in values.items() if value is not None}


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> SimulationConfig:
    """Check a parsed experiment (the TOML as a dict) and return it as typed values."""
    top = _Reader(source, "top level", data)
    sections = {
        name: top.take(name, _Check((dict,), "a table", f"[{name}]"), {})
        for name in ("simulation", "data", "partition", "round", "train")
    }
    strategies_raw = top.take(
        "strategy",
        _Check((list,), "an array of tables", "[[strategy]] with label and name"),
    )
    top.finish()

    sim = _Reader(source, "[simulation]", sections["simulation"])
    name = sim.take("name", _Check((str,), "a non-empty string", 'name = "digits"', bool))
    rounds = sim.take("rounds", _positive_int("rounds = 10"))
    seed = sim.take("seed", _Check((int,), "an integer ≥ 0", "seed = 0", lambda v: v >= 0), 0)
    clients = sim.take("clients", _positive_int("clients = 20"), None)
    workers = sim.take("workers", _positive_int("workers = 2"), 2)
    sim.finish()

    data_reader = _Reader(source, "[data]", sections["data"])
    workload = WorkloadSpec(
        data_reader.take("workload", _string('workload = "digits"')),
        dict(data_reader.take("params", _table("params = { hidden = [64] }"), {})),
    )
    data_reader.finish()

    partition = _partition(source, sections["partition"])
    if partition.kind != "natural" and clients is None:
        raise ConfigError(
            f"{source}: [simulation] clients: missing; a {partition.kind} partition needs a "
            'number of clients, e.g. clients = 20 (only kind = "natural" takes one client '
            "per group of the data)"
        )

    rounds_reader = _Reader(source, "[round]", sections["round"])
    min_clients = rounds_reader.take("min_clients", _positive_int("min_clients = 2"), 1)
    max_clients = rounds_reader.take("max_clients", _positive_int("max_clients = 20"), 1_000_000)
    fraction = rounds_reader.take(
        "fraction", _number("a number in (0, 1]", "fraction = 0.1", lambda v: 0 < v <= 1), 1.0
    )
    rounds_reader.finish()
    try:
        round_config = RoundConfig(
            min_clients=min_clients, max_clients=max_clients, fraction=float(fraction)
        )
    except RoundError as exc:
        raise ConfigError(f"{source}: [round]: {exc}") from None

    train = _train(source, "[train]", sections["train"])
    strategies = _strategies(source, strategies_raw)
    return SimulationConfig(
        name=name,
        rounds=rounds,
        seed=seed,
        clients=clients,
        workers=workers,
        workload=workload,
        partition=partition,
        round=round_config,
        train=train,
        strategies=strategies,
        source=source,
    )


def _partition(source: str, table: Mapping[str, Any]) -> PartitionConfig:
    reader = _Reader(source, "[partition]", table)
    kind = reader.take(
        "kind",
        _Check((str,), f"one of {', '.join(PARTITION_KINDS)}", 'kind = "dirichlet"', None),
        "iid",
    )
    if kind not in PARTITION_KINDS:
        raise reader.error("kind", f"expected one of {', '.join(PARTITION_KINDS)}, got {kind!r}")
    alpha_check = _number("a number > 0", "alpha = 0.5", lambda v: v > 0)
    min_size_check = _Check((int,), "an integer ≥ 0", "min_size = 10", lambda v: v >= 0)
    config = PartitionConfig(kind)
    if kind in ("dirichlet", "quantity_skew"):
        config = PartitionConfig(
            kind,
            alpha=float(reader.take("alpha", alpha_check)),
            min_size=reader.take("min_size", min_size_check, None),
        )
    elif kind == "shards":
        per_client = reader.take("classes_per_client", _positive_int("classes_per_client = 2"))
        config = PartitionConfig(kind, classes_per_client=per_client)
    reader.finish()
    return config


def _strategies(source: str, items: list[Any]) -> tuple[StrategyConfig, ...]:
    if not items:
        raise ConfigError(
            f"{source}: no [[strategy]]: add at least one, e.g. [[strategy]] label = "
            '"FedAvg" name = "fedavg"'
        )
    result: list[StrategyConfig] = []
    branches: dict[str, str] = {}
    for number, item in enumerate(items, start=1):
        where = f"[[strategy]] #{number}"
        if not isinstance(item, dict):
            raise ConfigError(f"{source}: {where}: expected a table, got {_kind(item)}")
        reader = _Reader(source, where, item)
        name = reader.take("name", _string('name = "fedavg"'))
        label = reader.take(
            "label", _Check((str,), "a non-empty string", 'label = "FedProx"', bool), name
        )
        params = dict(reader.take("params", _table("params = { beta = 0.1 }"), {}))
        overrides = reader.take("train", _table("train = { mu = 0.01 }"), {})
        train = _train(source, f"{where} train", overrides)
        aligned = reader.take(
            "align",
            _Check((str,), f"one of {', '.join(ALIGN_CHOICES)}", 'align = "weight"', None),
            "none",
        )
        reader.finish()
        if aligned not in ALIGN_CHOICES:
            raise reader.error(
                "align", f"expected one of {', '.join(ALIGN_CHOICES)}, got {aligned!r}"
            )
        strategy = StrategyConfig(label, name, params, train, aligned)
        branch = strategy.branch
        if not branch:
            raise reader.error("label", f"{label!r} gives no branch name; use letters or digits")
        if branch == DEFAULT_BRANCH:
            raise reader.error(
                "label",
                f"{label!r} becomes branch {branch!r}, which holds the initial model; "
                "choose another label",
            )
        if branch in branches:
            raise reader.error(
                "label",
                f"{label!r} and {branches[branch]!r} both become branch {branch!r}; give "
                "every strategy a distinct label",
            )
        branches[branch] = label
        try:
            strategy.build()
        except (MergeError, FedvcError) as exc:
            raise ConfigError(f"{source}: {where} ({label}): {exc}") from None
        result.append(strategy)
    return tuple(result)
