"""The door of a round: every check an update commit passes before it counts.

``admit`` runs the checks cheapest first (signer, replay, round, base, place in the
round, metadata, tensor layout, values, distance from the base) and returns the state
that counts the update, or raises ``UpdateRejected`` naming the first check that failed.
Behind the door merging is total: a strategy never sees a NaN, a missing tensor or an
unsigned update. The layout and value checks are public so the Flower strategy, whose
updates arrive as arrays rather than commits, applies the very same rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from fedvc.diff import distance as param_distance
from fedvc.merge.regmean import gram_problem
from fedvc.objects import Commit, ObjectId, Snapshot, is_object_id
from fedvc.round import ROUND_KEY, Admitted, RoundState, UpdateRejected
from fedvc.signing import PublicKey, SigningError, commit_signature_valid
from fedvc.tensors import ParamMap, dtype_name, name_mismatch
from fedvc.trust import TrustStore


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
    base_params: Callable[[ObjectId], ParamMap],
    fisher_snapshot: Snapshot | None,
    require_fisher: bool = False,
    grams_snapshot: Snapshot | None = None,
    require_grams: bool = False,
    max_norm: float | None = None,
) -> tuple[RoundState, Admitted]:
    """Check one update commit at the door; return the state that counts it.

    Raises ``UpdateRejected`` naming the first check that failed. The checks run cheapest
    first, and no tensor is read before the commit's identity, round and base are right.
    ``seen(commit_id)`` says whether the commit was admitted before (replay protection
    across rounds); ``read`` loads a snapshot's tensors (memory-mapped from the store);
    ``base_params(base)`` gives the base model, which callers read once per round.
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
    examples, metrics = _update_metadata(commit_id, meta)
    fisher_id, grams_id = (_attached_id(commit_id, meta, k) for k in ("fisher", "grams"))
    if require_fisher and fisher_snapshot is None:
        raise UpdateRejected(
            "bad_metadata",
            f"this round merges with Fisher information; commit {commit_id} carries none "
            "(metadata 'fisher' must name the snapshot of its diagonal Fisher)",
        )
    if require_grams and grams_snapshot is None:
        raise UpdateRejected(
            "bad_metadata",
            f"this round merges with each layer's input Gram matrix; commit {commit_id} "
            "carries none (metadata 'grams' must name the snapshot of its Grams)",
        )
    base_layout = snapshot_layout(base_snapshot)
    check_structure("model", base_layout, snapshot_layout(update_snapshot))
    params = read(update_snapshot)
    check_values("model", params)
    if fisher_snapshot is not None:
        check_structure("Fisher", base_layout, snapshot_layout(fisher_snapshot), fisher=True)
        check_values("Fisher", read(fisher_snapshot), fisher=True)
    if grams_snapshot is not None:
        check_grams(base_layout, snapshot_layout(grams_snapshot))
        check_values("Grams", read(grams_snapshot))
    if max_norm is not None:
        distance = param_distance(base_params(state.base), params)
        if not distance <= max_norm:
            raise UpdateRejected(
                "norm",
                f"the update moves the model by L2 {distance:.6g}, above the bound {max_norm:g}",
            )
    admitted = Admitted(commit_id, key.key_id, examples, metrics, fisher_id, grams_id)
    return replace(state, admitted=(*state.admitted, admitted)), admitted


def _signer(commit: Commit, trust: TrustStore) -> PublicKey:
    if commit.author is None or commit.signature is None:
        raise UpdateRejected("bad_signature", "the update commit is not signed")
    try:
        key = PublicKey.from_hex(commit.author)
    except SigningError as exc:  # 64 hex digits that are no Ed25519 point
        raise UpdateRejected("bad_signature", f"the update's author is not a key: {exc}") from None
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


def _update_metadata(commit_id: ObjectId, meta: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
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
    return examples, {k: float(v) for k, v in metrics.items()}


def _attached_id(commit_id: ObjectId, meta: Mapping[str, Any], key: str) -> ObjectId | None:
    """The snapshot id an update names under ``key`` ("fisher", "grams"), if any."""
    value = meta.get(key)
    if value is not None and not is_object_id(value):
        raise UpdateRejected(
            "bad_metadata",
            f"commit {commit_id}: metadata {key!r} must be a snapshot id (64 hex digits), "
            f"got {str(value)[:80]!r}",
        )
    return value


Layout = Mapping[str, tuple[str, tuple[int, ...]]]
"""Tensor name → (dtype name, shape): what two models must share to be merged."""


def snapshot_layout(snapshot: Snapshot) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {name: (e.dtype, e.shape) for name, e in snapshot.tensors.items()}


def params_layout(params: ParamMap) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {name: (dtype_name(a.dtype), tuple(a.shape)) for name, a in params.items()}


def check_structure(what: str, base: Layout, other: Layout, *, fisher: bool = False) -> None:
    """Raise ``UpdateRejected("structure")`` unless ``other`` has the base's tensors exactly.

    A ``fisher`` has the base's names and shapes but may have another floating dtype
    (``estimate_fisher`` writes float32 for every tensor, integer buffers included, as
    the Fisher merge expects).
    """
    if names := name_mismatch(base, other):
        raise UpdateRejected(
            "structure", f"the {what}'s tensor names differ from the base: {names}"
        )
    for name, (dtype, shape) in base.items():
        got_dtype, got_shape = other[name]
        if fisher and got_shape == shape and got_dtype.startswith("float"):
            continue
        if (got_dtype, got_shape) != (dtype, shape):
            raise UpdateRejected(
                "structure",
                f"{what} tensor {name!r}: expected {dtype}{list(shape)} like the base, got "
                f"{got_dtype}{list(got_shape)}",
            )


def check_grams(base: Layout, grams: Layout) -> None:
    """Raise ``UpdateRejected("structure")`` unless every Gram belongs to a 2-D floating
    weight of the base and is square over its inputs (plus one for its bias, if any)."""
    for name, (dtype, shape) in grams.items():
        problem = gram_problem(name, base, dtype, shape)
        if problem is not None:
            raise UpdateRejected("structure", problem)


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
