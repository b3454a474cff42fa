"""One federated round as pure transitions: open, assign, admit, ready, close.

A round is a branch-and-merge. It opens on a base commit (the tip of ``main``); the
clients it assigns branch from that base and return signed update commits; ``admit``
checks each update once, at the door, and either counts it or rejects it with a reason
that never disturbs the round; when enough have arrived (or the deadline passed with at
least the minimum) the round is ready and ``merge_round`` turns the admitted updates into
the merged model and the metadata its octopus merge commit records.

Everything here is a function of its arguments (time comes in as ``now``): the
``Coordinator`` holds the one mutable ``RoundState`` and the store, so these rules can be
tested without threads, sockets or clocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedvc.errors import FedvcError
from fedvc.interference import interference_report
from fedvc.merge.base import MergeStrategy, State, Update, ordered
from fedvc.objects import Commit, ObjectId, Snapshot
from fedvc.signing import KeyId, PublicKey, commit_signature_valid
from fedvc.tensors import ParamMap, dtype_name
from fedvc.trust import TrustStore

ROUND_KEY = "fedvc.round"
"""Metadata key holding a commit's round number: on a merge, the round it closed; on an
update, the round it was trained for. A restarted coordinator reads it from ``main``."""

REJECTION_REASONS = (
    "unknown_key",  # the signer is not a trusted client
    "bad_signature",  # unsigned, or the signature does not match the commit
    "wrong_round",  # trained for another round
    "wrong_base",  # not branched from this round's base
    "not_assigned",  # the client did not take part in this round
    "duplicate",  # this client already has an update in the round
    "replay",  # this very update commit was already admitted (in any round)
    "structure",  # tensor names, shapes or dtypes differ from the base
    "not_finite",  # NaN or Inf in the model or its Fisher
    "norm",  # the update's distance from the base exceeds the bound
    "bad_metadata",  # example count or metrics missing or malformed
    "missing_objects",  # the commit or an object it names is not in the store
    "round_closed",  # arrived after the round closed
)
"""Every reason an update can be rejected for; metrics count rejections by these labels."""

MAX_RECORDED_REJECTIONS = 100
"""A merge commit lists at most this many rejections (and counts all of them), so a
flood of bad submissions cannot grow the history without bound."""


class RoundError(FedvcError):
    """A round cannot do what was asked (a full round, a round already closed)."""


class UpdateRejected(FedvcError):
    """An update failed a check at the door; ``reason`` is one of ``REJECTION_REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REJECTION_REASONS, reason
        super().__init__(f"update rejected ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RoundConfig:
    """How rounds are sized and bounded.

    A round takes ``target`` clients (``fraction`` of the known fleet, clamped to
    ``[min_clients, max_clients]``); it closes as soon as ``target`` updates are admitted,
    or at the deadline with at least ``min_clients``; a deadline reached with fewer is
    extended, and clients that were assigned but sent nothing give their places up.
    ``train`` is passed to every client's task; ``max_norm`` bounds the L2 distance of an
    update from its base (None: unbounded).
    """

    min_clients: int = 1
    max_clients: int = 1_000_000
    fraction: float = 1.0
    deadline_seconds: float = 600.0
    max_norm: float | None = None
    train: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.min_clients <= self.max_clients:
            raise RoundError(
                f"clients per round must satisfy 1 ≤ min ≤ max, got min={self.min_clients}, "
                f"max={self.max_clients}"
            )
        if not (math.isfinite(self.fraction) and 0 < self.fraction <= 1):
            raise RoundError(f"fraction must be in (0, 1], got {self.fraction!r}")
        if not (math.isfinite(self.deadline_seconds) and self.deadline_seconds > 0):
            raise RoundError(
                f"deadline_seconds must be a positive number, got {self.deadline_seconds!r}"
            )
        if self.max_norm is not None and not (math.isfinite(self.max_norm) and self.max_norm > 0):
            raise RoundError(f"max_norm must be a positive number or None, got {self.max_norm!r}")

    def target(self, fleet_size: int) -> int:
        """How many updates close a round early, for a fleet of ``fleet_size`` known clients."""
        wanted = math.ceil(self.fraction * fleet_size)
        return max(self.min_clients, min(self.max_clients, wanted))


@dataclass(frozen=True)
class Admitted:
    """An update counted in a round, with what its signed commit says about itself."""

    commit: ObjectId
    key_id: KeyId
    examples: int
    metrics: Mapping[str, float]
    fisher: ObjectId | None  # snapshot id of the client's diagonal Fisher, when it sent one

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "commit": self.commit,
            "key_id": self.key_id,
            "examples": self.examples,
            "metrics": dict(self.metrics),
        }
        if self.fisher is not None:
            record["fisher"] = self.fisher
        return record


@dataclass(frozen=True)
class Rejected:
    key_id: str
    commit: str
    reason: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {
            "key_id": self.key_id,
            "commit": self.commit,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class RoundState:
    """The one round in progress; every transition returns a new state."""

    number: int
    base: ObjectId
    target: int
    opened_at: float
    deadline: float
    assigned: frozenset[KeyId] = frozenset()
    admitted: tuple[Admitted, ...] = ()
    rejected: tuple[Rejected, ...] = ()
    rejection_count: int = 0

    @property
    def admitted_keys(self) -> frozenset[KeyId]:
        return frozenset(a.key_id for a in self.admitted)

    @property
    def full(self) -> bool:
        """True when every place is taken by a client still expected to send an update."""
        return len(self.assigned) >= self.target


def open_round(
    number: int, base: ObjectId, config: RoundConfig, fleet_size: int, now: float
) -> RoundState:
    """A fresh round ``number`` on ``base``; its deadline counts from ``now``."""
    if number < 1:
        raise RoundError(f"round numbers start at 1, got {number}")
    return RoundState(
        number=number,
        base=base,
        target=config.target(fleet_size),
        opened_at=now,
        deadline=now + config.deadline_seconds,
    )


def assign(state: RoundState, key_id: KeyId) -> RoundState:
    """Give ``key_id`` a place in the round (idempotent for a client already in it)."""
    if key_id in state.assigned:
        return state
    if state.full:
        raise RoundError(
            f"round {state.number} is full ({state.target} clients); ask again for the next round"
        )
    return replace(state, assigned=state.assigned | {key_id})


def ready(state: RoundState, config: RoundConfig, now: float) -> bool:
    """True when the round should close: target reached, or deadline passed with a quorum."""
    count = len(state.admitted)
    return count >= state.target or (now >= state.deadline and count >= config.min_clients)


def extend(state: RoundState, config: RoundConfig, now: float) -> RoundState:
    """Past the deadline without a quorum: free the places of clients that sent nothing
    (they died or straggle) and give the round another deadline."""
    if now < state.deadline or ready(state, config, now):
        return state
    return replace(
        state,
        assigned=state.admitted_keys,
        deadline=now + config.deadline_seconds,
    )


def reject(state: RoundState, rejection: Rejected) -> RoundState:
    """Record a rejection (the first ``MAX_RECORDED_REJECTIONS`` in full, all in the count)."""
    kept = state.rejected
    if len(kept) < MAX_RECORDED_REJECTIONS:
        kept = (*kept, rejection)
    return replace(state, rejected=kept, rejection_count=state.rejection_count + 1)


def admit(
    state: RoundState,
    commit_id: ObjectId,
    commit: Commit,
    *,
    trust: TrustStore,
    seen: Callable[[ObjectId], bool],
    base_snapshot: Snapshot,
    update_snapshot: Snapshot,
    read: Callable[[Snapshot], ParamMap],
    fisher_snapshot: Snapshot | None,
    require_fisher: bool = False,
    max_norm: float | None = None,
) -> tuple[RoundState, Admitted]:
    """Check one update commit at the door; return the state that counts it.

    Raises ``UpdateRejected`` naming the first check that failed. The checks run cheapest
    first, and no tensor is read before the commit's identity, round and base are right.
    ``seen(commit_id)`` says whether the commit was admitted before (replay protection
    across rounds); ``read`` loads a snapshot's tensors (memory-mapped from the store).
    """
    key = _signer(commit, trust)
    if seen(commit_id) or any(a.commit == commit_id for a in state.admitted):
        raise UpdateRejected("replay", f"commit {commit_id} was already admitted")
    meta = commit.metadata
    round_number = meta.get(ROUND_KEY)
    if round_number != state.number:
        raise UpdateRejected(
            "wrong_round",
            f"commit {commit_id} was trained for round {round_number!r}; "
            f"the open round is {state.number}",
        )
    if commit.parents != (state.base,):
        raise UpdateRejected(
            "wrong_base",
            f"commit {commit_id} has parents {list(commit.parents)}; an update must have "
            f"exactly one parent, this round's base {state.base}",
        )
    if key.key_id in state.admitted_keys:
        raise UpdateRejected(
            "duplicate",
            f"client {key.key_id} already has an update in round {state.number}",
        )
    if key.key_id not in state.assigned:
        raise UpdateRejected(
            "not_assigned",
            f"client {key.key_id} has no place in round {state.number}; ask for work first",
        )
    examples, metrics, fisher_id = _update_metadata(commit_id, meta)
    if require_fisher and fisher_snapshot is None:
        raise UpdateRejected(
            "bad_metadata",
            f"this round merges with Fisher information; commit {commit_id} carries none "
            "(metadata 'fisher' must name the snapshot of its diagonal Fisher)",
        )
    base_layout = snapshot_layout(base_snapshot)
    check_structure("model", base_layout, snapshot_layout(update_snapshot))
    params = read(update_snapshot)
    check_values("model", params)
    if fisher_snapshot is not None:
        check_structure("Fisher", base_layout, snapshot_layout(fisher_snapshot))
        check_values("Fisher", read(fisher_snapshot), fisher=True)
    if max_norm is not None:
        distance = _distance(read(base_snapshot), params)
        if not distance <= max_norm:
            raise UpdateRejected(
                "norm",
                f"the update moves the model by L2 {distance:.6g}, above the bound {max_norm:g}",
            )
    admitted = Admitted(commit_id, key.key_id, examples, metrics, fisher_id)
    return replace(state, admitted=(*state.admitted, admitted)), admitted


def _signer(commit: Commit, trust: TrustStore) -> PublicKey:
    if commit.author is None or commit.signature is None:
        raise UpdateRejected("bad_signature", "the update commit is not signed")
    key = PublicKey.from_hex(commit.author)
    if not trust.trusts(key):
        raise UpdateRejected(
            "unknown_key",
            f"key {key.key_id} is not among the coordinator's trusted client keys",
        )
    if not commit_signature_valid(commit):
        raise UpdateRejected(
            "bad_signature", f"the signature does not match the commit for key {key.key_id}"
        )
    return key


def _update_metadata(
    commit_id: ObjectId, meta: Mapping[str, Any]
) -> tuple[int, dict[str, float], ObjectId | None]:
    examples = meta.get("examples")
    if not isinstance(examples, int) or isinstance(examples, bool) or examples < 1:
        raise UpdateRejected(
            "bad_metadata",
            f"commit {commit_id}: metadata 'examples' must be a positive integer "
            f"(the number of training examples), got {examples!r}",
        )
    metrics = meta.get("metrics", {})
    if not isinstance(metrics, Mapping) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in metrics.values()
    ):
        raise UpdateRejected(
            "bad_metadata",
            f"commit {commit_id}: metadata 'metrics' must map names to finite numbers, "
            f"got {metrics!r}",
        )
    fisher = meta.get("fisher")
    if fisher is not None and not isinstance(fisher, str):
        raise UpdateRejected(
            "bad_metadata", f"commit {commit_id}: metadata 'fisher' must be a snapshot id"
        )
    return examples, {k: float(v) for k, v in metrics.items()}, ObjectId(fisher) if fisher else None


Layout = Mapping[str, tuple[str, tuple[int, ...]]]
"""Tensor name → (dtype name, shape): what two models must share to be merged."""


def snapshot_layout(snapshot: Snapshot) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {name: (e.dtype, e.shape) for name, e in snapshot.tensors.items()}


def params_layout(params: ParamMap) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {name: (dtype_name(a.dtype), tuple(a.shape)) for name, a in params.items()}


def check_structure(what: str, base: Layout, other: Layout) -> None:
    """Raise ``UpdateRejected("structure")`` unless ``other`` has the base's tensors exactly."""
    missing = sorted(set(base) - set(other))
    extra = sorted(set(other) - set(base))
    if missing or extra:
        raise UpdateRejected(
            "structure",
            f"the {what}'s tensor names differ from the base: missing {missing[:5]}, "
            f"unexpected {extra[:5]}",
        )
    for name, (dtype, shape) in base.items():
        got_dtype, got_shape = other[name]
        if (got_dtype, got_shape) != (dtype, shape):
            raise UpdateRejected(
                "structure",
                f"{what} tensor {name!r}: expected {dtype}{list(shape)} like the base, got "
                f"{got_dtype}{list(got_shape)}",
            )


def check_values(what: str, params: ParamMap, *, fisher: bool = False) -> None:
    """Raise ``UpdateRejected`` for NaN or Inf, or (a Fisher) negative entries."""
    for name in sorted(params):
        array = params[name]
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise UpdateRejected("not_finite", f"{what} tensor {name!r} holds NaN or Inf")
        if fisher and array.size and array.min() < 0:
            raise UpdateRejected(
                "bad_metadata",
                f"{what} tensor {name!r} has negative entries; a diagonal Fisher is a mean of "
                "squares, never negative",
            )


def _distance(base: ParamMap, params: ParamMap) -> float:
    total = 0.0
    for name in sorted(base):
        if base[name].dtype.kind in "fc":
            diff = params[name].astype(np.float64) - base[name]
            total += float(np.vdot(diff, diff).real)
    return math.sqrt(total)


@dataclass(frozen=True)
class MergeResult:
    """What closing a round produces: the merged model and the merge commit's metadata."""

    params: dict[str, np.ndarray]
    strategy_state: State
    metadata: dict[str, Any]


def merge_round(
    state: RoundState,
    base: ParamMap,
    updates: Sequence[Update],
    strategy: MergeStrategy,
    strategy_state: State,
    *,
    closed_at: float,
) -> MergeResult:
    """Merge the admitted updates (in commit-id order) and describe the round.

    ``updates`` carry the admitted commits' ids as ``client`` and their example counts as
    ``weight``; the same updates give the same bits whatever order they arrived in.
    """
    if not updates:
        raise RoundError(f"round {state.number} has no admitted update to merge")
    updates = ordered(updates)
    report = interference_report(base, updates)
    merged, new_state = strategy.merge(base, updates, strategy_state)
    by_commit = {a.commit: a for a in state.admitted}
    participants = [by_commit[ObjectId(u.client)].to_json() for u in updates]
    metadata = {
        ROUND_KEY: state.number,
        "round": {
            "strategy": strategy.spec.to_json(),
            "participants": participants,
            "examples": sum(p["examples"] for p in participants),
            "metrics": weighted_metrics([by_commit[ObjectId(u.client)] for u in updates]),
            "interference": report.summary(),
            "rejected": [r.to_json() for r in state.rejected],
            "rejection_count": state.rejection_count,
            "opened_at": state.opened_at,
            "closed_at": closed_at,
        },
    }
    return MergeResult(dict(merged), new_state, metadata)


def weighted_metrics(admitted: Sequence[Admitted]) -> dict[str, float]:
    """Each client metric averaged over the clients that report it, weighted by examples."""
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for update in admitted:
        for name, value in update.metrics.items():
            sums[name] = sums.get(name, 0.0) + value * update.examples
            weights[name] = weights.get(name, 0) + update.examples
    return {name: sums[name] / weights[name] for name in sorted(sums)}
