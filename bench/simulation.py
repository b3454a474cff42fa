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
  of them per round, in a fresh process; its peak resident memory and its workers'.
- ``skew``: ``simulations/digits-dirichlet-0.1.toml`` (Dirichlet alpha=0.1, 20 clients):
  final test accuracy of FedAvg, FedProx, Fisher-weighted and matched averaging.

Defaults are small, so a run takes a minute or two; ``--full`` uses the target sizes
above. Each section is a function from the parsed arguments to printed figures, listed
in ``SECTIONS``: a comparison with another framework is added as one more entry there.

Usage: python bench/simulation.py [--full] [--only overhead,scale,fleet,skew] [--workers 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedvc.repo import Repository
from fedvc.simulation.config import SimulationConfig, load_config, parse_config
from fedvc.simulation.experiment import ExperimentResult, run_experiment

ROOT = Path(__file__).resolve().parents[1]
SKEW_CONFIG = ROOT / "simulations" / "digits-dirichlet-0.1.toml"


def digits_config(
    clients: int,
    rounds: int,
    workers: int,
    *,
    fraction: float = 1.0,
    min_size: int = 10,
    epochs: int = 2,
) -> SimulationConfig:
    """FedAvg on label-skewed digits (Dirichlet 0.5), the MLP of ``fedvc simulate``."""
    return parse_config(
        {
            "simulation": {
                "name": "bench",
                "rounds": rounds,
                "clients": clients,
                "workers": workers,
            },
            "data": {"workload": "digits", "params": {"hidden": [64]}},
            "partition": {"kind": "dirichlet", "alpha": 0.5, "min_size": min_size},
            "round": {"fraction": fraction},
            "train": {"epochs": epochs, "lr": 0.05, "batch_size": 32},
            "strategy": [{"label": "FedAvg", "name": "fedavg"}],
        },
        "bench",
    )


def run_on_disk(config: SimulationConfig) -> ExperimentResult:
    """One experiment in a fresh repository on disk (fsynced objects, SQLite refs)."""
    with tempfile.TemporaryDirectory() as scratch:
        repo = Repository.init(Path(scratch) / "repo", bare=True)
        try:
            return run_experiment(config, repo)
        finally:
            repo.close()


def time_split(result: ExperimentResult) -> dict[str, float]:
    """Seconds in the rounds, in training (summed over clients), in evaluation, in merging."""
    records = [r for run in result.runs for r in run.rounds[1:]]
    return {
        key: sum(r.seconds.get(key, 0.0) for r in records)
        for key in ("total", "train", "evaluate", "merge")
    } | {"client_rounds": float(sum(len(r.clients) for r in records))}


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    clients, rounds = args.overhead_clients, args.overhead_rounds
    parallel = run_on_disk(digits_config(clients, rounds, args.workers, epochs=args.epochs))
    serial = run_on_disk(digits_config(clients, rounds, 1, epochs=args.epochs))
    split = time_split(serial)
    outside = split["total"] - split["train"] - split["evaluate"]
    figures = {
        "end_to_end_seconds": parallel.seconds,
        "workers": args.workers,
        "one_process_seconds": serial.seconds,
        "client_rounds": split["client_rounds"],
        "train_ms_per_client_round": 1000 * split["train"] / split["client_rounds"],
        "overhead_ms_per_client_round": 1000 * outside / split["client_rounds"],
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
        f"round, bookkeeping)\n"
        f"  final accuracy {figures['final_accuracy']:.3f}"
    )
    return figures


def scale(args: argparse.Namespace) -> dict[str, Any]:
    clients, rounds = (100, 20) if args.full else (args.scale_clients, args.scale_rounds)
    config = digits_config(clients, rounds, args.workers, min_size=1, epochs=args.epochs)
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
        "peak_worker_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
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
    # the same work per round from a fleet of only the clients a round takes: the
    # difference in peak memory is what the idle virtual clients cost
    per_round = max(1, math.ceil(fraction * clients))
    small = fleet_child(per_round, rounds, 1.0, args.workers)
    figures |= {
        "clients": clients,
        "rounds": rounds,
        "fraction": fraction,
        "small_fleet_clients": per_round,
        "small_fleet_peak_rss_mib": small["peak_rss_mib"],
    }
    print(
        f"fleet: {clients} virtual clients ({figures['examples_per_client']:.0f} examples "
        f"each, stdlib text), {rounds} rounds of {fraction:.0%}: {figures['seconds']:.1f} s; "
        f"peak RSS {figures['peak_rss_mib']:.0f} MiB (a fleet of just the {per_round} "
        f"clients a round takes: {small['peak_rss_mib']:.0f} MiB), "
        f"{figures['peak_worker_rss_mib']:.0f} MiB per training worker; "
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


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "overhead": overhead,
    "scale": scale,
    "fleet": fleet,
    "skew": skew,
}
"""Every section of the benchmark, in the order they run; ``--only`` picks some."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the target sizes (minutes)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
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
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    parser.add_argument("--fleet-child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    args = parse_args(argv)
    if args.fleet_child:
        clients, rounds, fraction, workers = json.loads(args.fleet_child)
        fleet_in_this_process(clients, rounds, fraction, workers)
        return {}
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
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
