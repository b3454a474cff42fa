"""``fedvc simulate``: run an experiment file and report it.

    fedvc simulate simulations/digits-dirichlet.toml [--out DIR] [--workers N] [--rounds N]
                                                     [--no-plots]

The experiment runs the real coordinator and one virtual participant per client in this
process (training in ``--workers`` processes) and writes, under DIR:

- ``repo/``: one repository. ``main`` holds the signed initial model; every strategy has
  a branch from it named after its label, one signed octopus merge per round. One
  repository rather than one per strategy, because the comparison is then part of the
  history: every strategy provably starts from the same commit, and ``fedvc diff fedavg
  fedprox`` compares two strategies' final models directly.
- ``keys/``: the public keys of the server and of every client, for ``fedvc --repo
  DIR/repo verify BRANCH --trust DIR/keys``.
- ``results.json``: accuracy, loss, participants and commit id per strategy and round.
- ``accuracy.png``, ``loss.png`` (per round, per strategy) and ``partition.png``, unless
  ``--no-plots``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from fedvc import render
from fedvc.cli.common import UsageError
from fedvc.repo import Repository
from fedvc.simulation.config import SimulationConfig, load_config
from fedvc.simulation.experiment import ExperimentResult, partition_clients, run_experiment
from fedvc.simulation.partition import partition_table
from fedvc.simulation.runner import RoundRecord, client_key, server_key
from fedvc.simulation.workload import group_names


class ProgressBar:
    """Client trainings done out of all the experiment's, as a one-line bar on stderr.

    On a terminal the line is redrawn in place (at most ten times a second); elsewhere
    (a log file, CI) one line is written per finished round instead.
    """

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.width = max(total, 1), width
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.monotonic()
        self.drawn = 0.0
        self.status = ""
        self.live = self.stream.isatty()

    def trained(self, label: str, round_number: int, clients: int) -> None:
        self.done += clients
        self.status = self.status or f"{label} round {round_number}"
        self.draw()

    def round_finished(self, label: str, record: RoundRecord) -> None:
        accuracy = render.number(record.accuracy)
        self.status = f"{label} round {record.round}: accuracy {accuracy}"
        if self.live:
            self.draw(force=True)
        else:
            print(f"[{self._percent():3d}%] {self.status} ({self._elapsed()})", file=self.stream)

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.live or (not force and now - self.drawn < 0.1):
            return
        self.drawn = now
        filled = self.width * min(self.done, self.total) // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {self._percent():3d}% {self._elapsed()} {self.status}"
        self.stream.write("\r" + line[:119].ljust(119))
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.draw(force=True)
            self.stream.write("\n")
            self.stream.flush()

    def _percent(self) -> int:
        return 100 * min(self.done, self.total) // self.total

    def _elapsed(self) -> str:
        seconds = time.monotonic() - self.started
        left = seconds * (self.total - self.done) / self.done if self.done else None
        text = f"{seconds:.0f}s"
        return text if left is None else f"{text}, ~{left:.0f}s left"


def _partition_lines(config: SimulationConfig, parts: list[np.ndarray], table: np.ndarray) -> str:
    sizes = np.asarray([len(p) for p in parts])
    held = (table > 0).sum(axis=1)
    shares = table.max(axis=1) / np.maximum(sizes, 1)
    described = config.partition.kind + "".join(
        f" {k}={v}"
        for k, v in dataclasses.asdict(config.partition).items()
        if k != "kind" and v is not None
    )
    return (
        f"partition {described}: {len(parts)} clients, {int(sizes.sum())} examples, "
        f"{table.shape[1]} classes; examples per client {sizes.min()}-{int(np.median(sizes))}-"
        f"{sizes.max()} (min-median-max); classes per client {held.mean():.1f} on average; "
        f"largest class {shares.mean():.0%} of a client's examples on average"
    )


def results_tables(result: ExperimentResult) -> list[str]:
    """Accuracy / loss per round (rows) and strategy (columns), then one line per strategy."""
    runs = result.runs
    rounds = max(len(run.rounds) for run in runs)
    rows = []
    for index in range(rounds):
        row: list[object] = [index]
        for run in runs:
            record = run.rounds[index] if index < len(run.rounds) else None
            row.append(
                "-"
                if record is None
                else f"{render.number(record.accuracy)} / {render.number(record.loss)}"
            )
        rows.append(row)
    lines = render.table(
        ["round", *(f"{r.label} acc / loss" for r in runs)], rows, "r" * (len(runs) + 1)
    )
    summary = []
    for run in runs:
        final = run.rounds[-1]
        best = max(run.rounds, key=lambda r: r.accuracy or 0.0)
        seconds = sum(r.seconds.get("total", 0.0) for r in run.rounds)
        summary.append(
            [
                run.label,
                run.branch,
                final.accuracy,
                final.loss,
                f"{render.number(best.accuracy)} (round {best.round})",
                f"{seconds:.1f}",
                final.commit[:12],
            ]
        )
    headers = ["strategy", "branch", "final acc", "final loss", "best acc", "seconds", "commit"]
    return [*lines, "", *render.table(headers, summary, "llrrrrl")]


def write_outputs(result: ExperimentResult, out: Path, *, figures: bool = True) -> list[Path]:
    """results.json and, with ``figures``, the three PNGs; returns the files written."""
    record = result.to_json()
    record["repository"] = "repo"
    record["keys"] = "keys"
    results = out / "results.json"
    results.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if not figures:
        return [results]
    from fedvc import plots  # matplotlib loads only when plotting, not for every command

    accuracy = {
        r.label: [(x.round, x.accuracy) for x in r.rounds if x.accuracy is not None]
        for r in result.runs
    }
    loss = {
        r.label: [(x.round, x.loss) for x in r.rounds if x.loss is not None] for r in result.runs
    }
    name = result.config.name
    return [
        results,
        plots.plot_rounds(
            accuracy, out / "accuracy.png", ylabel="test accuracy", title=f"{name}: accuracy"
        ),
        plots.plot_rounds(loss, out / "loss.png", ylabel="test loss", title=f"{name}: loss"),
        plots.plot_partition(
            result.table,
            out / "partition.png",
            classes=result.classes,
            clients=result.groups,
            title=f"{name}: examples per client and class",
        ),
    ]


def write_keys(out: Path, seed: int, clients: int) -> None:
    """The public keys (the private ones follow from the seed, so they are not written)."""
    keys = out / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    (keys / "server.pub").write_bytes(server_key(seed).public_key.to_pem())
    for client in range(clients):
        (keys / f"client-{client:04d}.pub").write_bytes(
            client_key(seed, client).public_key.to_pem()
        )


def cmd_simulate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.rounds is not None:
        config = dataclasses.replace(config, rounds=args.rounds)
    if args.workers is not None:
        config = dataclasses.replace(config, workers=args.workers)
    if config.rounds < 1 or config.workers < 1:
        raise UsageError("--rounds and --workers must be at least 1")
    out = Path(args.out) if args.out else Path("runs") / config.name
    if (out / "repo").exists():
        raise UsageError(
            f"{out / 'repo'} already exists: choose another --out, or delete the old run first"
        )
    out.mkdir(parents=True, exist_ok=True)
    workload = config.workload.build()
    parts = partition_clients(workload, config.partition, config.clients, config.seed)
    table = partition_table(workload.labels(), parts)
    print(
        f"{config.name}: {config.workload.target}, {len(config.strategies)} strategies x {config.rounds} rounds, {config.workers} worker(s)"
    )
    print(_partition_lines(config, parts, table))
    names = group_names(workload)
    if names is not None and config.partition.kind == "natural":
        print(f"clients (one per group): {', '.join(names)}")
    per_round = config.round.target(len(parts))
    bar = ProgressBar(len(config.strategies) * config.rounds * per_round)
    # a scratch history: the same file recomputes the same commits, so no fsync per object
    repo = Repository.init(out / "repo", bare=True, durable=False)
    try:
        result = run_experiment(config, repo, workload=workload, parts=parts, observer=bar)
    finally:
        bar.close()
        repo.close()
    write_keys(out, config.seed, len(parts))
    files = write_outputs(result, out, figures=not args.no_plots)
    print()
    print("\n".join(results_tables(result)))
    print()
    print(f"finished in {result.seconds:.1f}s; wrote {', '.join(str(f) for f in files)}")
    first = result.runs[0].branch
    print(f"history: fedvc --repo {out / 'repo'} log --graph {first}")
    print(f"audit:   fedvc --repo {out / 'repo'} verify {first} --trust {out / 'keys'}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a federated experiment (a TOML file) with virtual clients on this machine",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("config", help="experiment file, e.g. simulations/digits-dirichlet.toml")
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/NAME)")
    p.add_argument("--workers", type=int, help="training processes (default: the file's)")
    p.add_argument("--rounds", type=int, help="rounds per strategy (default: the file's)")
    p.add_argument(
        "--no-plots",
        action="store_true",
        help="write results.json but no PNGs (sweeps, scripts: matplotlib is not loaded)",
    )
    p.set_defaults(run=cmd_simulate)
