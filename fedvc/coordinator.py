"""The coordinator: the one stateful orchestrator of a federated run.

It owns the repository, the round in progress and the strategy's state; every transport
(in-process for simulations, gRPC for a fleet, Flower) calls the same methods, which are
the ``CoordinatorLink`` protocol. All state changes happen under one lock through the pure
transitions of ``fedvc.round``, so concurrent clients see one consistent round.

A round's outcome lives only in the repository: the merge commit on ``main`` names its
round number, and the strategy's state is a snapshot it points at. A coordinator that is
restarted (or killed) therefore resumes from ``main`` with no round lost or repeated; an
update admitted to a round that had not closed yet is simply submitted again.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedvc.admission import admit
from fedvc.merge.base import MergeStrategy, uses_fisher, uses_grams
from fedvc.objects import Commit, ObjectId
from fedvc.repo import Repository, RevisionError, branch_ref
from fedvc.round import (
    ROUND_KEY,
    Admitted,
    Rejected,
    RoundConfig,
    RoundError,
    RoundState,
    UpdateRejected,
    assign,
    extend,
    merge_round,
    open_round,
    ready,
    reject,
)
from fedvc.round_store import (
    admitted_update,
    attached_snapshots,
    commit_objects,
    record_merge,
    starting_state,
    wire_objects,
)
from fedvc.signing import KeyId, PublicKey, SigningError, SigningKey
from fedvc.store.base import ObjectNotFoundError, StoreError
from fedvc.tensors import ParamMap
from fedvc.transport import Finished, Offer, RoundOffer, Verdict, Wait, WireObject
from fedvc.trust import TrustStore

REPLAY_MEMORY = 16
"""Rounds whose admitted updates the coordinator remembers, so that one sent again is
refused as a "replay". An older update is refused all the same, as "wrong_round" (its
round and base are long past), and memory stays bounded over a long-running fleet."""


@dataclass(frozen=True)
class RoundReport:
    """What one closed round produced, for metrics, logs and simulation results."""

    number: int
    commit: ObjectId
    base: ObjectId
    participants: tuple[Admitted, ...]
    rejected: Mapping[str, int]
    metrics: Mapping[str, float]
    interference_score: float | None
    duration_seconds: float
    aggregation_seconds: float


class RoundObserver(Protocol):
    """Hears what happens to rounds (metrics, progress bars); must not raise."""

    def client_seen(self, key_id: str) -> None: ...

    def admitted(self, update: Admitted) -> None: ...

    def rejected(self, reason: str) -> None: ...

    def round_closed(self, report: RoundReport) -> None: ...


class SilentObserver:
    """An observer that ignores everything: subclass it and override what you need."""

    def client_seen(self, key_id: str) -> None:
        pass

    def admitted(self, update: Admitted) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def round_closed(self, report: RoundReport) -> None:
        pass


class RoundLog(SilentObserver):
    """An observer that keeps everything it hears, for simulations, tests and notebooks."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.admitted_updates: list[Admitted] = []
        self.rejections: list[str] = []
        self.reports: list[RoundReport] = []

    def client_seen(self, key_id: str) -> None:
        self.seen.add(key_id)

    def admitted(self, update: Admitted) -> None:
        self.admitted_updates.append(update)

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)

    def round_closed(self, report: RoundReport) -> None:
        self.reports.append(report)


@dataclass(frozen=True)
class CoordinatorConfig:
    """A run: ``rounds`` rounds on ``branch``, each sized and bounded by ``round``."""

    rounds: int
    round: RoundConfig = field(default_factory=RoundConfig)
    branch: str = "main"
    retry_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise RoundError(f"a run needs at least one round, got rounds={self.rounds}")


def _key_id(author: str) -> str:
    """The key id of a commit's author (a 64-hex public key), or "" if there is none."""
    try:
        return str(PublicKey.from_hex(author).key_id)
    except SigningError:
        return ""


def completed_rounds(commit: Commit) -> int:
    """The round number a ``main`` tip closed (0 for an initial model)."""
    number = commit.metadata.get(ROUND_KEY)
    return number if isinstance(number, int) and "round" in commit.metadata else 0


class Coordinator:
    """Serves rounds to participants and records each as a signed octopus merge commit.

    ``main`` (``config.branch``) must hold the initial model. ``trust`` names the clients
    allowed to contribute (the fleet; its size sets how many a round takes), ``signer``
    signs every merge commit. ``clock`` is injected so tests and simulations control time.
    """

    def __init__(
        self,
        repo: Repository,
        strategy: MergeStrategy,
        *,
        trust: TrustStore,
        signer: SigningKey,
        config: CoordinatorConfig,
        clock: Callable[[], float] = time.time,
        observer: RoundObserver | None = None,
    ) -> None:
        self.repo = repo
        self.strategy = strategy
        self.trust = trust
        self.signer = signer
        self.config = config
        self.clock = clock
        self.observer: RoundObserver = observer or SilentObserver()
        self._lock = threading.RLock()
        self._fisher = uses_fisher(strategy.spec)
        self._grams = uses_grams(strategy.spec)
        self._admitted_recently: deque[set[ObjectId]] = deque([set()], maxlen=REPLAY_MEMORY)
        self._base_cache: tuple[ObjectId, ParamMap] | None = None
        self._closing = False
        self.failure: Exception | None = None
        """Why a round could not be merged; set, the coordinator stops serving rounds."""
        tip = repo.refs.get_ref(branch_ref(config.branch))
        if tip is None:
            raise RoundError(
                f"branch {config.branch!r} does not exist: commit an initial model to it "
                "before starting a coordinator"
            )
        if config.round.min_clients > self.fleet_size:
            raise RoundError(
                f"a round needs at least {config.round.min_clients} clients but only "
                f"{self.fleet_size} keys are trusted: lower min_clients or trust more clients"
            )
        tip_commit = repo.get_commit(tip)
        self._strategy_state = starting_state(repo, strategy, tip)
        done = completed_rounds(tip_commit)
        self._state: RoundState | None = None
        if done < config.rounds:
            self._state = open_round(done + 1, tip, config.round, self.fleet_size, clock())

    # -- the run ------------------------------------------------------------------------

    @property
    def fleet_size(self) -> int:
        return max(len(self.trust.key_ids()), 1)

    @property
    def finished(self) -> bool:
        """Every round is merged, or one could not be (``failure`` says why)."""
        with self._lock:
            return self._state is None or self.failure is not None

    @property
    def state(self) -> RoundState | None:
        with self._lock:
            return self._state

    def tick(self) -> RoundReport | None:
        """Close the round if it is ready, or extend it past a deadline without quorum.

        The merge runs outside the lock: while one thread merges (seconds, for a large
        model), the others keep answering clients, who hear that the round is closing.
        """
        with self._lock:
            if self.failure is not None:
                raise RoundError(
                    f"the coordinator stopped: a round could not be merged ({self.failure}); "
                    "its operator must look before the run can go on"
                )
            state = self._state
            if state is None or self._closing:
                return None
            now = self.clock()
            if not ready(state, self.config.round, now):
                self._state = extend(state, self.config.round, now)
                return None
            self._closing = True
        try:
            report = self._close(state, now)
        except Exception as exc:  # merging again would fail again: stop, and say why
            with self._lock:
                self.failure = exc
            return None
        finally:
            with self._lock:
                self._closing = False
        self.observer.round_closed(report)
        return report

    # -- the participant's side (CoordinatorLink) -------------------------------------

    def next_round(self, key_id: str) -> Offer:
        self.tick()
        with self._lock:
            if not self.trust.trusts_key_id(key_id):
                self.observer.rejected("unknown_key")
                raise UpdateRejected(
                    "unknown_key",
                    f"key {key_id} is not among the coordinator's trusted client keys; "
                    "ask the operator to add its .pub file",
                )
            self.observer.client_seen(key_id)
            if self._state is None:
                return Finished(self.config.rounds)
            state = self._state
            if self._closing:
                return Wait(self.config.retry_seconds, f"round {state.number} is being merged")
            if key_id in state.admitted_keys:
                return Wait(
                    self.config.retry_seconds,
                    f"your update to round {state.number} is in; the round is still open",
                )
            try:
                self._state = assign(state, KeyId(key_id))
            except RoundError as exc:
                return Wait(self.config.retry_seconds, str(exc))
            return RoundOffer(state.number, state.base, self._train_config(), state.deadline)

    def list_objects(self, commit: ObjectId) -> list[ObjectId]:
        """Blobs first, then the snapshot, then the commit: a receiver storing them in this
        order never holds a snapshot or commit whose parts it lacks."""
        return commit_objects(self.repo, commit)

    def get_objects(self, ids: Sequence[ObjectId]) -> Iterator[WireObject]:
        return wire_objects(self.repo, ids)

    def missing(self, ids: Sequence[ObjectId]) -> list[ObjectId]:
        return [oid for oid in ids if not self.repo.objects.contains(oid)]

    def put_objects(self, objects: Iterable[WireObject]) -> None:
        for obj in objects:
            obj.store_in(self.repo.objects)

    def submit(self, round_number: int, commit: ObjectId) -> Verdict:
        self.tick()
        with self._lock:
            state = self._state
            closing = self._closing and state is not None and round_number == state.number
            if state is None or round_number < state.number or closing:
                closed = f"round {round_number} is closed"
                return self._refuse(state, commit, "", UpdateRejected("round_closed", closed))
            if round_number > state.number:
                future = f"round {round_number} is not open; the open round is {state.number}"
                return self._refuse(state, commit, "", UpdateRejected("wrong_round", future))
            if any(a.commit == commit for a in state.admitted):
                return Verdict(True, detail="already admitted to this round")  # a retried call
            try:
                update = self.repo.get_commit(commit)
            except (ObjectNotFoundError, StoreError, RevisionError) as exc:
                error = UpdateRejected("missing_objects", f"commit {commit}: {exc}")
                return self._refuse(state, commit, "", error)
            try:
                state, admitted = self._admit(state, commit, update)
            except UpdateRejected as error:
                return self._refuse(state, commit, update.author or "", error)
            self._state = state
            self._admitted_recently[-1].add(commit)
            self.observer.admitted(admitted)
        report = self.tick()
        extra = {"round_closed": report.commit} if report else {}
        return Verdict(True, extra=extra)

    # -- inside ---------------------------------------------------------------------------

    def _train_config(self) -> dict[str, Any]:
        config = dict(self.config.round.train)
        if self._fisher:
            config["fisher"] = True
        if self._grams:
            config["grams"] = True
        return config

    def _admit(
        self, state: RoundState, commit_id: ObjectId, commit: Commit
    ) -> tuple[RoundState, Admitted]:
        attached = attached_snapshots(commit)  # a malformed id: bad_metadata at the door
        try:
            base = self.repo.get_snapshot(self.repo.get_commit(state.base).snapshot)
            snapshot = self.repo.get_snapshot(commit.snapshot)
            fisher, grams = (
                self.repo.get_snapshot(attached[k]) if k in attached else None
                for k in ("Fisher", "Grams")
            )
        except (ObjectNotFoundError, StoreError) as exc:
            raise UpdateRejected("missing_objects", f"commit {commit_id}: {exc}") from None
        try:
            return admit(
                state,
                commit_id,
                commit,
                trust=self.trust,
                seen=lambda oid: any(oid in admitted for admitted in self._admitted_recently),
                base_snapshot=base,
                update_snapshot=snapshot,
                read=self.repo.snapshot_params,
                base_params=self._base_params,
                fisher_snapshot=fisher,
                require_fisher=self._fisher,
                grams_snapshot=grams,
                require_grams=self._grams,
                max_norm=self.config.round.max_norm,
            )
        except (ObjectNotFoundError, StoreError) as exc:
            raise UpdateRejected("missing_objects", f"commit {commit_id}: {exc}") from None

    def _base_params(self, base: ObjectId) -> ParamMap:
        """The round's base model, read (and hash-checked) once per round rather than
        once per submission and again at the merge."""
        cached = self._base_cache
        if cached is None or cached[0] != base:
            cached = self._base_cache = (base, self.repo.read_params(base))
        return cached[1]

    def _refuse(
        self, state: RoundState | None, commit: ObjectId, author: str, error: UpdateRejected
    ) -> Verdict:
        if state is not None and not self._closing:  # a closing round's record is written
            rejection = Rejected(_key_id(author), commit, error.reason, error.detail)
            self._state = reject(state, rejection)
        self.observer.rejected(error.reason)
        return Verdict(False, error.reason, error.detail)

    def _close(self, state: RoundState, now: float) -> RoundReport:
        """Merge ``state``'s updates and record the round (outside the lock: ``_closing``
        keeps every other thread from admitting to, or closing, this round meanwhile)."""
        started = time.perf_counter()
        base = self._base_params(state.base)
        updates = [admitted_update(self.repo, a, self.strategy.spec) for a in state.admitted]
        result = merge_round(
            state, base, updates, self.strategy, self._strategy_state, closed_at=now
        )
        message = f"round {state.number}: merge {len(updates)} updates with {self.strategy.spec}"
        oid = record_merge(
            self.repo,
            state,
            result,
            signer=self.signer,
            branch=self.config.branch,
            message=message,
        )
        metadata = result.metadata
        aggregation = time.perf_counter() - started
        report = RoundReport(
            number=state.number,
            commit=oid,
            base=state.base,
            participants=tuple(sorted(state.admitted, key=lambda a: a.commit)),
            rejected=dict(state.rejections_by_reason),
            metrics=metadata["round"]["metrics"],
            interference_score=metadata["round"]["interference"].get("score"),
            duration_seconds=now - state.opened_at,
            aggregation_seconds=aggregation,
        )
        with self._lock:
            self._strategy_state = result.strategy_state
            self._state = None
            self._base_cache = None  # the next round has another base
            if state.number < self.config.rounds:
                self._admitted_recently.append(set())
                self._state = open_round(
                    state.number + 1, oid, self.config.round, self.fleet_size, self.clock()
                )
        return report
