"""Bad input over a real socket: every case is refused with a clear status or verdict,
counted, and leaves the round going (good clients are admitted afterwards and it closes)
and the server's repository verifiable."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from fedvc_client.link import LinkError
from fleet_harness import Fleet, FleetFactory

from fedvc import wire
from fedvc.objects import ObjectId, hash_object
from fedvc.participant import Participant
from fedvc.proto.v1 import fleet_pb2
from fedvc.repo import Repository
from fedvc.round import ROUND_KEY, UpdateRejected
from fedvc.signing import SigningKey
from fedvc.transport import RoundOffer, Verdict, WireObject
from fedvc.verify import verify

OUTSIDER = SigningKey.from_seed(bytes([99]) * 32)


def offer_for(p: Participant) -> RoundOffer:
    offer = p.link.next_round(p.key_id)
    assert isinstance(offer, RoundOffer)
    return offer


def craft(
    p: Participant,
    base: ObjectId,
    *,
    params: dict[str, np.ndarray] | None = None,
    delta: float = 1.0,
    parents: list[ObjectId] | None = None,
    round_number: int = 1,
    signer: SigningKey | None = None,
    **metadata: object,
) -> ObjectId:
    """An update commit in ``p``'s repository, built by hand (any field can be wrong)."""
    p.download(base)
    if params is None:
        params = {k: v + delta for k, v in p.repo.read_params(base).items()}
    meta = {ROUND_KEY: round_number, "examples": 10, "metrics": {"loss": 1.0}, **metadata}
    return p.repo.write_commit(
        p.repo.write_snapshot(params),
        parents=[base] if parents is None else parents,
        metadata=meta,
        signer=signer or p.key,
    )


def send(p: Participant, commit: ObjectId, round_number: int = 1) -> Verdict:
    p.upload(commit)
    return p.link.submit(round_number, commit)


def finish(fleet: Fleet, *participants: Participant) -> None:
    """Good clients take part; the round they complete closes and everything verifies."""
    closed = len(fleet.record.reports)
    for p in participants:
        [done] = p.run(max_rounds=1)
        assert done.verdict.admitted, done.verdict
    assert len(fleet.record.reports) == closed + 1
    assert fleet.repo.refs.get_ref("refs/heads/main") == fleet.record.reports[-1].commit
    report = verify(fleet.repo, "main", trust=fleet.trust())
    assert report.ok, report.problems


def ones(p: Participant, base: ObjectId, value: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, value) for k, v in p.repo.read_params(base).items()}


def wrong_base(p: Participant, base: ObjectId) -> ObjectId:
    p.download(base)
    elsewhere = p.repo.write_commit(p.repo.get_commit(base).snapshot, message="unrelated root")
    return craft(p, base, parents=[elsewhere])


def bad_signature(p: Participant, base: ObjectId) -> ObjectId:
    signed = p.repo.get_commit(craft(p, base))
    other = p.repo.get_commit(craft(p, base, delta=2.0))
    forged = dataclasses.replace(other, signature=signed.signature)
    return p.repo.objects.put("commit", forged.encode())


def nan_model(p: Participant, base: ObjectId) -> ObjectId:
    p.download(base)
    return craft(p, base, params=ones(p, base, np.nan))


def inf_model(p: Participant, base: ObjectId) -> ObjectId:
    p.download(base)
    return craft(p, base, params=ones(p, base, np.inf))


BAD_UPDATES: dict[str, tuple[str, Callable[[Participant, ObjectId], ObjectId]]] = {
    "unknown key": ("unknown_key", lambda p, base: craft(p, base, signer=OUTSIDER)),
    "bad signature": ("bad_signature", bad_signature),
    "wrong base": ("wrong_base", wrong_base),
    "wrong round": ("wrong_round", lambda p, base: craft(p, base, round_number=2)),
    "wrong names": ("structure", lambda p, base: craft(p, base, params={"v": np.zeros(1000)})),
    "wrong shape": (
        "structure",
        lambda p, base: craft(p, base, params={"w": np.zeros(999, np.float32)}),
    ),
    "wrong dtype": ("structure", lambda p, base: craft(p, base, params={"w": np.zeros(1000)})),
    "NaN": ("not_finite", nan_model),
    "Inf": ("not_finite", inf_model),
    "norm above the bound": ("norm", lambda p, base: craft(p, base, delta=10.0)),
    "no examples": ("bad_metadata", lambda p, base: craft(p, base, examples=0)),
}


@pytest.mark.parametrize("case", sorted(BAD_UPDATES))
def test_a_bad_update_is_rejected_and_the_round_goes_on(
    make_fleet: FleetFactory, case: str
) -> None:
    fleet = make_fleet(max_norm=100.0)  # a good client (every weight +1) moves it by 31.6
    a, b = (fleet.participant(k) for k in fleet.keys)
    offer = offer_for(b)
    verdict = send(b, BAD_UPDATES[case][1](b, offer.base))
    reason = BAD_UPDATES[case][0]
    assert (verdict.admitted, verdict.reason) == (False, reason)
    assert verdict.detail and fleet.record.rejections == [reason]
    finish(fleet, b, a)
    assert fleet.record.reports[0].rejected == {reason: 1}


def test_a_replayed_update_is_rejected_in_a_later_round(fleet: Fleet) -> None:
    a, b = (fleet.participant(k) for k in fleet.keys)
    finish(fleet, a, b)
    [replayed] = [u.commit for u in fleet.record.reports[0].participants if u.key_id == b.key_id]
    offer_for(b)
    verdict = b.link.submit(2, replayed)
    assert (verdict.admitted, verdict.reason) == (False, "replay")
    finish(fleet, a, b)
    assert fleet.record.rejections == ["replay"]


def test_a_second_update_from_one_client_is_a_duplicate(fleet: Fleet) -> None:
    a, b = (fleet.participant(k) for k in fleet.keys)
    [first] = b.run(max_rounds=1)
    assert first.verdict.admitted
    base = b.repo.get_commit(first.commit).parents[0]
    verdict = send(b, craft(b, base, delta=2.0))
    assert (verdict.admitted, verdict.reason) == (False, "duplicate")
    assert fleet.record.rejections == ["duplicate"]
    finish(fleet, a)


def test_an_unknown_key_asking_for_work_is_permission_denied(fleet: Fleet) -> None:
    link = fleet.link(signer=OUTSIDER)
    with pytest.raises(UpdateRejected, match="ask the operator") as caught:
        link.next_round(str(OUTSIDER.key_id))
    assert caught.value.reason == "unknown_key"
    with pytest.raises(grpc.RpcError) as raw:
        link.channel.unary_unary(wire.method_path("NextRound"))(
            wire.encode_next_round_request(str(OUTSIDER.key_id)),
            metadata=link.credentials("NextRound"),
        )
    assert raw.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert fleet.servicer.errors["NextRound:PERMISSION_DENIED"] == 2
    finish(fleet, *(fleet.participant(k) for k in fleet.keys))


def test_a_client_cannot_ask_for_work_under_another_clients_key(fleet: Fleet) -> None:
    mine, theirs = fleet.keys
    with pytest.raises(UpdateRejected, match=r"signed by key \w+ but asks for work as key"):
        fleet.link(signer=mine).next_round(str(theirs.key_id))
    assert fleet.coordinator.state is not None and not fleet.coordinator.state.assigned
    finish(fleet, *(fleet.participant(k) for k in fleet.keys))


FLEET_METHODS = ["NextRound", "ListObjects", "GetObjects", "Missing", "PutObjects", "Submit"]


@pytest.mark.parametrize("method", FLEET_METHODS)
def test_a_call_without_valid_credentials_is_unauthenticated(fleet: Fleet, method: str) -> None:
    """No credentials, expired ones, and a signature by another key: each refused before
    the request is read (a valid request, so nothing else could refuse it)."""
    client = fleet.keys[0]
    payload = os.urandom(100)
    obj = WireObject(hash_object("blob", payload), "blob", payload)
    requests = {
        "NextRound": wire.encode_next_round_request(str(client.key_id)),
        "ListObjects": wire.encode_list_request(fleet.repo.resolve("main")),
        "GetObjects": wire.encode_ids([fleet.repo.resolve("main")]),
        "Missing": wire.encode_ids([obj.oid]),
        "PutObjects": next(iter(wire.encode_chunks(obj, 1 << 20))),
        "Submit": wire.encode_submit(1, fleet.repo.resolve("main")),
    }
    link = fleet.link(signer=client)
    forged = dict(link.credentials(method))
    forged["fedvc-signature"] = dict(fleet.link(signer=OUTSIDER).credentials(method))[
        "fedvc-signature"
    ]
    stale = fleet.link(signer=client)
    stale.wall_clock = lambda: 1_000_000.0  # 1970: far outside the server's window
    cases = {
        "no credentials": ((), "carries no fedvc-key, fedvc-time, fedvc-signature"),
        "expired": (stale.credentials(method), "set the client's clock right"),
        "forged": (tuple(forged.items()), "is not key"),
        "another method's": (
            link.credentials("Missing" if method != "Missing" else "Submit"),
            "is not key",
        ),
    }
    for name, (metadata, expected) in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            raw_call(link.channel, method, requests[method], metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert expected in caught.value.details(), (name, caught.value.details())
    assert fleet.servicer.errors[f"{method}:UNAUTHENTICATED"] == len(cases)
    assert not fleet.repo.objects.contains(obj.oid)
    assert fleet.coordinator.state is not None and not fleet.coordinator.state.assigned
    raw_call(link.channel, method, requests[method], link.credentials(method))  # signed: served
    finish(fleet, *(fleet.participant(k) for k in fleet.keys))


def test_an_unsigned_link_is_told_to_sign(fleet: Fleet) -> None:
    from fedvc_client.link import GrpcLink

    with GrpcLink(fleet.address) as unsigned, pytest.raises(LinkError) as caught:
        unsigned.next_round(str(fleet.keys[0].key_id))
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "signer=key" in str(caught.value) and "fedvc-client --key" in str(caught.value)


def test_a_stream_ending_inside_an_object_stores_nothing(fleet: Fleet) -> None:
    payload = os.urandom(2500)
    oid = hash_object("blob", payload)

    def truncated() -> Iterator[bytes]:
        first = fleet_pb2.ObjectChunk(oid=oid, kind="blob", total_size=2500, data=payload[:1000])
        yield first.SerializeToString()

    link = fleet.link()
    put = link.channel.stream_unary(wire.method_path("PutObjects"))
    with pytest.raises(grpc.RpcError) as caught:
        put(truncated(), metadata=link.credentials("PutObjects"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ended inside object" in caught.value.details() and oid in caught.value.details()
    assert not fleet.repo.objects.contains(oid)
    assert fleet.servicer.errors["PutObjects:INVALID_ARGUMENT"] == 1
    finish(fleet, *(fleet.participant(k) for k in fleet.keys))


def test_an_object_whose_bytes_do_not_match_its_id_is_data_loss(fleet: Fleet) -> None:
    claimed = hash_object("blob", b"what the id promises")
    link = fleet.link()
    with pytest.raises(LinkError) as caught:
        link.put_objects([WireObject(claimed, "blob", b"something else entirely")])
    assert caught.value.code == grpc.StatusCode.DATA_LOSS and caught.value.oid == claimed
    assert "was not stored" in str(caught.value)
    assert not fleet.repo.objects.contains(claimed)
    finish(fleet, *(fleet.participant(k) for k in fleet.keys))


def test_a_malformed_commit_object_is_refused_before_it_is_stored(fleet: Fleet) -> None:
    payload = b'{"not":"a commit"}'
    malformed = WireObject(hash_object("commit", payload), "commit", payload)
    with pytest.raises(LinkError, match="refusing to store a malformed commit") as caught:
        fleet.link().put_objects([malformed])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert not fleet.repo.objects.contains(malformed.oid)


def test_an_object_the_server_lacks_is_not_found(fleet: Fleet) -> None:
    link = fleet.link()
    absent = ObjectId("0" * 64)
    with pytest.raises(LinkError) as caught:
        list(link.get_objects([absent]))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and caught.value.oid == absent
    with pytest.raises(LinkError, match="NOT_FOUND"):
        link.list_objects(absent)
    assert link.missing([absent]) == [absent]


def raw_call(
    channel: grpc.Channel, method: str, data: bytes, metadata: tuple[tuple[str, str], ...]
) -> None:
    path = wire.method_path(method)
    if method in ("ListObjects", "GetObjects"):
        list(channel.unary_stream(path)(data, metadata=metadata))
    elif method == "PutObjects":
        channel.stream_unary(path)(iter([data]), metadata=metadata)
    else:
        channel.unary_unary(path)(data, metadata=metadata)


@pytest.mark.parametrize("method", FLEET_METHODS)
def test_garbage_instead_of_a_protobuf_is_invalid_argument(fleet: Fleet, method: str) -> None:
    link = fleet.link()
    with pytest.raises(grpc.RpcError) as caught:
        raw_call(link.channel, method, b"\xff\x00garbage", link.credentials(method))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "fedvc.proto.v1" in caught.value.details()
    assert fleet.servicer.errors[f"{method}:INVALID_ARGUMENT"] == 1
    finish(fleet, *(fleet.participant(k) for k in fleet.keys))


def test_a_participant_with_its_own_cache_fetches_only_what_changed(fleet: Fleet) -> None:
    a, b = (fleet.participant(k) for k in fleet.keys)
    finish(fleet, a, b)
    repo = Repository.memory()
    second = Participant(fleet.link(), a.task, a.key, repo)
    base = fleet.record.reports[0].base
    assert second.download(base) == 3  # the blob, the snapshot, the commit
    assert second.download(base) == 0
