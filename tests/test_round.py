"""fedvc.round and fedvc.admission: the pure rules of one round and its door, checked
without a coordinator or clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from fedvc.admission import admit
from fedvc.merge.registry import make
from fedvc.objects import ObjectId
from fedvc.repo import Repository
from fedvc.round import (
    MAX_RECORDED_REJECTIONS,
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
    weighted_metrics,
)
from fedvc.round_store import attached_snapshots
from fedvc.signing import KeyId, SigningKey
from fedvc.trust import TrustStore

ALICE = SigningKey.from_seed(bytes([1]) * 32)
BOB = SigningKey.from_seed(bytes([2]) * 32)
MALLORY = SigningKey.from_seed(bytes([66]) * 32)
TRUST = TrustStore([ALICE.public_key, BOB.public_key])


def test_target_is_the_fraction_of_the_fleet_clamped_to_the_bounds() -> None:
    config = RoundConfig(min_clients=2, max_clients=5, fraction=0.5)
    assert [config.target(n) for n in (1, 4, 7, 100)] == [2, 2, 4, 5]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"min_clients": 0}, "1 ≤ min ≤ max"),
        ({"min_clients": 3, "max_clients": 2}, "1 ≤ min ≤ max"),
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": float("nan")}, "fraction"),
        ({"deadline_seconds": -1.0}, "deadline_seconds"),
        ({"max_norm": 0.0}, "max_norm"),
    ],
)
def test_bad_round_config_names_the_setting(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(RoundError, match=words):
        RoundConfig(**kwargs)


def test_assign_fills_places_then_refuses() -> None:
    state = open_round(1, ObjectId("a" * 64), RoundConfig(min_clients=2, max_clients=2), 10, 0.0)
    state = assign(assign(state, KeyId("k1")), KeyId("k2"))
    assert assign(state, KeyId("k1")) is state  # asking again keeps the place
    with pytest.raises(RoundError, match="full"):
        assign(state, KeyId("k3"))


def _admitted(key: str) -> Admitted:
    return Admitted(ObjectId(key * 64), KeyId(key), 1, {}, None)


def test_ready_at_target_or_at_deadline_with_quorum() -> None:
    config = RoundConfig(min_clients=1, max_clients=3, deadline_seconds=10)
    state = open_round(1, ObjectId("a" * 64), config, 3, now=100.0)
    assert state.deadline == 110.0 and state.target == 3
    one = RoundState(**{**state.__dict__, "admitted": (_admitted("b"),)})
    assert not ready(one, config, 105.0) and ready(one, config, 110.0)
    assert not ready(state, config, 500.0)  # no quorum, however late


def test_extend_frees_places_of_clients_that_sent_nothing() -> None:
    config = RoundConfig(min_clients=2, max_clients=2, deadline_seconds=10)
    state = open_round(1, ObjectId("a" * 64), config, 2, now=0.0)
    state = assign(assign(state, KeyId("b")), KeyId("c"))
    state = RoundState(**{**state.__dict__, "admitted": (_admitted("b"),)})
    assert extend(state, config, 5.0) is state  # before the deadline nothing changes
    later = extend(state, config, 12.0)
    assert later.assigned == {"b"} and later.deadline == 22.0
    assert assign(later, KeyId("d")).assigned == {"b", "d"}


def test_rejections_are_counted_beyond_the_recorded_ones() -> None:
    state = open_round(1, ObjectId("a" * 64), RoundConfig(), 1, 0.0)
    for i in range(MAX_RECORDED_REJECTIONS + 5):
        state = reject(state, Rejected("k", str(i), "norm", "too far"))
    state = reject(state, Rejected("k", "late", "wrong_base", "old base"))
    assert len(state.rejected) == MAX_RECORDED_REJECTIONS
    assert state.rejection_count == MAX_RECORDED_REJECTIONS + 6
    assert state.rejections_by_reason == {"norm": MAX_RECORDED_REJECTIONS + 5, "wrong_base": 1}


class Door:
    """A base commit in a memory repository, and a way to build and admit updates to it."""

    def __init__(self, *, max_norm: float | None = None) -> None:
        self.repo = Repository.memory(clock=lambda: 1_700_000_000)
        self.base = self.repo.commit_params(
            {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}, "base"
        )
        config = RoundConfig(max_clients=5)
        state = open_round(4, self.base, config, 5, 0.0)
        self.state = assign(assign(state, ALICE.key_id), BOB.key_id)
        self.max_norm = max_norm
        self.seen: set[ObjectId] = set()

    def update(
        self,
        key: SigningKey = ALICE,
        *,
        shift: float = 0.1,
        params: Mapping[str, np.ndarray] | None = None,
        meta: Mapping[str, Any] | None = None,
        parents: list[ObjectId] | None = None,
        fisher: Mapping[str, np.ndarray] | None = None,
        grams: Mapping[str, np.ndarray] | None = None,
    ) -> ObjectId:
        base = self.repo.read_params(self.base)
        params = params or {k: v + shift for k, v in base.items()}
        metadata: dict[str, Any] = {ROUND_KEY: 4, "examples": 10, "metrics": {"loss": 0.5}}
        if fisher is not None:
            metadata["fisher"] = self.repo.write_snapshot(fisher)
        if grams is not None:
            metadata["grams"] = self.repo.write_snapshot(grams)
        metadata.update(meta or {})
        return self.repo.write_commit(
            self.repo.write_snapshot(params),
            parents=[self.base] if parents is None else parents,
            metadata=metadata,
            signer=key,
        )

    def admit(
        self, oid: ObjectId, *, require_fisher: bool = False, require_grams: bool = False
    ) -> RoundState:
        commit = self.repo.get_commit(oid)
        attached = attached_snapshots(commit)  # as the coordinator reads it
        fisher, grams = attached.get("Fisher"), attached.get("Grams")
        state, admitted = admit(
            self.state,
            oid,
            commit,
            trust=TRUST,
            seen=self.seen.__contains__,
            base_snapshot=self.repo.get_snapshot(self.repo.get_commit(self.base).snapshot),
            update_snapshot=self.repo.get_snapshot(commit.snapshot),
            read=self.repo.snapshot_params,
            base_params=self.repo.read_params,
            fisher_snapshot=None if fisher is None else self.repo.get_snapshot(fisher),
            require_fisher=require_fisher,
            grams_snapshot=None if grams is None else self.repo.get_snapshot(grams),
            require_grams=require_grams,
            max_norm=self.max_norm,
        )
        assert admitted.commit == oid and state.admitted[-1] == admitted
        self.state = state
        return state


def test_a_good_update_is_admitted_with_what_its_commit_says() -> None:
    door = Door()
    state = door.admit(door.update(ALICE))
    (admitted,) = state.admitted
    assert admitted.key_id == ALICE.key_id and admitted.examples == 10
    assert admitted.metrics == {"loss": 0.5} and admitted.fisher is None


def _rejected(door: Door, oid: ObjectId, reason: str, **kwargs: Any) -> str:
    with pytest.raises(UpdateRejected) as caught:
        door.admit(oid, **kwargs)
    assert caught.value.reason == reason
    return caught.value.detail


def test_unknown_key_and_unsigned_and_forged_signature() -> None:
    door = Door()
    assert "not among" in _rejected(door, door.update(MALLORY), "unknown_key")
    unsigned = door.repo.write_commit(
        door.repo.get_commit(door.update()).snapshot,
        parents=[door.base],
        metadata={ROUND_KEY: 4, "examples": 10},
    )
    assert "not signed" in _rejected(door, unsigned, "bad_signature")
    good = door.repo.get_commit(door.update())
    forged = dataclasses.replace(good, metadata={**good.metadata, "examples": 10_000})
    forged_id = door.repo.objects.put("commit", forged.encode())
    assert "does not match" in _rejected(door, forged_id, "bad_signature")
    no_point = dataclasses.replace(good, author="f" * 64)  # 64 hex digits, no Ed25519 key
    no_point_id = door.repo.objects.put("commit", no_point.encode())
    assert "is not a key" in _rejected(door, no_point_id, "bad_signature")


def test_round_base_place_duplicate_and_replay() -> None:
    door = Door()
    _rejected(door, door.update(meta={ROUND_KEY: 3}), "wrong_round")
    other_base = door.repo.commit_params({"w": np.ones((2, 3), np.float32)}, "elsewhere")
    _rejected(door, door.update(parents=[other_base]), "wrong_base")
    _rejected(door, door.update(parents=[door.base, other_base]), "wrong_base")
    trusted_but_unassigned = Door()
    trusted_but_unassigned.state = open_round(4, trusted_but_unassigned.base, RoundConfig(), 5, 0)
    _rejected(trusted_but_unassigned, trusted_but_unassigned.update(ALICE), "not_assigned")
    first = door.update(ALICE)
    door.admit(first)
    _rejected(door, first, "replay")
    _rejected(door, door.update(ALICE, shift=0.2), "duplicate")
    door.seen.add(door.update(BOB))
    _rejected(door, door.update(BOB), "replay")


@pytest.mark.parametrize(
    "params, words",
    [
        ({"w": np.zeros((2, 3), np.float32)}, "missing ['b']"),
        ({"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}, "float32[2, 3]"),
        ({"w": np.zeros((2, 3), np.float64), "b": np.zeros(3, np.float32)}, "got float64"),
        (
            {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32), "x": np.ones(1)},
            "unexpected ['x']",
        ),
    ],
)
def test_structure_must_match_the_base(params: dict[str, np.ndarray], words: str) -> None:
    door = Door()
    assert words in _rejected(door, door.update(params=params), "structure")


def test_nan_inf_and_norm_bound() -> None:
    door = Door(max_norm=1.0)
    nan = {"w": np.full((2, 3), np.nan, np.float32), "b": np.zeros(3, np.float32)}
    assert "'w'" in _rejected(door, door.update(params=nan), "not_finite")
    inf_fisher = {"w": np.full((2, 3), np.inf, np.float32), "b": np.zeros(3, np.float32)}
    assert "Fisher" in _rejected(door, door.update(fisher=inf_fisher), "not_finite")
    negative = {"w": np.full((2, 3), -1.0, np.float32), "b": np.zeros(3, np.float32)}
    assert "negative" in _rejected(door, door.update(fisher=negative), "bad_metadata")
    assert "above the bound 1" in _rejected(door, door.update(shift=1.0), "norm")
    door.admit(door.update(shift=0.1))  # sqrt(9 * 0.01) ≈ 0.3 is within the bound


@pytest.mark.parametrize(
    "meta, words",
    [
        ({"examples": 0}, "positive integer"),
        ({"examples": True}, "positive integer"),
        ({"examples": "10"}, "positive integer"),
        ({"metrics": {"loss": "low"}}, "finite numbers"),
        ({"metrics": [1]}, "finite numbers"),
        ({"fisher": 7}, "snapshot id"),
        ({"fisher": "..//dev/zero"}, "snapshot id (64 hex digits), got '..//dev/zero'"),
        ({"fisher": ""}, "snapshot id"),
        ({"grams": "nope"}, "metadata 'grams' must be a snapshot id"),
    ],
)
def test_malformed_metadata(meta: dict[str, Any], words: str) -> None:
    door = Door()
    assert words in _rejected(door, door.update(meta=meta), "bad_metadata")


def test_a_fisher_round_requires_a_fisher() -> None:
    door = Door()
    assert "Fisher" in _rejected(door, door.update(), "bad_metadata", require_fisher=True)
    ones = {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)}
    (admitted,) = door.admit(door.update(fisher=ones), require_fisher=True).admitted
    assert admitted.fisher is not None


def test_a_fisher_may_have_another_floating_dtype_but_not_another_shape_or_kind() -> None:
    """estimate_fisher writes float32 for every tensor (integer buffers too)."""
    door = Door()
    wide = {"w": np.ones((2, 3), np.float64), "b": np.ones(3, np.float64)}
    assert door.admit(door.update(fisher=wide), require_fisher=True).admitted[-1].fisher
    counts = {"w": np.ones((2, 3), np.int64), "b": np.ones(3, np.float32)}
    words = _rejected(door, door.update(BOB, fisher=counts), "structure", require_fisher=True)
    assert "Fisher tensor 'w'" in words
    flat = {"w": np.ones(6, np.float32), "b": np.ones(3, np.float32)}
    _rejected(door, door.update(BOB, fisher=flat), "structure", require_fisher=True)


def test_grams_belong_to_2d_weights_and_cover_their_inputs_and_bias() -> None:
    """Door's base: w (2, 3) and b (3,). "w" takes 3 inputs (b is not its bias by name)."""
    door = Door()
    assert "grams" in _rejected(door, door.update(), "bad_metadata", require_grams=True)
    (admitted,) = door.admit(door.update(grams={"w": np.eye(3)}), require_grams=True).admitted
    assert admitted.grams is not None
    for bad, words in (({"b": np.eye(3)}, "not a 2-D floating weight"), ({"w": np.eye(4)}, "3x3")):
        assert words in _rejected(door, door.update(BOB, grams=bad), "structure")
    nan = {"w": np.full((3, 3), np.nan)}
    _rejected(door, door.update(BOB, grams=nan), "not_finite")


def test_merge_round_is_independent_of_arrival_order_and_describes_the_round() -> None:
    from fedvc.merge.base import Update

    door = Door()
    a, b = door.update(ALICE, shift=0.1), door.update(BOB, shift=0.4)
    door.admit(a)
    door.admit(b)
    base = door.repo.read_params(door.base)
    updates = [Update(door.repo.read_params(oid), weight=10.0, client=oid) for oid in (a, b)]
    strategy = make("fedavg")
    forward = merge_round(door.state, base, updates, strategy, {}, closed_at=5.0)
    backward = merge_round(door.state, base, updates[::-1], strategy, {}, closed_at=5.0)
    for name in base:
        assert forward.params[name].tobytes() == backward.params[name].tobytes()
        np.testing.assert_allclose(forward.params[name], 0.25, rtol=1e-6)
    assert forward.metadata == backward.metadata
    record = forward.metadata["round"]
    assert forward.metadata[ROUND_KEY] == 4
    assert [p["commit"] for p in record["participants"]] == sorted([a, b])
    assert record["strategy"] == {"name": "fedavg", "params": {}}
    assert record["examples"] == 20 and record["metrics"] == {"loss": 0.5}
    assert 0 <= record["interference"]["score"] <= 1


def test_weighted_metrics_weigh_by_examples_over_reporting_clients() -> None:
    def one(examples: int, metrics: dict[str, float]) -> Admitted:
        return Admitted(ObjectId("a" * 64), KeyId("k"), examples, metrics, None)

    merged = weighted_metrics([one(1, {"acc": 1.0, "loss": 2.0}), one(3, {"acc": 0.0})])
    assert merged == {"acc": 0.25, "loss": 2.0}
