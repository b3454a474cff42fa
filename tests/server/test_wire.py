"""fedvc.wire and fedvc.transfer: every value survives the trip, anything malformed is
refused at the door with a WireError that says what was expected."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedvc import transfer, wire
from fedvc.objects import ObjectId, hash_object
from fedvc.proto.v1 import fleet_pb2
from fedvc.store.base import CorruptObjectError
from fedvc.transport import Finished, RoundOffer, Verdict, Wait, WireObject

OID = ObjectId("ab" * 32)


def blob(payload: bytes) -> WireObject:
    return WireObject(hash_object("blob", payload), "blob", payload)


# -- messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offer",
    [
        RoundOffer(3, OID, {"lr": 0.1, "epochs": 2, "fisher": True}, 1.7e9),
        RoundOffer(1, OID, {}, 0.0),
        Wait(0.5, "round 2 is full"),
        Finished(5),
    ],
)
def test_offers_round_trip(offer: RoundOffer | Wait | Finished) -> None:
    assert wire.decode_offer(wire.encode_offer(offer)) == offer


def offer_bytes(**fields: object) -> bytes:
    values: dict[str, object] = {"number": 1, "base": OID, "config_json": "{}", "deadline": 1.0}
    values.update(fields)
    return fleet_pb2.Offer(round=fleet_pb2.RoundOffer(**values)).SerializeToString()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (offer_bytes(base="AB" * 32), "RoundOffer.base: expected 64 lowercase hex digits"),
        (offer_bytes(number=0), "RoundOffer.number"),
        (offer_bytes(deadline=math.nan), "RoundOffer.deadline: expected a finite number"),
        (offer_bytes(config_json='{"b":1,"a":2}'), "not a canonical JSON object"),
        (offer_bytes(config_json="[1,2]"), "not a canonical JSON object"),
        (fleet_pb2.Offer(wait=fleet_pb2.Wait(seconds=math.inf)).SerializeToString(), "Wait"),
        (fleet_pb2.Offer(wait=fleet_pb2.Wait(seconds=-1)).SerializeToString(), "Wait"),
        (b"", "one of round, wait or finished"),
    ],
)
def test_bad_offers_are_refused(data: bytes, says: str) -> None:
    with pytest.raises(wire.WireError, match=says) as caught:
        wire.decode_offer(data)
    assert "check that client and server match" in str(caught.value)


def test_a_config_that_is_not_json_cannot_be_offered() -> None:
    with pytest.raises(wire.WireError, match="use JSON values only"):
        wire.encode_offer(RoundOffer(1, OID, {"lr": math.nan}, 1.0))


def test_key_ids_are_validated() -> None:
    key_id = wire.decode_next_round_request(wire.encode_next_round_request("0123456789abcdef"))
    assert key_id == "0123456789abcdef"
    for bad in ("", "0123456789ABCDEF", "0123", "0123456789abcdef0"):
        with pytest.raises(wire.WireError, match="16 lowercase hex"):
            wire.decode_next_round_request(wire.encode_next_round_request(bad))


def test_ids_round_trip_in_batches_and_are_validated() -> None:
    ids = [ObjectId(f"{i:064x}") for i in range(25)]
    assert [list(b) for b in wire.batches(ids, 10)] == [ids[:10], ids[10:20], ids[20:]]
    assert wire.decode_ids(wire.encode_ids(ids)) == ids
    with pytest.raises(wire.WireError, match="ObjectIds entry: expected 64 lowercase hex"):
        wire.decode_ids(fleet_pb2.ObjectIds(ids=[OID, "xyz"]).SerializeToString())
    too_many = [OID] * (wire.MAX_IDS_PER_MESSAGE + 1)
    with pytest.raises(wire.WireError, match="send them in batches"):
        wire.encode_ids(too_many)
    with pytest.raises(wire.WireError, match="at most"):
        wire.decode_ids(fleet_pb2.ObjectIds(ids=too_many).SerializeToString())


def test_submissions_need_a_round_and_a_commit_id() -> None:
    assert wire.decode_submit(wire.encode_submit(2, OID)) == (2, OID)
    with pytest.raises(wire.WireError, match=r"SubmitRequest\.round"):
        wire.decode_submit(wire.encode_submit(0, OID))
    with pytest.raises(wire.WireError, match=r"SubmitRequest\.commit"):
        wire.decode_submit(fleet_pb2.SubmitRequest(round=1, commit="abc").SerializeToString())


@pytest.mark.parametrize(
    "verdict",
    [
        Verdict(True),
        Verdict(True, extra={"round_closed": OID}),
        Verdict(False, "wrong_base", "commit x has parents [] ..."),
        Verdict(False, "norm", "too far", extra={"distance": 3.5}),
    ],
)
def test_verdicts_round_trip(verdict: Verdict) -> None:
    assert wire.decode_verdict(wire.encode_verdict(verdict)) == verdict


@pytest.mark.parametrize(
    "message",
    [
        fleet_pb2.Verdict(admitted=True, reason="norm"),
        fleet_pb2.Verdict(admitted=False),
        fleet_pb2.Verdict(admitted=False, reason="Not A Reason"),
        fleet_pb2.Verdict(admitted=True, round_closed="123"),
    ],
)
def test_inconsistent_verdicts_are_refused(message: fleet_pb2.Verdict) -> None:
    with pytest.raises(wire.WireError, match="Verdict"):
        wire.decode_verdict(message.SerializeToString())


@pytest.mark.parametrize(
    "decode",
    [
        wire.decode_next_round_request,
        wire.decode_offer,
        wire.decode_list_request,
        wire.decode_ids,
        wire.decode_submit,
        wire.decode_verdict,
        wire.decode_put_summary,
        wire.decode_chunk,
    ],
)
def test_garbage_is_a_wire_error_not_a_crash(decode: object) -> None:
    with pytest.raises(wire.WireError):
        decode(b"\xff\x00garbage")  # type: ignore[operator]


# -- chunks -----------------------------------------------------------------------------------


def test_chunks_are_protobuf_and_small() -> None:
    obj = blob(os.urandom(2500))
    messages = list(wire.encode_chunks(obj, chunk_size=1000))
    parsed = [fleet_pb2.ObjectChunk.FromString(m) for m in messages]
    assert [(c.oid, c.kind, c.total_size, c.offset) for c in parsed] == [
        (obj.oid, "blob", 2500, 0),
        ("", "", 0, 1000),
        ("", "", 0, 2000),
    ]
    assert b"".join(c.data for c in parsed) == obj.payload
    assert all(len(m) < 1000 + 100 for m in messages)


def test_an_empty_object_is_one_chunk() -> None:
    [message] = wire.encode_chunks(blob(b""))
    assert fleet_pb2.ObjectChunk.FromString(message).total_size == 0
    [obj] = transfer.decode_objects([message])
    assert bytes(obj.payload) == b""


def test_decoded_chunk_data_is_a_view_not_a_copy() -> None:
    message = next(wire.encode_chunks(blob(b"x" * 100)))
    data = wire.decode_chunk(message).data
    assert isinstance(data, memoryview) and data.obj is message


chunk_fields = st.fixed_dictionaries(
    {
        "oid": st.text(max_size=70),
        "kind": st.text(max_size=10),
        "total_size": st.integers(0, 2**64 - 1),
        "offset": st.integers(0, 2**64 - 1),
        "data": st.binary(max_size=300),
    }
)


@settings(max_examples=300, deadline=None)
@given(chunk_fields, st.binary(max_size=20))
def test_decode_chunk_reads_what_protobuf_writes(fields: dict[str, object], tail: bytes) -> None:
    message = fleet_pb2.ObjectChunk(**fields).SerializeToString()
    unknown = b"\xa2\x06" + bytes([len(tail)]) + tail  # field 100, length-delimited: skipped
    expected = tuple(fields[name] for name in ("oid", "kind", "total_size", "offset", "data"))
    for data in (message, message + unknown, unknown + message):
        chunk = wire.decode_chunk(data)
        got = (chunk.oid, chunk.kind, chunk.total_size, chunk.offset, bytes(chunk.data))
        assert got == expected


def agrees_with_protobuf(data: bytes) -> None:
    """Whenever decode_chunk accepts bytes, protobuf accepts them and reads the same."""
    try:
        chunk = wire.decode_chunk(data)
    except wire.WireError:
        return
    message = fleet_pb2.ObjectChunk.FromString(data)
    assert (chunk.oid, chunk.kind, chunk.total_size, chunk.offset, bytes(chunk.data)) == (
        message.oid,
        message.kind,
        message.total_size,
        message.offset,
        message.data,
    )


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_decode_chunk_never_accepts_what_protobuf_refuses(data: bytes) -> None:
    agrees_with_protobuf(data)


# -- assembling objects ---------------------------------------------------------------------


def chunks(obj: WireObject, size: int = 1000) -> list[wire.Chunk]:
    return [wire.decode_chunk(m) for m in wire.encode_chunks(obj, chunk_size=size)]


def test_objects_are_reassembled_and_checked() -> None:
    objects = [blob(os.urandom(n)) for n in (3000, 10, 0, 1000)]
    messages = [m for obj in objects for m in wire.encode_chunks(obj, chunk_size=1000)]
    got = list(transfer.decode_objects(messages))
    assert [(o.oid, bytes(o.payload)) for o in got] == [(o.oid, o.payload) for o in objects]


def test_a_forged_object_is_data_loss_and_never_handed_on() -> None:
    real = blob(os.urandom(2500))
    forged = WireObject(real.oid, "blob", os.urandom(2500))
    assembler = transfer.ObjectAssembler()
    parts = chunks(forged)
    assert assembler.feed(parts[0]) is None and assembler.feed(parts[1]) is None
    with pytest.raises(CorruptObjectError, match=real.oid):
        assembler.feed(parts[2])


def test_a_stream_ending_inside_an_object_is_truncated() -> None:
    messages = list(wire.encode_chunks(blob(os.urandom(2500)), chunk_size=1000))
    with pytest.raises(transfer.TruncatedStreamError, match="after 2000 of its 2500 bytes"):
        list(transfer.decode_objects(messages[:2]))


def feed_all(parts: list[wire.Chunk], limit: int = transfer.MAX_OBJECT_SIZE) -> None:
    assembler = transfer.ObjectAssembler(limit)
    for part in parts:
        assembler.feed(part)


def test_out_of_order_and_ill_formed_chunks_are_refused() -> None:
    first, second, third = chunks(blob(os.urandom(2500)))
    other = chunks(blob(b"other"))[0]
    with pytest.raises(wire.WireError, match="the next chunk at offset 1000"):
        feed_all([first, third])
    with pytest.raises(wire.WireError, match="a first chunk naming its object"):
        feed_all([second])
    with pytest.raises(wire.WireError, match="its remaining 1500 bytes"):
        feed_all([first, other])
    with pytest.raises(wire.WireError, match="at most 100 bytes"):
        feed_all([first], limit=100)
    with pytest.raises(wire.WireError, match="2500 bytes in all"):
        feed_all([first, wire.Chunk("", "", 0, 1000, b"x" * 2000)])
    with pytest.raises(wire.WireError, match="kind of object"):
        feed_all([wire.Chunk(first.oid, "tree", 1, 0, b"x")])
    with pytest.raises(wire.WireError, match=r"ObjectChunk\.oid"):
        feed_all([wire.Chunk("not-an-id", "blob", 1, 0, b"x")])
    with pytest.raises(wire.WireError, match="offset 0"):
        feed_all([wire.Chunk(first.oid, "blob", 2500, 7, b"x")])


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no /proc/self/status here")


def test_a_3_gib_object_costs_memory_only_as_its_bytes_arrive() -> None:
    size = 3 << 30  # above 2 GiB: no message, buffer or offset is limited to 32 bits
    assembler = transfer.ObjectAssembler()
    before = resident_bytes()
    assert assembler.feed(wire.Chunk(OID, "blob", size, 0, b"x" * 1000)) is None
    assert assembler.feed(wire.Chunk("", "", 0, 1000, b"y" * 1000)) is None
    assert resident_bytes() - before < 64 << 20
    with pytest.raises(transfer.TruncatedStreamError, match=f"after 2000 of its {size} bytes"):
        assembler.finish()
