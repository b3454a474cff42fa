"""An experiment file, run: partition once, then every strategy on it, then the results.

This is what ``fedvc simulate`` and the benchmarks call. It turns a checked
``SimulationConfig`` into a ``Simulation`` (one repository; one branch per strategy, all
from the same signed initial commit) and collects what each round produced into
``ExperimentResult``, whose ``to_json`` is the ``results.json`` format:

``{"name", "seed", "workload", "partition": {"kind", "clients", "sizes", "classes",
"table", "groups"?}, "initial_commit", "strategies": [{"label", "branch", "strategy",
"rounds": [{"round", "commit", "accuracy", "loss", "participants", "clients", ...}]}],
"seconds"}``, round 0 being the initial model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedvc.repo import Repository
from fedvc.simulation.config import PartitionConfig, SimulationConfig
from fedvc.simulation.partition import (
    PartitionError,
    dirichlet,
    iid,
    partition_table,
    quantity_skew,
    shards,
)
from fedvc.simulation.runner import Simulation, SimulationObserver, StrategyRun
from fedvc.simulation.workload import Workload, group_names


def by_group(groups: np.ndarray) -> list[np.ndarray]:
    """The natural partition: one client per distinct group id, in id order."""
    array = np.asarray(groups)
    return [np.flatnonzero(array == g).astype(np.int64) for g in np.unique(array)]


def partition_clients(
    workload: Workload, partition: PartitionConfig, clients: int | None, seed: int
) -> list[np.ndarray]:
    """Split the workload's train examples among ``clients`` as ``partition`` says."""
    labels = workload.labels()
    if partition.kind == "natural":
        groups = workload.groups()
        if groups is None:
            raise PartitionError(
                "partition kind 'natural' needs a workload with groups (such as "
                "stdlib-chars, one group per package); this one has none: choose iid, "
                "dirichlet, shards or quantity_skew"
            )
        parts = by_group(groups)
        if clients is not None and clients != len(parts):
            raise PartitionError(
                f"the natural partition has {len(parts)} groups, one client each, but "
                f"clients = {clients}: remove clients or set it to {len(parts)}"
            )
        return parts
    assert clients is not None  # the config requires it for every other kind
    if partition.kind == "iid":
        return iid(labels, clients, seed)
    if partition.kind == "shards":
        assert partition.classes_per_client is not None
        return shards(labels, clients, partition.classes_per_client, seed)
    assert partition.alpha is not None
    floor = {} if partition.min_size is None else {"min_size": partition.min_size}
    if partition.kind == "dirichlet":
        return dirichlet(labels, clients, partition.alpha, seed, **floor)
    return quantity_skew(labels, clients, partition.alpha, seed, **floor)


@dataclass
class ExperimentResult:
    """Everything an experiment produced, ready to be written as ``results.json``."""

    config: SimulationConfig
    parts: list[np.ndarray]
    classes: list[Any]
    table: np.ndarray
    groups: list[str] | None
    initial: str
    runs: list[StrategyRun]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        partition: dict[str, Any] = {
            **{k: v for k, v in dataclasses.asdict(self.config.partition).items() if v is not None},
            "clients": len(self.parts),
            "sizes": [len(p) for p in self.parts],
            "classes": self.classes,
            "table": self.table.tolist(),
        }
        if self.groups is not None:
            partition["groups"] = self.groups
        return {
            "name": self.config.name,
            "seed": self.config.seed,
            "workload": self.config.workload.to_json(),
            "rounds": self.config.rounds,
            "train": dict(self.config.train),
            "partition": partition,
            "initial_commit": self.initial,
            "strategies": [run.to_json() for run in self.runs],
            "seconds": self.seconds,
        }


def run_experiment(
    config: SimulationConfig,
    repo: Repository,
    *,
    workload: Workload | None = None,
    observer: SimulationObserver | None = None,
    parts: Sequence[np.ndarray] | None = None,
    strategies: Sequence[int] | None = None,
) -> ExperimentResult:
    """Build the workload and partition, then run every strategy (or those indexed).

    ``workload`` and ``parts`` may pass what was already built from ``config`` (the CLI
    builds both to show the partition before training starts).
    """
    started = time.perf_counter()
    built = workload if workload is not None else config.workload.build()
    if parts is None:
        parts = partition_clients(built, config.partition, config.clients, config.seed)
    labels = built.labels()
    chosen = (
        [config.strategies[i] for i in strategies]
        if strategies is not None
        else list(config.strategies)
    )
    metadata = {"name": config.name, "workload": config.workload.to_json()}
    with Simulation(
        built,
        parts,
        repo=repo,
        seed=config.seed,
        workers=config.workers,
        spec=config.workload,
        observer=observer,
        metadata=metadata,
    ) as simulation:
        runs = [
            simulation.run(
                s.label, s.build(), config.round_config(s), config.rounds, branch=s.branch
            )
            for s in chosen
        ]
    return ExperimentResult(
        config=config,
        parts=list(parts),
        classes=[_plain(c) for c in np.unique(labels)],
        table=partition_table(labels, parts),
        groups=group_names(built),
        initial=simulation.initial,
        runs=runs,
        seconds=time.perf_counter() - started,
    )


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number JSON can hold."""
    return value.item() if isinstance(value, np.generic) else value
