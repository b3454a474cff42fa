"""The Coordinator and Participants in one process: whole rounds, restarts, deadlines, sync."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedvc.coordinator import (
    REPLAY_MEMORY,
    Coordinator,
    CoordinatorConfig,
    RoundLog,
)
from fedvc.merge.base import uses_fisher
from fedvc.merge.registry import make
from fedvc.objects import ObjectId
from fedvc.participant import Participant, TaskError, TrainResult
from fedvc.replay import replay_history
from fedvc.repo import Repository
from fedvc.round import ROUND_KEY, RoundConfig, RoundError, UpdateRejected
from fedvc.signing import SigningKey
from fedvc.store.base import CorruptObjectError
from fedvc.tensors import ParamMap
from fedvc.transport import Finished, InProcessLink, RoundOffer, Wait, WireObject
from fedvc.trust import TrustStore
from fedvc.verify import verify

SERVER = SigningKey.from_seed(bytes([9]) * 32)
CLIENTS = [SigningKey.from_seed(bytes([10 + i]) * 32) for i in range(3)]
TRUST = TrustStore(k.public_key for k in CLIENTS)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Shift:
    """Moves every tensor by ``delta`` (plus the round number, so rounds differ)."""

    def __init__(self, delta: float, *, fisher: bool = False) -> None:
        self.delta = delta
        self.fisher = fisher
        self.calls = 0

    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult:
        self.calls += 1
        step = self.delta * config["round"]
        new = {k: (v + step).astype(v.dtype) for k, v in params.items()}
        fisher = {k: np.ones_like(v) for k, v in params.items()} if self.fisher else None
        return TrainResult(
            new,
            examples=10 * int(self.delta),
            metrics={"loss": 1 / config["round"]},
            fisher=fisher,
        )


def make_repo(path: Path | None = None, clock: Clock | None = None) -> Repository:
    clock = clock or Clock()
    repo = Repository.init(path, clock=clock) if path else Repository.memory(clock=clock)
    initial = {
        "layer.weight": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        "layer.bias": np.zeros(3, np.float32),
    }
    repo.commit_params(initial, "initial model", signer=SERVER)
    return repo


def coordinator(
    repo: Repository,
    *,
    rounds: int = 2,
    strategy: str = "fedavg",
    clock: Clock | None = None,
    events: RoundLog | None = None,
    **round_config: Any,
) -> Coordinator:
    round_config.setdefault("min_clients", 3)
    return Coordinator(
        repo,
        make(strategy),  # type: ignore[arg-type]
        trust=TRUST,
        signer=SERVER,
        config=CoordinatorConfig(rounds=rounds, round=RoundConfig(**round_config)),
        clock=clock or Clock(),
        observer=events,
    )


def participants(link: Any, *, fisher: bool = False) -> list[Participant]:
    return [
        Participant(link, Shift(i + 1.0, fisher=fisher), key, Repository.memory(clock=Clock()))
        for i, key in enumerate(CLIENTS)
    ]


def run_round(people: list[Participant]) -> None:
    for person in people:
        result = person.step()
        assert not isinstance(result, (Wait, Finished)), result
        assert result.verdict.admitted, result.verdict


def test_rounds_end_as_signed_octopus_merges_that_verify(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    events = RoundLog()
    coord = coordinator(repo, events=events)
    people = participants(coord)
    run_round(people)
    run_round(people)
    assert coord.finished and isinstance(people[0].step(), Finished)
    history = repo.log("main", first_parent=True)
    merges = [c for _, c in history if len(c.parents) > 1]
    assert [c.metadata[ROUND_KEY] for c in merges] == [2, 1]
    for merge in merges:
        assert len(merge.parents) == 4 and merge.author == SERVER.public_key.hex()
        record = merge.metadata["round"]
        assert [p["commit"] for p in record["participants"]] == sorted(merge.parents[1:])
        assert record["examples"] == 10 + 20 + 30 and record["strategy"]["name"] == "fedavg"
    # FedAvg weights by examples: round r moves by r * (1*10 + 2*20 + 3*30) / 60 = 7r/3
    moved = repo.read_params("main")["layer.bias"]
    np.testing.assert_allclose(moved, (7 / 3) * (1 + 2), rtol=1e-5)
    report = verify(repo, "main", trust=TRUST.with_key(SERVER.public_key))
    assert report.ok and report.signed == report.commits
    assert [r.number for r in events.reports] == [1, 2] and len(events.admitted_updates) == 6
    assert events.seen == {str(k.key_id) for k in CLIENTS}
    assert events.reports[0].metrics == {"loss": 1.0}


def test_a_restarted_coordinator_continues_without_losing_or_repeating_a_round(
    tmp_path: Path,
) -> None:
    """Three rounds in one go and three rounds with a restart after every round give the
    same history, bit for bit, even for a strategy with state (FedAdam's moments)."""
    tips = []
    for restart in (False, True):
        clock = Clock()
        repo = make_repo(tmp_path / str(restart), clock)
        coord = coordinator(repo, rounds=3, strategy="fedadam", clock=clock)
        link = InProcessLink(coord)
        people = participants(link)
        for _ in range(3):
            if restart:
                repo.close()
                repo = Repository.open(tmp_path / str(restart), clock=clock)
                coord = coordinator(repo, rounds=3, strategy="fedadam", clock=clock)
                link._coordinator = coord
            run_round(people)
        assert coord.finished
        tips.append(repo.refs.get_ref("refs/heads/main"))
        rounds = [c.metadata.get(ROUND_KEY) for _, c in repo.log("main", first_parent=True)]
        assert rounds == [3, 2, 1, None]
    assert tips[0] == tips[1]


def test_an_update_admitted_before_a_crash_is_submitted_again_not_retrained() -> None:
    repo = make_repo()
    coord = coordinator(repo)
    (alice, *_) = people = participants(coord)
    first = alice.step()
    restarted = coordinator(repo)  # the round had not closed: its admissions are gone
    for person in people:
        person.link = restarted
    again = alice.step()
    assert not isinstance(first, (Wait, Finished)) and not isinstance(again, (Wait, Finished))
    assert again.commit == first.commit and again.verdict.admitted
    assert alice.task.calls == 1  # type: ignore[attr-defined]


def test_waits_and_stragglers() -> None:
    repo = make_repo()
    coord = coordinator(repo, min_clients=2, max_clients=2)
    a, b, c = participants(coord)
    offer_a = coord.next_round(a.key_id)
    assert isinstance(offer_a, RoundOffer) and offer_a.number == 1
    assert isinstance(coord.next_round(b.key_id), RoundOffer)
    full = coord.next_round(c.key_id)
    assert isinstance(full, Wait) and "full" in full.reason
    straggler = a.train(offer_a)
    run_round([b])
    a.upload(straggler)
    assert coord.next_round(a.key_id) == offer_a  # asking again keeps a's place
    assert isinstance(coord.next_round(b.key_id), Wait)  # b's update is in
    assert coord.submit(1, straggler).admitted  # closes round 1
    late = b.train(RoundOffer(1, offer_a.base, {}, 0.0))
    b.upload(late)
    verdict = coord.submit(1, late)
    assert (verdict.admitted, verdict.reason) == (False, "round_closed")


def test_deadline_closes_with_a_quorum_and_frees_dead_clients_places() -> None:
    clock = Clock()
    repo = make_repo(clock=clock)
    events = RoundLog()
    coord = coordinator(
        repo, clock=clock, events=events, min_clients=2, max_clients=3, deadline_seconds=60
    )
    a, b, c = participants(coord)
    assert isinstance(coord.next_round(c.key_id), RoundOffer)  # c takes a place, then dies
    run_round([a])
    clock.now += 61
    assert coord.tick() is None  # one update is below the quorum of two: extended
    state = coord.state
    assert state is not None and state.assigned == {a.key.key_id}
    assert state.deadline == clock.now + 60
    run_round([b])  # a place is free again; two updates but the target is three
    assert coord.tick() is None
    clock.now += 61
    report = coord.tick()
    assert report is not None and len(report.participants) == 2
    assert report.duration_seconds == pytest.approx(122)


def test_rejections_are_counted_recorded_and_do_not_disturb_the_round() -> None:
    repo = make_repo()
    events = RoundLog()
    coord = coordinator(repo, rounds=1, events=events, max_norm=20.0)
    a, b, c = participants(coord)
    offer = coord.next_round(a.key_id)
    assert isinstance(offer, RoundOffer)
    a.task = Shift(100.0)  # moves the model far beyond the norm bound
    far = a.train(offer)
    a.upload(far)
    assert coord.submit(1, far).reason == "norm"
    missing = ObjectId("f" * 64)
    assert coord.submit(1, missing).reason == "missing_objects"
    a.task = Shift(1.0)
    a._last = None
    run_round([a, b, c])
    (merge,) = [commit for _, commit in repo.log("main") if len(commit.parents) > 1]
    record = merge.metadata["round"]
    assert [r["reason"] for r in record["rejected"]] == ["norm", "missing_objects"]
    assert record["rejected"][0]["key_id"] == a.key.key_id  # who sent it, by key id
    assert record["rejection_count"] == 2 and far not in merge.parents
    assert events.rejections == ["norm", "missing_objects"]
    assert verify(repo, "main").ok


def test_unknown_clients_get_no_work_and_are_not_counted_as_clients() -> None:
    events = RoundLog()
    coord = coordinator(make_repo(), events=events)
    stranger = SigningKey.from_seed(bytes([99]) * 32)
    with pytest.raises(UpdateRejected, match="not among"):
        coord.next_round(str(stranger.key_id))
    assert events.rejections == ["unknown_key"] and not events.seen


def test_a_retried_submission_is_admitted_once_and_a_future_round_is_refused() -> None:
    repo = make_repo()
    coord = coordinator(repo)
    alice = participants(coord)[0]
    offer = coord.next_round(alice.key_id)
    assert isinstance(offer, RoundOffer)
    update = alice.train(offer)
    alice.upload(update)
    assert coord.submit(1, update).admitted
    again = coord.submit(1, update)  # the answer was lost and the link tried again
    assert again.admitted and "already" in again.detail
    state = coord.state
    assert state is not None and len(state.admitted) == 1
    assert coord.submit(2, update).reason == "wrong_round"
    blob = repo.get_snapshot(repo.get_commit(update).snapshot).tensors["layer.bias"].blob
    assert coord.submit(1, blob).reason == "missing_objects"  # not a commit


def test_fisher_rounds_ask_for_and_merge_with_the_fisher() -> None:
    assert uses_fisher(make("fisher").spec)  # type: ignore[union-attr]
    repo = make_repo()
    coord = coordinator(repo, rounds=1, strategy="fisher")
    offer = coord.next_round(CLIENTS[0].key_id)
    assert isinstance(offer, RoundOffer) and offer.config == {"fisher": True}
    run_round(participants(coord, fisher=True))
    assert coord.finished
    merge = repo.get_commit(repo.resolve("main"))
    assert all("fisher" in p for p in merge.metadata["round"]["participants"])


def test_a_task_must_return_a_usable_result() -> None:
    coord = coordinator(make_repo(), strategy="fisher")
    (alice, *_) = participants(coord, fisher=False)
    with pytest.raises(TaskError, match="Fisher"):
        alice.step()


class TrainsTheBiasOnly:
    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult:
        return TrainResult({**params, "layer.bias": params["layer.bias"] + 1}, examples=5)


def test_sync_sends_only_what_the_other_side_lacks() -> None:
    repo = make_repo()
    frozen = np.arange(4096, dtype=np.float32)
    repo.commit_params({**repo.read_params("main"), "frozen": frozen}, "add a frozen layer")
    coord = coordinator(repo, rounds=2, min_clients=1, max_clients=1)
    link = InProcessLink(coord)
    alice = Participant(link, TrainsTheBiasOnly(), CLIENTS[0], Repository.memory())
    run_round([alice])
    first_down, first_up = link.bytes_received, link.bytes_sent
    assert first_down > frozen.nbytes and first_up < frozen.nbytes  # the client has it now
    link.bytes_received = 0
    run_round([alice])
    assert 0 < link.bytes_received < frozen.nbytes  # unchanged tensors never travel twice
    round_two_base = alice.repo.read_params(repo.resolve("main~1"))
    assert round_two_base["frozen"].tobytes() == frozen.tobytes()


def test_corrupted_objects_are_refused_on_arrival() -> None:
    coord = coordinator(make_repo())
    payload = b"\x00" * 16
    with pytest.raises(CorruptObjectError, match="damaged or forged"):
        coord.put_objects([WireObject(ObjectId("0" * 64), "blob", payload)])


def test_a_coordinator_needs_an_initial_model_and_a_fleet_big_enough() -> None:
    with pytest.raises(RoundError, match="commit an initial model"):
        coordinator(Repository.memory())
    with pytest.raises(RoundError, match="only 3 keys are trusted"):
        coordinator(make_repo(), min_clients=4)


def test_an_object_damaged_on_the_servers_disk_is_refused_by_the_client(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    coord = coordinator(repo)
    base = repo.get_snapshot(repo.get_commit(repo.resolve("main")).snapshot)
    blob = base.tensors["layer.weight"].blob
    path = tmp_path / ".fedvc" / "objects" / blob[:2] / blob[2:]
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(damaged))
    alice = participants(coord)[0]
    with pytest.raises(CorruptObjectError, match=blob):
        alice.step()
    assert not alice.repo.objects.contains(blob)


def test_clients_are_answered_while_a_round_is_being_merged() -> None:
    import dataclasses
    import threading

    fedavg = make("fedavg")
    entered, release = threading.Event(), threading.Event()

    def slow_merge(base: Any, updates: Any, state: Any) -> Any:
        entered.set()
        assert release.wait(10), "the test never released the merge"
        return fedavg.merge(base, updates, state)  # type: ignore[union-attr]

    repo = make_repo()
    coord = Coordinator(
        repo,
        dataclasses.replace(fedavg, merge=slow_merge),  # type: ignore[type-var]
        trust=TRUST,
        signer=SERVER,
        config=CoordinatorConfig(rounds=2, round=RoundConfig(min_clients=3)),
    )
    a, b, c = participants(coord)
    run_round([a, b])
    offer = coord.next_round(c.key_id)
    assert isinstance(offer, RoundOffer)
    last = c.train(offer)
    c.upload(last)
    verdicts: list[Any] = []
    closer = threading.Thread(target=lambda: verdicts.append(coord.submit(1, last)))
    closer.start()
    try:
        assert entered.wait(10)  # the merge has started and is holding on
        waiting = coord.next_round(a.key_id)  # answered at once, not after the merge
        assert isinstance(waiting, Wait) and "being merged" in waiting.reason
        assert coord.submit(1, last).reason == "round_closed"  # nothing enters a closing round
    finally:
        release.set()  # a failed check above must not leave the merge waiting
        closer.join(10)
    assert verdicts[0].admitted and "round_closed" in verdicts[0].extra
    assert isinstance(coord.next_round(a.key_id), RoundOffer)  # round 2 is open


def test_a_round_that_cannot_be_merged_stops_the_coordinator_and_says_why() -> None:
    repo = make_repo()
    coord = coordinator(repo)
    people = participants(coord)
    for person in people[:2]:
        person.step()
    elsewhere = repo.commit_params({"layer.weight": np.ones((3, 4), np.float32)}, "moved")
    # someone else moved main mid-round: recording the merge loses the compare-and-swap
    assert repo.refs.get_ref("refs/heads/main") == elsewhere
    result = people[2].step()
    assert not isinstance(result, (Wait, Finished)) and result.verdict.admitted  # it was
    assert coord.finished and coord.failure is not None
    with pytest.raises(RoundError, match="the coordinator stopped: a round could not be merged"):
        coord.next_round(str(CLIENTS[0].public_key.key_id))
    assert repo.refs.get_ref("refs/heads/main") == elsewhere  # nothing half-written


class ShiftWithGrams(Shift):
    """Shift, sending a Gram for its one linear layer: the identity scaled by ``delta²``,
    so that it weighs the client differently from its example count (10·delta)."""

    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult:
        result = super().train(params, config)
        grams = {"layer.weight": self.delta**2 * np.eye(5)} if config.get("grams") else None
        return TrainResult(result.params, result.examples, result.metrics, grams=grams)


def test_regmean_rounds_carry_each_clients_grams_to_the_merge(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    coord = coordinator(repo, rounds=1, strategy="regmean")
    people = [
        Participant(coord, ShiftWithGrams(i + 1.0), key, Repository.memory(clock=Clock()))
        for i, key in enumerate(CLIENTS)
    ]
    run_round(people)
    merge = repo.get_commit(repo.resolve("main"))
    record = merge.metadata["round"]
    assert (
        all("grams" in p for p in record["participants"])
        and record["strategy"]["name"] == "regmean"
    )
    # Grams c²·I weight each client's layer by c²: a shift of (1·1 + 4·2 + 9·3) / 14, where
    # weighting by example count (FedAvg) would give (1·1 + 2·2 + 3·3) / 6
    np.testing.assert_allclose(repo.read_params("main")["layer.bias"], 36 / 14, rtol=1e-6)
    report = verify(repo, "main", trust=TRUST.with_key(SERVER.public_key))
    assert report.ok and all(r.ok for r in replay_history(repo, "main"))
    stingy = coordinator(make_repo(), rounds=1, strategy="regmean")
    with pytest.raises(TaskError, match="config grams = true"):
        participants(stingy)[0].step()  # a task that sends no Grams


def test_replays_are_named_for_the_rounds_remembered_and_refused_after() -> None:
    """The coordinator remembers REPLAY_MEMORY rounds of admitted updates (bounded memory);
    an update resent from further back is still refused, as being for a past round."""
    repo = make_repo()
    rounds = REPLAY_MEMORY + 2
    coord = coordinator(repo, rounds=rounds + 1)
    people = participants(coord)
    for _ in range(rounds):
        run_round(people)
    merges = [c for _, c in reversed(repo.log("main", first_parent=True)) if len(c.parents) > 1]
    assert len(merges) == rounds
    open_round = rounds + 1
    oldest, latest = merges[0].parents[1], merges[-1].parents[1]
    assert coord.submit(open_round, latest).reason == "replay"
    forgotten = coord.submit(open_round, oldest)
    assert (forgotten.admitted, forgotten.reason) == (False, "wrong_round")
    assert "trained for round 1" in forgotten.detail
