"""One federated round as pure transitions: open, assign, admit, ready, close.

A round is a branch-and-merge. It opens on a base commit (the tip of ``main``); the
clients it assigns branch from that base and return signed update commits;
``fedvc.admission.admit`` checks each update once, at the door, and either counts it or
rejects it with a reason that never disturbs the round; when enough have arrived (or the deadline passed with at
least the minimum) the round is ready and ``merge_round`` turns the admitted updates into
the merged model and the metadata its octopus merge commit records.

Everything here is a function of its arguments (time comes in as ``now``): the
``Coordinator`` holds the one mutable ``RoundState`` and the store, so these rules can be
tested without threads, sockets or clocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedvc.errors import FedvcError
from fedvc.interference import interference_report
from fedvc.merge.base import MergeStrategy, State, Update, ordered
from fedvc.objects import ObjectId, validate_object_id
from fedvc.signing import KeyId
from fedvc.tensors import ParamMap

ROUND_KEY = "fedvc.round"
"""Metadata key holding a commit's round number: on a merge, the round it closed; on an
update, the round it was trained for. A restarted coordinator reads it from ``main``."""

REJECTION_REASONS = (
    "unknown_key",  # the signer is not a trusted client
    "wrong_key",  # a trusted client asked for work under another client's key
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
    grams: ObjectId | None = None  # snapshot id of its layers' input Grams, when it sent them

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "commit": self.commit,
            "key_id": self.key_id,
            "examples": self.examples,
            "metrics": dict(self.metrics),
        }
        if self.fisher is not None:
            record["fisher"] = self.fisher
        if self.grams is not None:
            record["grams"] = self.grams
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Admitted:
        """The participant a merge commit records; ids are checked, since a history read
        back may have been written by anyone."""
        fisher, grams = record.get("fisher"), record.get("grams")
        return cls(
            validate_object_id(record.get("commit"), "participant commit"),
            KeyId(str(record.get("key_id", ""))),
            int(record.get("examples", 0)),
            dict(record.get("metrics", {})),
            None if fisher is None else validate_object_id(fisher, "participant Fisher"),
            None if grams is None else validate_object_id(grams, "participant Grams"),
        )


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
    """The first ``MAX_RECORDED_REJECTIONS`` rejections in full."""
    rejections_by_reason: Mapping[str, int] = field(default_factory=dict)
    """Every rejection, counted by reason, however many there were."""

    @property
    def rejection_count(self) -> int:
        return sum(self.rejections_by_reason.values())

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
    counts = dict(state.rejections_by_reason)
    counts[rejection.reason] = counts.get(rejection.reason, 0) + 1
    return replace(state, rejected=kept, rejections_by_reason=counts)


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
