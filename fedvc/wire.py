"""The only converter between fedvc values and the protobuf messages of ``fedvc.proto.v1``.

Both ends of the gRPC wire (``fedvc_server``'s servicer, ``fedvc_client``'s link) hand raw
message bytes to these functions and get fedvc values back, so what arrives is parsed and
validated at the door in one place: ids are 64 lowercase hex digits, kinds are object
kinds, numbers are finite, configs are canonical JSON objects. Anything else raises
``WireError``, which says what was expected, what came and what to do.

Objects travel as ``ObjectChunk`` messages of at most ``CHUNK_SIZE`` bytes of data, so no
message comes near gRPC's 4 MiB default limit whatever the object's size. Chunks are
encoded and parsed by hand (``encode_chunks``, ``decode_chunk``: a few lines of the
protobuf wire format, checked against protobuf's own codec by the tests), because
protobuf's codec would copy each megabyte twice more on each side. Putting objects back
together from chunks, and checking them, is ``fedvc.transfer``'s job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import DecodeError  # type: ignore[import-untyped,unused-ignore]

from fedvc.errors import FedvcError
from fedvc.objects import (
    MalformedObjectError,
    ObjectId,
    canonical_json,
    parse_canonical_json,
    validate_object_id,
)
from fedvc.proto.v1 import fleet_pb2
from fedvc.transport import Finished, Offer, RoundOffer, Verdict, Wait, WireObject

SERVICE = "fedvc.proto.v1.Fleet"
CHUNK_SIZE = 1 << 20
"""Data bytes per ObjectChunk: large enough that per-message costs vanish, a quarter of
gRPC's default 4 MiB message limit so that neither end has to raise it."""
MAX_MESSAGE_BYTES = 4 << 20
"""The largest message either end accepts (gRPC's default, stated so it cannot drift)."""
MESSAGE_SIZE_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)
"""Channel and server options that set ``MAX_MESSAGE_BYTES`` for both directions."""
REASON_KEY = "fedvc-reason"
"""Trailing metadata of a refused call: the rejection reason (one of REJECTION_REASONS)."""
OBJECT_KEY = "fedvc-object"
"""Trailing metadata of a refused call: the object id it is about, when there is one."""
MAX_IDS_PER_MESSAGE = 10_000
"""Ids per ObjectIds message (about 660 KB): longer lists travel in several messages."""
MAX_WAIT_SECONDS = 86_400.0
"""A coordinator never asks a client to wait longer than a day before asking again."""

_KEY_ID = re.compile(r"[0-9a-f]{16}\Z")
_REASON = re.compile(r"[a-z_]{1,64}\Z")
_FIX = "the peer does not speak fedvc.proto.v1 correctly: check that client and server match"

Message = TypeVar("Message")


class WireError(FedvcError):
    """A message that is not what fedvc.proto.v1 allows: malformed, out of range, unordered."""


def method_path(name: str) -> str:
    """The gRPC path of one Fleet method, e.g. ``/fedvc.proto.v1.Fleet/NextRound``."""
    return f"/{SERVICE}/{name}"


def fail(what: str, expected: str, got: object) -> WireError:
    """A ``WireError`` saying what ``what`` should have been and what came instead."""
    shown = repr(got)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return WireError(f"{what}: expected {expected}, got {shown}; {_FIX}")


def _parse(cls: Any, data: bytes) -> Any:
    try:
        return cls.FromString(data)
    except DecodeError as exc:
        raise WireError(
            f"the bytes received are not a {cls.__name__} message ({exc}): {_FIX}"
        ) from None


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def object_id(value: str, what: str) -> ObjectId:
    """``value`` as an ``ObjectId``, or a ``WireError`` naming ``what`` it was meant to be."""
    try:
        return validate_object_id(value, what)
    except MalformedObjectError:
        raise fail(what, "64 lowercase hex digits", value) from None


def _finite(value: float, what: str, low: float, high: float = math.inf) -> float:
    if not (math.isfinite(value) and low <= value <= high):
        raise fail(what, f"a finite number in [{low:g}, {high:g}]", value)
    return value


def _json_object(text: str, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        return parse_canonical_json(text.encode("utf-8"), what)
    except (MalformedObjectError, UnicodeEncodeError) as exc:
        raise WireError(f"{what} is not a canonical JSON object: {exc}; {_FIX}") from None


def _json_text(value: Mapping[str, Any], what: str) -> str:
    try:
        return canonical_json(dict(value)).decode("utf-8")
    except MalformedObjectError as exc:
        raise WireError(f"{what} cannot travel: {exc}; use JSON values only") from None


# -- asking for work ----------------------------------------------------------------------


def encode_next_round_request(key_id: str) -> bytes:
    return _serialize(fleet_pb2.NextRoundRequest(key_id=key_id))


def decode_next_round_request(data: bytes) -> str:
    """The key id asking for work: 16 lowercase hex digits."""
    message: fleet_pb2.NextRoundRequest = _parse(fleet_pb2.NextRoundRequest, data)
    key_id = message.key_id
    if not _KEY_ID.match(key_id):
        raise fail("NextRoundRequest.key_id", "a key id of 16 lowercase hex digits", key_id)
    return key_id


def encode_offer(offer: Offer) -> bytes:
    if isinstance(offer, RoundOffer):
        message = fleet_pb2.Offer(
            round=fleet_pb2.RoundOffer(
                number=offer.number,
                base=offer.base,
                config_json=_json_text(offer.config, "the round's training config"),
                deadline=offer.deadline,
            )
        )
    elif isinstance(offer, Wait):
        message = fleet_pb2.Offer(wait=fleet_pb2.Wait(seconds=offer.seconds, reason=offer.reason))
    else:
        message = fleet_pb2.Offer(finished=fleet_pb2.Finished(rounds=offer.rounds))
    return _serialize(message)


def decode_offer(data: bytes) -> Offer:
    message: fleet_pb2.Offer = _parse(fleet_pb2.Offer, data)
    which = message.WhichOneof("offer")
    if which == "round":
        offer = message.round
        if offer.number < 1:
            raise fail("RoundOffer.number", "a round number of at least 1", offer.number)
        return RoundOffer(
            number=offer.number,
            base=object_id(offer.base, "RoundOffer.base"),
            config=_json_object(offer.config_json, "RoundOffer.config_json"),
            deadline=_finite(offer.deadline, "RoundOffer.deadline", 0.0),
        )
    if which == "wait":
        seconds = _finite(message.wait.seconds, "Wait.seconds", 0.0, MAX_WAIT_SECONDS)
        return Wait(seconds, message.wait.reason)
    if which == "finished":
        return Finished(message.finished.rounds)
    raise fail("Offer", "one of round, wait or finished", "an empty Offer")


# -- object ids ---------------------------------------------------------------------------


def encode_list_request(commit: ObjectId) -> bytes:
    return _serialize(fleet_pb2.ListObjectsRequest(commit=commit))


def decode_list_request(data: bytes) -> ObjectId:
    message: fleet_pb2.ListObjectsRequest = _parse(fleet_pb2.ListObjectsRequest, data)
    return object_id(message.commit, "ListObjects commit")


def encode_ids(ids: Sequence[str]) -> bytes:
    """One ObjectIds message; callers split longer lists with ``batches``."""
    if len(ids) > MAX_IDS_PER_MESSAGE:
        raise WireError(
            f"{len(ids)} ids do not fit one message (at most {MAX_IDS_PER_MESSAGE}); "
            "send them in batches"
        )
    return _serialize(fleet_pb2.ObjectIds(ids=ids))


def decode_ids(data: bytes, what: str = "ObjectIds") -> list[ObjectId]:
    message: fleet_pb2.ObjectIds = _parse(fleet_pb2.ObjectIds, data)
    ids = list(message.ids)
    if len(ids) > MAX_IDS_PER_MESSAGE:
        raise fail(what, f"at most {MAX_IDS_PER_MESSAGE} ids", f"{len(ids)} ids")
    return [object_id(oid, f"{what} entry") for oid in ids]


def batches(
    items: Sequence[Message], size: int = MAX_IDS_PER_MESSAGE
) -> Iterator[Sequence[Message]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- submitting -----------------------------------------------------------------------------


def encode_submit(round_number: int, commit: ObjectId) -> bytes:
    return _serialize(fleet_pb2.SubmitRequest(round=round_number, commit=commit))


def decode_submit(data: bytes) -> tuple[int, ObjectId]:
    message: fleet_pb2.SubmitRequest = _parse(fleet_pb2.SubmitRequest, data)
    if message.round < 1:
        raise fail("SubmitRequest.round", "a round number of at least 1", message.round)
    return message.round, object_id(message.commit, "SubmitRequest.commit")


def encode_verdict(verdict: Verdict) -> bytes:
    extra = dict(verdict.extra)
    closed = extra.pop("round_closed", "")
    message = fleet_pb2.Verdict(
        admitted=verdict.admitted,
        reason=verdict.reason,
        detail=verdict.detail,
        round_closed=str(closed),
        extra_json=_json_text(extra, "a verdict's extra fields") if extra else "",
    )
    return _serialize(message)


def decode_verdict(data: bytes) -> Verdict:
    message: fleet_pb2.Verdict = _parse(fleet_pb2.Verdict, data)
    if message.admitted == bool(message.reason) or (
        message.reason and not _REASON.match(message.reason)
    ):
        raise fail(
            "Verdict.reason",
            "empty when admitted, a reason such as 'wrong_base' when not",
            (message.admitted, message.reason),
        )
    extra = _json_object(message.extra_json, "Verdict.extra_json")
    if message.round_closed:
        extra["round_closed"] = object_id(message.round_closed, "Verdict.round_closed")
    return Verdict(message.admitted, message.reason, message.detail, extra)


@dataclass(frozen=True)
class PutSummary:
    """What a PutObjects call stored: ``stored`` objects holding ``bytes`` payload bytes."""

    stored: int
    bytes: int


def encode_put_summary(summary: PutSummary) -> bytes:
    return _serialize(fleet_pb2.PutSummary(stored=summary.stored, bytes=summary.bytes))


def decode_put_summary(data: bytes) -> PutSummary:
    message: fleet_pb2.PutSummary = _parse(fleet_pb2.PutSummary, data)
    return PutSummary(message.stored, message.bytes)


# -- objects in chunks ----------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_DATA_TAG = bytes([(5 << 3) | 2])  # ObjectChunk.data: field 5, length-delimited


def encode_chunks(obj: WireObject, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """``obj`` as serialized ObjectChunk messages: the first names it, all carry data.

    Each message is the protobuf encoding of the small fields followed by field 5 written
    by hand around a slice of the payload: one copy per byte, straight from the store's
    memory map into the message gRPC sends.
    """
    view = memoryview(obj.payload).cast("B")
    size = len(view)
    offset = 0
    while True:
        if offset == 0:
            head = fleet_pb2.ObjectChunk(oid=obj.oid, kind=obj.kind, total_size=size)
        else:
            head = fleet_pb2.ObjectChunk(offset=offset)
        piece = view[offset : offset + chunk_size]
        parts: list[bytes | memoryview] = [_serialize(head)]
        if len(piece):
            parts += [_DATA_TAG, _varint(len(piece)), piece]
        yield b"".join(parts)
        offset += len(piece)
        if offset >= size:
            return


@dataclass(frozen=True)
class Chunk:
    """One decoded ObjectChunk (``oid``, ``kind``, ``total_size`` set on first chunks only)."""

    oid: str
    kind: str
    total_size: int
    offset: int
    data: bytes | memoryview


_MAX_FIELD_NUMBER = (1 << 29) - 1
_CHUNK_WIRE_TYPES = {1: 2, 2: 2, 3: 0, 4: 0, 5: 2}  # field number -> wire type


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(view) and shift < 64:
        byte = view[pos]
        value, pos, shift = value | (byte & 0x7F) << shift, pos + 1, shift + 7
        if byte < 0x80 and not value >> 64:
            return value, pos
    raise WireError(f"ObjectChunk: a varint is truncated or longer than 64 bits; {_FIX}")


def _text(value: bytes | memoryview, what: str) -> str:
    try:
        return str(value, "utf-8")
    except UnicodeDecodeError:
        raise fail(what, "UTF-8 text", bytes(value[:40])) from None


def decode_chunk(data: bytes) -> Chunk:
    """Parse an ObjectChunk, its ``data`` a view into ``data`` rather than a copy.

    The protobuf wire format, written out for this one message (protobuf's parser would
    copy every megabyte twice): the last value of a repeated field wins and unknown fields
    are skipped, as protobuf does; groups and known fields of the wrong wire type, which
    no encoder of this message produces, are refused.
    """
    view = memoryview(data).cast("B")
    values: dict[int, Any] = {}
    value: int | memoryview
    pos = 0
    while pos < len(view):
        key, pos = _read_varint(view, pos)
        number, wire_type = key >> 3, key & 7
        if not 0 < number <= _MAX_FIELD_NUMBER or wire_type not in (0, 1, 2, 5):
            raise fail("ObjectChunk field key", "a valid field number and wire type", key)
        if wire_type == 0:
            value, pos = _read_varint(view, pos)
        else:
            length = {1: 8, 5: 4}.get(wire_type)
            if length is None:
                length, pos = _read_varint(view, pos)
            if length > len(view) - pos:
                raise WireError(f"ObjectChunk: field {number} runs past the message; {_FIX}")
            value, pos = view[pos : pos + length], pos + length
        if number in _CHUNK_WIRE_TYPES:
            if wire_type != _CHUNK_WIRE_TYPES[number]:
                raise fail(f"ObjectChunk field {number}", "its declared type", wire_type)
            values[number] = value
    return Chunk(
        _text(values.get(1, b""), "ObjectChunk.oid"),
        _text(values.get(2, b""), "ObjectChunk.kind"),
        values.get(3, 0),
        values.get(4, 0),
        values.get(5, b""),
    )
