"""Federations on one machine: the real Coordinator and virtual Participants, in process.

A simulation is not a model of the protocol but the protocol itself: rounds are served by
``fedvc.coordinator.Coordinator``, and every update is committed, signed, uploaded and
submitted by a ``fedvc.participant.Participant`` with its own key, then checked at the
door and merged into a signed octopus commit exactly as in a deployed fleet. What is
simulated is only the network (participants pass the coordinator itself as their link
and share its repository as their object store, so a sync moves nothing) and the clock.

Clients are virtual. The fleet is its partition (one index array per client) and a key
seed per client; a client's key, ``Task`` and ``Participant`` exist only during the rounds
that select it, so a fleet of thousands costs its keys' public halves and its indices.

Local training, the expensive part, runs in a process pool (``workers``): each worker
rebuilds the workload once from its ``WorkloadSpec`` and trains the jobs it is sent from
base weights given as arrays. The main process keeps everything that touches the
repository (commit, sign, submit, merge) and commits each update as soon as its client's
training returns, overlapping it with the training still running. Training is seeded by
``(seed, round, client)`` and the clock is simulated (one second per round), so the same
experiment gives the same commit ids with one worker or several.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedvc.coordinator import Coordinator, CoordinatorConfig, RoundLog
from fedvc.errors import FedvcError
from fedvc.merge.base import MergeStrategy
from fedvc.objects import ObjectId
from fedvc.participant import Participant, TrainResult
from fedvc.repo import DEFAULT_BRANCH, Repository, branch_ref
from fedvc.round import RoundConfig
from fedvc.signing import PublicKey, SigningKey
from fedvc.simulation.workers import (
    Trained,
    TrainJob,
    ready,
    start_pool,
    train_clients,
    train_in_worker,
    training_seed,
)
from fedvc.simulation.workload import Workload, WorkloadSpec
from fedvc.tensors import ParamMap
from fedvc.transport import RoundOffer
from fedvc.trust import TrustStore

SIMULATED_EPOCH = 1_704_067_200
"""The simulated clock's start (2024-01-01 00:00 UTC); round ``n`` happens ``n`` seconds
later. A fixed clock makes commit ids depend only on the experiment."""

JOBS_PER_WORKER = 4
"""A round's clients are sent to the pool in about this many jobs per worker: few enough
that the base weights are pickled a handful of times, enough to balance unequal clients."""


class SimulationError(FedvcError):
    """A simulation could not run as set up (a rejected update, a repository in use)."""


class SimulatedClock:
    """Time that moves only when the simulation moves it."""

    def __init__(self, start: float = SIMULATED_EPOCH) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now


def _seed_bytes(seed: int, role: str) -> bytes:
    return hashlib.sha256(f"fedvc simulation seed {seed} {role}".encode()).digest()


def client_key(seed: int, client: int) -> SigningKey:
    """Client ``client``'s signing key, derived from the experiment's seed."""
    return SigningKey.from_seed(_seed_bytes(seed, f"client {client}"))


def server_key(seed: int) -> SigningKey:
    """The coordinator's signing key, derived from the experiment's seed."""
    return SigningKey.from_seed(_seed_bytes(seed, "server"))


class _Trained:
    """A ``Task`` whose training already ran (in a worker): the participant commits it."""

    def __init__(self, result: TrainResult, config: Mapping[str, Any]) -> None:
        self.result, self.config = result, dict(config)

    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult:
        if dict(config) != self.config:
            raise SimulationError(
                f"the participant was offered {dict(config)} but its client trained with "
                f"{self.config}"
            )
        return self.result


@dataclass
class RoundRecord:
    """One round of one strategy: the merge commit, who took part, how the model does."""

    round: int
    commit: ObjectId
    clients: list[int]
    evaluation: dict[str, float]
    client_metrics: dict[str, float] = field(default_factory=dict)
    interference: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        return self.evaluation.get("accuracy")

    @property
    def loss(self) -> float | None:
        return self.evaluation.get("loss")

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "commit": self.commit,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "participants": len(self.clients),
            "clients": self.clients,
            "evaluation": self.evaluation,
            "client_metrics": self.client_metrics,
            "interference": self.interference,
            "seconds": self.seconds,
        }


@dataclass
class StrategyRun:
    """Every round of one strategy; round 0 is the initial model."""

    label: str
    branch: str
    spec: dict[str, Any]
    train: dict[str, Any]
    rounds: list[RoundRecord]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "branch": self.branch,
            "strategy": self.spec,
            "train": self.train,
            "rounds": [r.to_json() for r in self.rounds],
        }


class SimulationObserver(Protocol):
    """Hears progress (a progress bar); must not raise."""

    def trained(self, label: str, round_number: int, clients: int) -> None: ...

    def round_finished(self, label: str, record: RoundRecord) -> None: ...


class Simulation:
    """A fleet of virtual clients over one partition, ready to run strategies on it.

    The initial model (``workload.initial_params(seed)``) is committed to ``main`` signed
    by the server key; every strategy then runs on its own branch from that commit, so all
    of them start from the same weights, see the same clients in the same rounds, and can
    be compared with ``fedvc diff`` in one repository. ``repo`` must be fresh (no
    ``main``); its clock becomes the simulated one, which is what makes commit ids
    reproducible. ``spec`` is needed for ``workers > 1`` (workers rebuild the workload
    from it).
    """

    def __init__(
        self,
        workload: Workload,
        parts: Sequence[np.ndarray],
        *,
        repo: Repository,
        seed: int = 0,
        workers: int = 1,
        spec: WorkloadSpec | None = None,
        observer: SimulationObserver | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if workers < 1:
            raise SimulationError(f"workers must be at least 1, got {workers}")
        if workers > 1 and spec is None:
            raise SimulationError("workers > 1 need the workload's WorkloadSpec to rebuild it")
        if not parts:
            raise SimulationError("a simulation needs at least one client")
        self.workload, self.parts, self.repo, self.seed = workload, list(parts), repo, seed
        self.workers, self.spec, self.observer = workers, spec, observer
        self.clock = SimulatedClock()
        self.server = server_key(seed)
        self.public_keys: list[PublicKey] = [
            client_key(seed, k).public_key for k in range(len(self.parts))
        ]
        self.trust = TrustStore(self.public_keys)
        self._clients = {str(key.key_id): k for k, key in enumerate(self.public_keys)}
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        if repo.refs.get_ref(branch_ref(DEFAULT_BRANCH)) is not None:
            raise SimulationError(
                "the repository already has a main branch: a simulation starts in a fresh one"
            )
        self.repo.clock = self.clock
        self.initial = repo.commit_params(
            workload.initial_params(seed),
            "initial model",
            branch=DEFAULT_BRANCH,
            signer=self.server,
            metadata={"simulation": {"seed": seed, "clients": len(self.parts), **(metadata or {})}},
        )
        if workers > 1:  # the workers boot while the initial model is evaluated
            pool = self._start_pool()
            for _ in range(workers):
                pool.submit(ready)  # a process starts for each task submitted while none idles
        try:
            self.initial_evaluation = workload.evaluate(repo.read_params(self.initial))
        except BaseException:
            self.close()  # no `with` block owns the workers yet
            raise

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def select(self, round_number: int, count: int) -> list[int]:
        """The clients of a round: a seeded draw, the same for every strategy."""
        if count > len(self.parts):
            raise SimulationError(
                f"round {round_number} needs {count} clients but the fleet has "
                f"{len(self.parts)}: lower min_clients or use more clients"
            )
        rng = np.random.default_rng([self.seed, round_number])
        return sorted(int(k) for k in rng.choice(len(self.parts), size=count, replace=False))

    def run(
        self,
        label: str,
        strategy: MergeStrategy,
        round_config: RoundConfig,
        rounds: int,
        *,
        branch: str | None = None,
    ) -> StrategyRun:
        """Run ``rounds`` rounds of ``strategy`` on ``branch`` (default: ``label``)."""
        name = branch or label
        self.repo.create_branch(name, self.initial)
        self.clock.now = SIMULATED_EPOCH
        reports = RoundLog()
        coordinator = Coordinator(
            self.repo,
            strategy,
            trust=self.trust,
            signer=self.server,
            config=CoordinatorConfig(rounds, round_config, branch=name),
            clock=self.clock,
            observer=reports,
        )
        initial = RoundRecord(0, self.initial, [], dict(self.initial_evaluation))
        run = StrategyRun(label, name, strategy.spec.to_json(), dict(round_config.train), [initial])
        while (state := coordinator.state) is not None:
            started = time.perf_counter()
            self.clock.now = SIMULATED_EPOCH + state.number
            clients = self.select(state.number, state.target)
            train_seconds = self._round(label, coordinator, state.number, clients)
            report = reports.reports[-1] if reports.reports else None
            if report is None or report.number != state.number:
                raise SimulationError(
                    f"round {state.number} of {label} did not close after every selected "
                    f"client submitted (rejections: {reports.rejections})"
                )
            evaluated = time.perf_counter()
            evaluation = self.workload.evaluate(self.repo.read_params(report.commit))
            ended = time.perf_counter()
            record = RoundRecord(
                round=state.number,
                commit=report.commit,
                clients=sorted(self._clients[a.key_id] for a in report.participants),
                evaluation=evaluation,
                client_metrics=dict(report.metrics),
                interference=report.interference_score,
                seconds={
                    "total": ended - started,
                    "train": train_seconds,
                    "merge": report.aggregation_seconds,
                    "evaluate": ended - evaluated,
                },
            )
            run.rounds.append(record)
            if self.observer is not None:
                self.observer.round_finished(label, record)
        return run

    def _round(
        self, label: str, coordinator: Coordinator, number: int, clients: list[int]
    ) -> float:
        """Ask, train, commit and submit for every selected client; seconds spent training."""
        offers: dict[int, RoundOffer] = {}
        for client in clients:
            offer = coordinator.next_round(str(self.public_keys[client].key_id))
            if not isinstance(offer, RoundOffer):
                raise SimulationError(f"client {client} was not given round {number}: {offer}")
            offers[client] = offer
        base = self.repo.read_params(offers[clients[0]].base)
        configs = {
            k: {**offers[k].config, "round": number, "seed": training_seed(self.seed, number, k)}
            for k in clients
        }
        seconds = 0.0
        for batch in self._train(clients, base, configs):
            for trained in batch:
                seconds += trained.seconds
                self._submit(coordinator, trained, offers[trained.client])
            if self.observer is not None:
                self.observer.trained(label, number, len(batch))
        return seconds

    def _submit(self, coordinator: Coordinator, trained: Trained, offer: RoundOffer) -> None:
        task = _Trained(trained.result, {**offer.config, "round": offer.number})
        key = client_key(self.seed, trained.client)
        submitted = Participant(coordinator, task, key, self.repo).take_part(offer)
        if not submitted.verdict.admitted:
            raise SimulationError(
                f"round {offer.number}: the update of client {trained.client} was rejected "
                f"({submitted.verdict.reason}): {submitted.verdict.detail}"
            )

    def _train(
        self,
        clients: list[int],
        base: Mapping[str, np.ndarray],
        configs: Mapping[int, Mapping[str, Any]],
    ) -> Iterator[list[Trained]]:
        """Train the clients, yielding results as they come (in process or in the pool)."""
        if self.workers == 1:
            for client in clients:
                yield train_clients(self.workload, self._job([client], base, configs))
            return
        pool = self._start_pool()
        jobs = np.array_split(
            np.asarray(clients), min(len(clients), self.workers * JOBS_PER_WORKER)
        )
        futures = [pool.submit(train_in_worker, self._job(j, base, configs)) for j in jobs]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()

    def _job(
        self,
        clients: Iterable[int],
        base: Mapping[str, np.ndarray],
        configs: Mapping[int, Mapping[str, Any]],
    ) -> TrainJob:
        chosen = tuple(int(k) for k in clients)
        return TrainJob(
            chosen,
            tuple(self.parts[k] for k in chosen),
            tuple(configs[k] for k in chosen),
            dict(base),
        )

    def _start_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            assert self.spec is not None  # checked in __init__ for workers > 1
            self._pool = start_pool(self.spec, self.workers)
        return self._pool
