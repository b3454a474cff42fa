"""Simulation throughput, memory and non-IID accuracy: the real round engine, in process.

Every section runs the actual ``Coordinator`` and one ``Participant`` per selected virtual
client (each update committed, signed, checked at the door; each round a signed octopus
merge), on scikit-learn's bundled digits or the standard library's own sources; nothing
is downloaded.

- ``overhead``: digits MLP 64-64-10, 20 clients x 5 rounds, Dirichlet alpha=0.5, every
  client in every round, in a repository on disk (as ``fedvc simulate`` writes it).
  End-to-end time with ``--workers`` processes, and, from a one-process run, the framework
  overhead per client-round: the time not spent in the task's training or in the central
  evaluation (commit, sign, sync, admission, merge, bookkeeping).
- ``scale``: 100 clients x 20 rounds (digits, Dirichlet alpha=0.5, every client in every
  round: 2000 client-rounds), end to end.
- ``fleet``: 1000 virtual clients on the standard library's text (IID split), a fraction
  of them per round, in a fresh process; its peak resident memory (the main process's:
  the worker processes are not its children, so their peaks are not seen).
- ``skew``: ``simulations/digits-dirichlet-0.1.toml`` (Dirichlet alpha=0.1, 20 clients):
  final test accuracy of FedAvg, FedProx, Fisher-weighted and matched averaging.
- ``flower`` (``--flower``, or ``--full``; needs ``flwr[simulation]``): the ``overhead``
  workload in Flower 1.41's simulation engine (Ray, ``--workers`` CPUs, each count of
  actors in ``--flower-actors``), once with Flower's ``FedAvg`` and once with
  ``FedvcStrategy("fedavg")`` writing signed commits, against fedvc in one process and in
  ``--workers`` processes, all in this process after one untimed warm-up. Every Flower
  node runs the fedvc task of its client through ``task_client_app``, with the seeds
  fedvc gives it, so both frameworks train the very same client-rounds from the same
  initial model: end-to-end time, round 1 (start-up) apart from the rest, training time,
  overhead per client-round, speed-up, and the final models' difference. Then both as a
  user starts them, every run a fresh Python process timed from launch to exit:
  ``fedvc simulate --no-plots`` against a script calling Flower's ``run_simulation``.
  Then the final accuracy of fedvc's and Flower's FedAvg at Dirichlet alpha=0.1 (the
  ``skew`` file).

Defaults are small, so a run takes a minute or two; ``--full`` uses the target sizes
above. Each section is a function from the parsed arguments to printed figures, listed
in ``SECTIONS``.

Usage: python bench/simulation.py [--full] [--flower] [--only overhead,scale,fleet,skew,flower]
       [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedvc.repo import Repository
from fedvc.signing import PublicKey
from fedvc.simulation.config import SimulationConfig, load_config, parse_config
from fedvc.simulation.experiment import ExperimentResult, partition_clients, run_experiment
from fedvc.simulation.runner import client_key, server_key
from fedvc.simulation.workers import FleetTasks
from fedvc.trust import TrustStore
from fedvc.verify import verify

ROOT = Path(__file__).resolve().parents[1]
SKEW_CONFIG = ROOT / "simulations" / "digits-dirichlet-0.1.toml"


def digits_toml(
    clients: int,
    rounds: int,
    workers: int,
    *,
    min_size: int = 10,
    epochs: int = 2,
) -> str:
    """FedAvg on label-skewed digits (Dirichlet 0.5), the MLP of ``fedvc simulate``, as the
    experiment file a user would write."""
    return f"""
[simulation]
name = "bench"
rounds = {rounds}
clients = {clients}
workers = {workers}

[data]
workload = "digits"
params = {{ hidden = [64] }}

[partition]
kind = "dirichlet"
alpha = 0.5
min_size = {min_size}

[round]
fraction = 1.0

[train]
epochs = {epochs}
lr = 0.05
batch_size = 32

[[strategy]]
label = "FedAvg"
name = "fedavg"
"""


def experiment(text: str) -> SimulationConfig:
    """An experiment file's text, parsed as ``fedvc simulate`` parses it."""
    return parse_config(tomllib.loads(text), "bench")


@contextlib.contextmanager
def scratch_repo(*, durable: bool = True) -> Iterator[Repository]:
    """A fresh bare repository on disk (SQLite refs; objects fsynced unless ``durable`` is
    False, as ``fedvc simulate`` writes its scratch history), deleted afterwards."""
    with tempfile.TemporaryDirectory() as scratch:
        repo = Repository.init(Path(scratch) / "repo", bare=True, durable=durable)
        try:
            yield repo
        finally:
            repo.close()


def run_on_disk(config: SimulationConfig, *, durable: bool = True) -> ExperimentResult:
    """One experiment in a ``scratch_repo``."""
    with scratch_repo(durable=durable) as repo:
        return run_experiment(config, repo)


def time_split(result: ExperimentResult) -> dict[str, float]:
    """Seconds in the rounds, in training (summed over clients), in evaluation, in merging."""
    records = [r for run in result.runs for r in run.rounds[1:]]
    return {
        key: sum(r.seconds.get(key, 0.0) for r in records)
        for key in ("total", "train", "evaluate", "merge")
    } | {"client_rounds": float(sum(len(r.clients) for r in records))}


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    clients, rounds = args.overhead_clients, args.overhead_rounds
    config = experiment(digits_toml(clients, rounds, args.workers, epochs=args.epochs))
    one_process = dataclasses.replace(config, workers=1)
    parallel = run_on_disk(config)
    serial = run_on_disk(one_process)
    split = time_split(serial)
    outside = split["total"] - split["train"] - split["evaluate"]
    scratch = time_split(run_on_disk(one_process, durable=False))
    scratch_outside = scratch["total"] - scratch["train"] - scratch["evaluate"]
    figures = {
        "end_to_end_seconds": parallel.seconds,
        "workers": args.workers,
        "one_process_seconds": serial.seconds,
        "client_rounds": split["client_rounds"],
        "train_ms_per_client_round": 1000 * split["train"] / split["client_rounds"],
        "overhead_ms_per_client_round": 1000 * outside / split["client_rounds"],
        "overhead_ms_per_client_round_no_fsync": 1000 * scratch_outside / scratch["client_rounds"],
        "merge_ms_per_round": 1000 * split["merge"] / rounds,
        "final_accuracy": serial.runs[0].rounds[-1].accuracy,
    }
    print(
        f"overhead: digits MLP, {clients} clients x {rounds} rounds, Dirichlet 0.5, on disk\n"
        f"  end to end with {args.workers} worker(s): {parallel.seconds:.1f} s "
        f"(one process: {serial.seconds:.1f} s)\n"
        f"  per client-round: training {figures['train_ms_per_client_round']:.1f} ms, "
        f"framework {figures['overhead_ms_per_client_round']:.1f} ms "
        f"(commit, sign, sync, admission, merge {figures['merge_ms_per_round']:.1f} ms a "
        f"round, bookkeeping); {figures['overhead_ms_per_client_round_no_fsync']:.1f} ms "
        f"without fsync (fedvc simulate's scratch history)\n"
        f"  final accuracy {figures['final_accuracy']:.3f}"
    )
    return figures


def scale(args: argparse.Namespace) -> dict[str, Any]:
    clients, rounds = (100, 20) if args.full else (args.scale_clients, args.scale_rounds)
    config = experiment(digits_toml(clients, rounds, args.workers, min_size=1, epochs=args.epochs))
    result = run_experiment(config, Repository.memory())
    split = time_split(result)
    figures = {
        "clients": clients,
        "rounds": rounds,
        "seconds": result.seconds,
        "client_rounds": split["client_rounds"],
        "ms_per_client_round": 1000 * result.seconds / split["client_rounds"],
        "final_accuracy": result.runs[0].rounds[-1].accuracy,
    }
    print(
        f"scale: {clients} clients x {rounds} rounds (every client every round), "
        f"{args.workers} worker(s): {result.seconds:.1f} s, "
        f"{figures['ms_per_client_round']:.1f} ms per client-round, "
        f"final accuracy {figures['final_accuracy']:.3f}"
    )
    return figures


def fleet_config(clients: int, rounds: int, fraction: float, workers: int) -> SimulationConfig:
    return parse_config(
        {
            "simulation": {
                "name": "fleet",
                "rounds": rounds,
                "clients": clients,
                "workers": workers,
            },
            "data": {"workload": "stdlib-chars", "params": {"bytes_per_package": 16384}},
            "partition": {"kind": "iid"},
            "round": {"fraction": fraction},
            "train": {"epochs": 1, "lr": 0.1, "batch_size": 64},
            "strategy": [{"label": "FedAvg", "name": "fedavg"}],
        },
        "fleet",
    )


def fleet_in_this_process(clients: int, rounds: int, fraction: float, workers: int) -> None:
    """Run the fleet section and print its figures as JSON (called in a fresh process)."""
    result = run_experiment(fleet_config(clients, rounds, fraction, workers), Repository.memory())
    split = time_split(result)
    record = {
        "seconds": result.seconds,
        "client_rounds": split["client_rounds"],
        "examples_per_client": sum(len(p) for p in result.parts) / len(result.parts),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": result.runs[0].rounds[-1].loss,
        "initial_loss": result.runs[0].rounds[0].loss,
    }
    print(json.dumps(record))


def fleet_child(clients: int, rounds: int, fraction: float, workers: int) -> dict[str, Any]:
    """The fleet section's figures from a fresh process, whose peak memory is its own."""
    command = [
        sys.executable,
        __file__,
        "--fleet-child",
        json.dumps([clients, rounds, fraction, workers]),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def fleet(args: argparse.Namespace) -> dict[str, Any]:
    clients, rounds = (1000, 5) if args.full else (args.fleet_clients, args.fleet_rounds)
    fraction = args.fleet_fraction
    figures = fleet_child(clients, rounds, fraction, args.workers)
    figures |= {"clients": clients, "rounds": rounds, "fraction": fraction}
    print(
        f"fleet: {clients} virtual clients ({figures['examples_per_client']:.0f} examples "
        f"each, stdlib text), {rounds} rounds of {fraction:.0%}: {figures['seconds']:.1f} s; "
        f"peak RSS {figures['peak_rss_mib']:.0f} MiB; "
        f"test loss {figures['initial_loss']:.3f} -> {figures['final_loss']:.3f}"
    )
    return figures


def skew(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(SKEW_CONFIG)
    config = dataclasses.replace(
        config, workers=args.workers, rounds=config.rounds if args.full else args.skew_rounds
    )
    result = run_experiment(config, Repository.memory())
    finals = {run.label: run.rounds[-1].accuracy for run in result.runs}
    print(
        f"skew: Dirichlet 0.1, {config.clients} clients, {config.rounds} rounds, final "
        "accuracy: "
        + ", ".join(f"{label} {value:.3f}" for label, value in finals.items())
        + f" ({result.seconds:.0f} s)"
    )
    return {"rounds": config.rounds, "final_accuracy": finals, "seconds": result.seconds}


# -- the same workload in Flower's simulation engine ---------------------------------------

TIMING_KEY = "train-seconds"
"""The metric under which the Flower client reports the seconds spent in the task."""

Rounds = list[dict[str, float]]
"""Per round: ``total`` (wall), ``train`` (summed over clients), ``evaluate``, ``clients``."""


def fedvc_rounds(result: ExperimentResult) -> Rounds:
    """The first strategy's rounds as ``Rounds``."""
    return [
        {
            "total": r.seconds["total"],
            "train": r.seconds["train"],
            "evaluate": r.seconds["evaluate"],
            "clients": float(len(r.clients)),
        }
        for r in result.runs[0].rounds[1:]
    ]


def steady_overhead_ms(rounds: Rounds) -> float:
    """Per client-round, the wall time outside training and evaluation, from round 2 on.

    Round 1 is left out because a Ray actor imports torch and builds the data set on its
    first task (fedvc's workers do it before the rounds), and that is start-up, not a cost
    paid per client-round. Meaningful when training is serial (one process, one actor).
    """
    steady = rounds[1:] or rounds
    outside = sum(r["total"] - r["train"] - r["evaluate"] for r in steady)
    return 1000 * outside / sum(r["clients"] for r in steady)


def total(rounds: Rounds, key: str) -> float:
    return sum(r[key] for r in rounds)


@dataclass
class FlowerRun:
    """One run in Flower's simulation engine, timed from outside and round by round."""

    seconds: float  # end to end: workload, partition, Ray start, actors, rounds, shutdown
    rounds: Rounds
    accuracy: list[float]  # after each round; [0] is the initial model
    final: dict[str, np.ndarray]


def run_flower(
    config: SimulationConfig, actors: int, cpus: int, repo: Repository | None = None
) -> FlowerRun:
    """``config``'s FedAvg run in ``flwr.simulation.run_simulation``, client for client.

    The fleet is ``config``'s partition, every client a SuperNode whose ``partition-id``
    is its client number, training through ``task_client_app`` with the seeds a fedvc
    ``Simulation`` gives it (``FleetTasks``): the same initial model, data and training
    per client-round as ``run_experiment(config)``. The model is scored centrally after
    every round, as fedvc does. With ``repo``, the strategy is ``FedvcStrategy("fedavg")``
    recording signed commits there, otherwise Flower's own ``FedAvg``. Ray gets ``cpus``
    CPUs shared by ``actors`` actors.
    """
    from flwr.app import (
        ArrayRecord,
        ConfigRecord,
        Context,
        MetricRecord,
        MetricRecordValues,
        RecordDict,
    )
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
    from flwr.simulation import run_simulation

    from fedvc.compat.flower import FedvcStrategy, arrays_to_params, params_to_arrays
    from fedvc.compat.flower_client import task_client_app

    started = time.perf_counter()
    workload = config.workload.build()
    parts = partition_clients(workload, config.partition, config.clients, config.seed)
    tasks = FleetTasks(config.workload, tuple(parts), config.seed)
    rounds: Rounds = []
    marks: list[float] = []  # when each evaluation (the end of a round) finished
    accuracy: list[float] = []
    final: dict[str, np.ndarray] = {}

    def train_metrics(replies: list[RecordDict], key: str) -> MetricRecord:
        seconds = 0.0
        for reply in replies:
            value = next(iter(reply.metric_records.values()))[TIMING_KEY]
            assert isinstance(value, float)
            seconds += value
        rounds.append({"train": seconds, "clients": float(len(replies))})
        return aggregate_metricrecords(replies, key)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        began = time.perf_counter()
        metrics = workload.evaluate(arrays_to_params(arrays))
        marks.append(time.perf_counter())
        if server_round:
            rounds[-1] |= {"evaluate": marks[-1] - began, "total": marks[-1] - marks[-2]}
        accuracy.append(metrics["accuracy"])
        record: dict[str, MetricRecordValues] = dict(metrics)
        return MetricRecord(record)

    options: dict[str, Any] = {
        "fraction_evaluate": 0.0,
        "min_train_nodes": len(parts),
        "min_available_nodes": len(parts),
        "train_metrics_aggr_fn": train_metrics,
    }
    strategy = (
        FedAvg(**options)
        if repo is None
        else FedvcStrategy("fedavg", repo, server_key(config.seed), **options)
    )
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        result = strategy.start(
            grid=grid,
            initial_arrays=params_to_arrays(workload.initial_params(config.seed)),
            num_rounds=config.rounds,
            train_config=ConfigRecord(dict(config.train)),
            evaluate_fn=evaluate,
        )
        final.update(arrays_to_params(result.arrays))

    run_simulation(
        server_app=server,
        client_app=task_client_app(tasks, timing_key=TIMING_KEY),
        num_supernodes=len(parts),
        backend_config={
            "client_resources": {"num_cpus": cpus / actors, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": cpus,
                "include_dashboard": False,
                "logging_level": logging.ERROR,
                "log_to_driver": False,
            },
        },
    )
    if len(accuracy) != config.rounds + 1:
        raise SystemExit(f"Flower ran {len(accuracy) - 1} of {config.rounds} rounds")
    return FlowerRun(time.perf_counter() - started, rounds, accuracy, final)


def quiet_flower() -> None:
    """Flower logs every round at INFO and reports telemetry: neither belongs in a timing."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.supercore.logger import FLOWER_LOGGER  # set to DEBUG when first imported

    FLOWER_LOGGER.setLevel(logging.ERROR)


def signed_rounds(repo: Repository, branch: str, keys: Sequence[PublicKey]) -> int:
    """The merge commits on ``branch``, after checking every commit's hashes and signature."""
    report = verify(repo, branch, TrustStore(keys))
    if not report.ok or report.signed != report.commits:
        raise SystemExit(f"the history of {branch!r} does not verify: {report.problems[:3]}")
    return sum(1 for _, c in repo.log(branch, first_parent=True) if len(c.parents) > 1)


def max_difference(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(a[name] - b[name]))) for name in a)


def warm_up(config: SimulationConfig) -> None:
    """This process's one-time start (torch's import, the data, a first training step),
    done before any in-process timed run, so no run is charged for its place in the
    order. fedvc's worker processes and Flower's Ray actors each pay their own start in
    round 1, which the end-to-end figures include; ``cold_start`` charges both
    frameworks everything, each run in a fresh process."""
    workload = config.workload.build()
    parts = partition_clients(workload, config.partition, config.clients, config.seed)
    initial = workload.initial_params(config.seed)
    workload.client_task(parts[0]).train(initial, {**config.train, "round": 1})
    workload.evaluate(initial)


def fedvc_verified(config: SimulationConfig) -> tuple[ExperimentResult, int, dict[str, np.ndarray]]:
    """``config`` run on disk as ``fedvc simulate`` runs it (a scratch history: no fsync per
    object); its signed merges, every signature checked; its final model."""
    keys = [server_key(config.seed).public_key]
    keys += [client_key(config.seed, k).public_key for k in range(config.clients or 0)]
    with scratch_repo(durable=False) as repo:
        result = run_experiment(config, repo)
        return result, signed_rounds(repo, "fedavg", keys), repo.read_params("fedavg")


def flower_speed(args: argparse.Namespace, actors: list[int]) -> dict[str, Any]:
    """digits, 20 x 5, Dirichlet 0.5: fedvc, Flower's FedAvg, FedvcStrategy, one process."""
    clients, rounds = args.overhead_clients, args.overhead_rounds
    config = experiment(digits_toml(clients, rounds, args.workers, epochs=args.epochs))
    warm_up(config)
    counts = sorted({1, args.workers})
    fedvc = {w: fedvc_verified(dataclasses.replace(config, workers=w)) for w in counts}
    runs = {a: run_flower(config, a, args.workers) for a in actors}
    ours = min(counts, key=lambda w: fedvc[w][0].seconds)
    best = min(actors, key=lambda a: runs[a].seconds)
    with scratch_repo(durable=False) as repo:  # as fedvc_verified writes its history
        bridged = run_flower(config, best, args.workers, repo)
        bridged_merges = signed_rounds(repo, "main", [server_key(config.seed).public_key])
    flower = runs[best]
    mine = fedvc_rounds(fedvc[ours][0])
    figures: dict[str, Any] = {
        "clients": clients,
        "rounds": rounds,
        "cpus": args.workers,
        "fedvc": {
            str(w): timing(fedvc_rounds(result), result.seconds, w == 1)
            | {"signed_merges": merges, "final_accuracy": result.runs[0].rounds[-1].accuracy}
            for w, (result, merges, _) in fedvc.items()
        },
        "flower_fedavg": {
            str(a): timing(run.rounds, run.seconds, a == 1) | {"final_accuracy": run.accuracy[-1]}
            for a, run in runs.items()
        },
        "flower_best_actors": best,
        "fedvc_strategy_in_flower": timing(bridged.rounds, bridged.seconds, best == 1)
        | {"actors": best, "signed_merges": bridged_merges, "final_accuracy": bridged.accuracy[-1]},
        "speedup_end_to_end": flower.seconds / fedvc[ours][0].seconds,
        "speedup_after_round_1": total(flower.rounds[1:], "total") / total(mine[1:], "total"),
        "max_weight_difference_flower_vs_fedvc": max_difference(flower.final, fedvc[ours][2]),
    }
    lines = [
        f"  fedvc, {'one process' if w == 1 else f'{w} worker processes'}, on disk, "
        f"{merges} signed merges verified: {describe(fedvc_rounds(result), result.seconds, w == 1)}"
        for w, (result, merges, _) in fedvc.items()
    ]
    lines += [
        f"  Flower FedAvg, Ray with {args.workers} CPUs, {a} actor(s): "
        f"{describe(run.rounds, run.seconds, a == 1)}"
        for a, run in runs.items()
    ]
    lines.append(
        f"  FedvcStrategy('fedavg') in Flower, {best} actor(s), on disk, {bridged_merges} "
        f"signed merges verified: {describe(bridged.rounds, bridged.seconds, best == 1)}"
    )
    print(
        f"flower: digits MLP, {clients} clients x {rounds} rounds, Dirichlet 0.5, the same "
        f"partition, initial model and seeds; in this process, after one untimed warm-up\n"
        + "\n".join(lines)
        + f"\n  fedvc ({'one process' if ours == 1 else f'{ours} workers'}) is "
        f"{figures['speedup_end_to_end']:.1f}x Flower's FedAvg ({best} actor(s)) end to end, "
        f"{figures['speedup_after_round_1']:.1f}x after round 1\n"
        f"  final accuracy: fedvc {fedvc[ours][0].runs[0].rounds[-1].accuracy:.3f}, Flower "
        f"FedAvg {flower.accuracy[-1]:.3f}, FedvcStrategy {bridged.accuracy[-1]:.3f}; largest "
        f"weight difference fedvc vs Flower {figures['max_weight_difference_flower_vs_fedvc']:.1e}"
    )
    return figures


def cold_fedvc(text: str, workers: int, seed: int, clients: int) -> tuple[float, int, float]:
    """``fedvc simulate`` on the experiment file ``text`` in a fresh process, timed from
    launch to exit (interpreter, imports, data, every round, results.json; ``--no-plots``,
    since Flower draws none): seconds, signed merges verified, final accuracy."""
    keys = [server_key(seed).public_key] + [client_key(seed, k).public_key for k in range(clients)]
    with tempfile.TemporaryDirectory() as scratch:
        config, out = Path(scratch) / "bench.toml", Path(scratch) / "out"
        config.write_text(text)
        command = [sys.executable, "-m", "fedvc.cli", "simulate", str(config)]
        command += ["--out", str(out), "--workers", str(workers), "--no-plots"]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds = time.perf_counter() - started
        repo = Repository.open(out / "repo")
        try:
            merges = signed_rounds(repo, "fedavg", keys)
        finally:
            repo.close()
        record = json.loads((out / "results.json").read_text())
        accuracy: float = record["strategies"][0]["rounds"][-1]["accuracy"]
    return seconds, merges, accuracy


def flower_in_this_process(clients: int, rounds: int, epochs: int, actors: int, cpus: int) -> None:
    """Flower's FedAvg on ``digits_toml``'s experiment, its final accuracy printed as JSON (called in a
    fresh process by ``cold_flower``)."""
    quiet_flower()
    run = run_flower(experiment(digits_toml(clients, rounds, cpus, epochs=epochs)), actors, cpus)
    print(json.dumps({"accuracy": run.accuracy[-1]}))


def cold_flower(
    clients: int, rounds: int, epochs: int, actors: int, cpus: int
) -> tuple[float, float]:
    """The same experiment in Flower's simulation engine in a fresh Python process, timed
    from launch to exit (interpreter, imports, Ray, actors, every round): seconds, final
    accuracy."""
    command = [sys.executable, __file__, "--flower-child"]
    command.append(json.dumps([clients, rounds, epochs, actors, cpus]))
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    accuracy: float = json.loads(done.stdout.strip().splitlines()[-1])["accuracy"]
    return seconds, accuracy


def cold_start(args: argparse.Namespace, actors: int) -> dict[str, Any]:
    """Both frameworks as a user starts them: each run a fresh process, best of two,
    the two alternating so neither gets a quieter machine."""
    clients, rounds = args.overhead_clients, args.overhead_rounds
    text = digits_toml(clients, rounds, args.workers, epochs=args.epochs)
    config = experiment(text)
    workers = sorted({1, args.workers})
    fedvc: dict[int, list[float]] = {w: [] for w in workers}
    flower: list[float] = []
    merges, accuracy, flower_accuracy = 0, 0.0, 0.0
    for _ in range(2):
        for w in workers:
            seconds, merges, accuracy = cold_fedvc(text, w, config.seed, clients)
            fedvc[w].append(seconds)
        seconds, flower_accuracy = cold_flower(clients, rounds, args.epochs, actors, args.workers)
        flower.append(seconds)
    ours = min(workers, key=lambda w: min(fedvc[w]))
    figures: dict[str, Any] = {
        "fedvc_simulate_seconds": {str(w): times for w, times in fedvc.items()},
        "flower_seconds": flower,
        "flower_actors": actors,
        "signed_merges": merges,
        "final_accuracy": {"fedvc": accuracy, "flower": flower_accuracy},
        "speedup": min(flower) / min(fedvc[ours]),
    }
    runs = ", ".join(
        f"{'one process' if w == 1 else f'{w} workers'} {min(times):.1f} s"
        for w, times in fedvc.items()
    )
    print(
        f"  fresh processes (best of 2): `fedvc simulate --no-plots` {runs} ({merges} signed "
        f"merges verified); Flower FedAvg ({actors} actor(s)) {min(flower):.1f} s: "
        f"{figures['speedup']:.1f}x; final accuracy {accuracy:.3f} and {flower_accuracy:.3f}"
    )
    return figures


def timing(rounds: Rounds, seconds: float, serial: bool) -> dict[str, float]:
    """A run's figures; the overhead per client-round only where training was serial."""
    figures = {
        "seconds": seconds,
        "round_1_seconds": rounds[0]["total"],
        "later_rounds_seconds": total(rounds[1:], "total"),
        "train_seconds": total(rounds, "train"),
        "client_rounds": total(rounds, "clients"),
    }
    if serial:
        figures["overhead_ms_per_client_round"] = steady_overhead_ms(rounds)
    return figures


def describe(rounds: Rounds, seconds: float, serial: bool) -> str:
    later = f", after it {total(rounds[1:], 'total'):.2f} s" if rounds[1:] else ""
    overhead = f"; framework {steady_overhead_ms(rounds):.1f} ms per client-round" if serial else ""
    return (
        f"{seconds:.1f} s end to end (round 1 {rounds[0]['total']:.2f} s{later}), training "
        f"{total(rounds, 'train'):.1f} s{overhead}"
    )


def flower_accuracy(args: argparse.Namespace, actors: int) -> dict[str, Any]:
    """Dirichlet 0.1: fedvc's FedAvg and Flower's on the same partition, model and seeds."""
    config = load_config(SKEW_CONFIG)
    rounds = config.rounds if args.flower_skew_rounds is None else args.flower_skew_rounds
    config = dataclasses.replace(config, workers=args.workers, rounds=rounds)
    fedvc = run_experiment(config, Repository.memory(), strategies=[0])  # FedAvg
    flower = run_flower(config, actors, args.workers)
    ours = [r.accuracy or 0.0 for r in fedvc.runs[0].rounds]
    differences = [abs(a - b) for a, b in zip(ours, flower.accuracy, strict=True)]
    figures = {
        "rounds": rounds,
        "clients": config.clients,
        "fedvc_fedavg": ours[-1],
        "flower_fedavg": flower.accuracy[-1],
        "difference": ours[-1] - flower.accuracy[-1],
        "largest_round_difference": max(differences),
        "fedvc_seconds": fedvc.seconds,
        "flower_seconds": flower.seconds,
    }
    print(
        f"  Dirichlet 0.1, {config.clients} clients, {rounds} rounds, final accuracy: fedvc "
        f"FedAvg {ours[-1]:.3f}, Flower FedAvg {flower.accuracy[-1]:.3f} (difference "
        f"{figures['difference']:+.3f}, at most {max(differences):.3f} in any round); "
        f"{fedvc.seconds:.0f} s against {flower.seconds:.0f} s"
    )
    return figures


def flower(args: argparse.Namespace) -> dict[str, Any]:
    missing = [name for name in ("flwr", "ray") if importlib.util.find_spec(name) is None]
    if missing:
        print(f'flower: skipped, {" and ".join(missing)} missing: pip install "flwr[simulation]"')
        return {"skipped": f"{', '.join(missing)} not installed"}
    quiet_flower()
    actors = sorted({int(a) for a in args.flower_actors.split(",") if a.strip()})
    figures = flower_speed(args, actors)
    figures["fresh_processes"] = cold_start(args, figures["flower_best_actors"])
    if args.flower_skew_rounds != 0:
        figures["dirichlet_0.1"] = flower_accuracy(args, figures["flower_best_actors"])
    return figures


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "overhead": overhead,
    "scale": scale,
    "fleet": fleet,
    "skew": skew,
    "flower": flower,
}
"""Every section of the benchmark, in the order they run; ``--only`` picks some."""

DEFAULT_SECTIONS = ("overhead", "scale", "fleet", "skew")
"""What runs without ``--only``, ``--flower`` or ``--full``: all but the comparison with
Flower, which needs Flower's simulation extra (Ray) and runs only when asked for."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the target sizes (minutes)")
    parser.add_argument(
        "--only", help=f"sections, comma-separated (default: {', '.join(DEFAULT_SECTIONS)})"
    )
    parser.add_argument(
        "--flower", action="store_true", help="just the comparison with Flower (flwr[simulation])"
    )
    parser.add_argument("--workers", type=int, default=2, help="training processes")
    parser.add_argument("--epochs", type=int, default=2, help="local epochs (digits sections)")
    parser.add_argument("--overhead-clients", type=int, default=20)
    parser.add_argument("--overhead-rounds", type=int, default=5)
    parser.add_argument("--scale-clients", type=int, default=100)
    parser.add_argument("--scale-rounds", type=int, default=3)
    parser.add_argument("--fleet-clients", type=int, default=1000)
    parser.add_argument("--fleet-rounds", type=int, default=2)
    parser.add_argument("--fleet-fraction", type=float, default=0.05)
    parser.add_argument("--skew-rounds", type=int, default=5)
    parser.add_argument("--flower-actors", default="1,2", help="Ray actor counts to try")
    parser.add_argument(
        "--flower-skew-rounds", type=int, help="Dirichlet 0.1 rounds (default: the file's; 0: skip)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    parser.add_argument("--fleet-child", help=argparse.SUPPRESS)
    parser.add_argument("--flower-child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    args = parse_args(argv)
    if args.fleet_child:
        clients, rounds, fraction, workers = json.loads(args.fleet_child)
        fleet_in_this_process(clients, rounds, fraction, workers)
        return {}
    if args.flower_child:
        flower_in_this_process(*json.loads(args.flower_child))
        return {}
    if args.only is not None:
        chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    elif args.flower:
        chosen = ["flower"]
    else:
        chosen = list(SECTIONS) if args.full else list(DEFAULT_SECTIONS)
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    figures: dict[str, dict[str, Any]] = {}
    for name in chosen:
        started = time.perf_counter()
        figures[name] = SECTIONS[name](args)
        figures[name]["section_seconds"] = time.perf_counter() - started
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
