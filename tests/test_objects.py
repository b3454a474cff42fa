"""Tests for fedvc.objects: object framing, ids, canonical JSON, snapshots and commits.

The golden values below pin the storage format: any change to framing, hashing, JSON
canonicalisation or the signing bytes changes them, and every stored object id with them.
The bytes were checked by eye against the format in the module docstring
(``<kind> <size>\\0<payload>``, SHA-256, sorted keys, no whitespace, raw UTF-8).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedvc.errors import FedvcError
from fedvc.objects import (
    SIGNING_PREFIX,
    Commit,
    MalformedObjectError,
    ObjectId,
    Snapshot,
    TensorEntry,
    canonical_json,
    decode_payload,
    hash_object,
    object_header,
    parse_canonical_json,
    split_object,
    validate_object_id,
)
from fedvc.signing import SigningKey, commit_signature_valid, sign_commit
from fedvc.tensors import tensor_bytes

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- golden values ---------------------------------------------------------------------

BLOB_PAYLOAD = (
    b"\x00\x00\x00\x00"  # 0.0
    b"\x00\x00\x80?"  # 1.0 = 0x3f800000, little-endian
    b"\x00\x00\x00@"  # 2.0
    b"\x00\x00@@"  # 3.0
    b"\x00\x00\x80@"  # 4.0
    b"\x00\x00\xa0@"  # 5.0
)
BLOB_ENCODED = b"blob 24\x00" + BLOB_PAYLOAD
BLOB_ID = "503af1edf06f9d8c61655ebe25efc0c0843557b64ff976dd2933505a72f5dafa"

BIAS_PAYLOAD = (
    b"\x01\x00\x00\x00\x00\x00\x00\x00"
    b"\xfe\xff\xff\xff\xff\xff\xff\xff"
    b"\x03\x00\x00\x00\x00\x00\x00\x00"
    b"\xfc\xff\xff\xff\xff\xff\xff\xff"
)
BIAS_ID = "4440922c9edc8f0161d4c667deb0c50922f5b655ab9f146352e3fc2072e24205"

SNAPSHOT_PAYLOAD = (
    b'{"tensors":{'
    b'"layer.bias":{"blob":"4440922c9edc8f0161d4c667deb0c50922f5b655ab9f146352e3fc2072e24205",'
    b'"dtype":"int64","shape":[2,2]},'
    b'"layer.weight":{"blob":"503af1edf06f9d8c61655ebe25efc0c0843557b64ff976dd2933505a72f5dafa",'
    b'"dtype":"float32","shape":[2,3]}}}'
)
SNAPSHOT_ID = "7204e87fb60e4740f7fff502461b3504a7192128ac43b97f1fc11d820cb372cb"

PARENT_A = "1" * 64
PARENT_B = "a" * 64
MESSAGE = "Runde 3: Gewichte gemittelt \u2013 \u00ff \u6a21\u578b \u2713"
METADATA: dict[str, Any] = {
    "round": 3,
    "lr": 0.05,
    "final": False,
    "note": None,
    "clients": ["alice", "bob"],
    "stats": {"loss": 1.25, "n": [1, 2.5e-7]},
}
TIMESTAMP = 1_700_000_000

COMMIT_PAYLOAD = (
    b'{"author":null,'
    b'"message":"Runde 3: Gewichte gemittelt \xe2\x80\x93 \xc3\xbf \xe6\xa8\xa1\xe5\x9e\x8b \xe2\x9c\x93",'
    b'"metadata":{"clients":["alice","bob"],"final":false,"lr":0.05,"note":null,"round":3,'
    b'"stats":{"loss":1.25,"n":[1,2.5e-07]}},'
    b'"parents":["1111111111111111111111111111111111111111111111111111111111111111",'
    b'"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],'
    b'"signature":null,'
    b'"snapshot":"7204e87fb60e4740f7fff502461b3504a7192128ac43b97f1fc11d820cb372cb",'
    b'"timestamp":1700000000}'
)
COMMIT_ID = "5d0b9f548125397bd2d483c94ba24fcd8ea95dcab0a09d3a29b972afeeaa3bce"

SEED = bytes(range(32))
AUTHOR = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
SIGNATURE = (
    "63267a5b9002dbab9be4878dd8ac714d877a58b95899b89571f3bc85484ff489"
    "efa4cbac3e7484e0f45590c9602574ec1b6f81e0d6abb35f9881363bd74b2101"
)
SIGNED_COMMIT_ID = "1de2e37c772d2fee504f2b5244e56bf30fb8897bebf44291d0172b149dabcedd"


def golden_snapshot() -> Snapshot:
    # Inserted out of order on purpose: a snapshot sorts its tensors by name.
    return Snapshot(
        {
            "layer.weight": TensorEntry(ObjectId(BLOB_ID), "float32", (2, 3)),
            "layer.bias": TensorEntry(ObjectId(BIAS_ID), "int64", (2, 2)),
        }
    )


def golden_commit() -> Commit:
    return Commit(
        snapshot=ObjectId(SNAPSHOT_ID),
        parents=(ObjectId(PARENT_A), ObjectId(PARENT_B)),
        timestamp=TIMESTAMP,
        message=MESSAGE,
        metadata=METADATA,
    )


def sha256_framed(kind: str, payload: bytes) -> str:
    """The id computed independently of fedvc: hashlib over the framed bytes."""
    return hashlib.sha256(f"{kind} {len(payload)}".encode() + b"\x00" + payload).hexdigest()


class TestGolden:
    def test_blob_bytes_and_id(self) -> None:
        payload = bytes(tensor_bytes(np.arange(6, dtype=np.float32)))
        assert payload == BLOB_PAYLOAD
        assert object_header("blob", len(payload)) + payload == BLOB_ENCODED
        assert hash_object("blob", payload) == BLOB_ID
        assert hashlib.sha256(BLOB_ENCODED).hexdigest() == BLOB_ID
        kind, split = split_object(BLOB_ENCODED)
        assert (kind, bytes(split)) == ("blob", BLOB_PAYLOAD)

    def test_blob_bytes_do_not_depend_on_layout_or_byte_order(self) -> None:
        base = np.arange(6, dtype=np.float32)
        big_endian = base.astype(">f4")
        strided = np.arange(12, dtype=np.float32)[::2] / 2
        fortran = np.asfortranarray(base.reshape(2, 3))
        assert bytes(tensor_bytes(big_endian)) == BLOB_PAYLOAD
        assert bytes(tensor_bytes(strided)) == BLOB_PAYLOAD
        assert bytes(tensor_bytes(fortran)) == BLOB_PAYLOAD

    def test_second_blob(self) -> None:
        payload = bytes(tensor_bytes(np.array([[1, -2], [3, -4]], dtype=np.int64)))
        assert payload == BIAS_PAYLOAD
        assert hash_object("blob", payload) == BIAS_ID == sha256_framed("blob", payload)

    def test_snapshot_bytes_and_id(self) -> None:
        snapshot = golden_snapshot()
        assert list(snapshot.tensors) == ["layer.bias", "layer.weight"]
        assert snapshot.encode() == SNAPSHOT_PAYLOAD
        assert hash_object("snapshot", SNAPSHOT_PAYLOAD) == SNAPSHOT_ID
        assert sha256_framed("snapshot", SNAPSHOT_PAYLOAD) == SNAPSHOT_ID
        assert snapshot.nbytes == 24 + 32

    def test_commit_bytes_and_id(self) -> None:
        commit = golden_commit()
        assert commit.encode() == COMMIT_PAYLOAD
        assert hash_object("commit", COMMIT_PAYLOAD) == COMMIT_ID
        assert sha256_framed("commit", COMMIT_PAYLOAD) == COMMIT_ID

    def test_unsigned_signing_bytes(self) -> None:
        expected = b"fedvc commit signature v1\x00" + COMMIT_PAYLOAD.replace(
            b'"signature":null,', b""
        )
        assert SIGNING_PREFIX == b"fedvc commit signature v1\x00"
        assert golden_commit().signing_bytes() == expected

    def test_signed_commit_bytes_and_id(self) -> None:
        signed = sign_commit(golden_commit(), SigningKey.from_seed(SEED))
        assert signed.author == AUTHOR
        assert signed.signature == SIGNATURE
        with_author = COMMIT_PAYLOAD.replace(b'"author":null', f'"author":"{AUTHOR}"'.encode())
        assert signed.signing_bytes() == SIGNING_PREFIX + with_author.replace(
            b'"signature":null,', b""
        )
        encoded = with_author.replace(b'"signature":null', f'"signature":"{SIGNATURE}"'.encode())
        assert signed.encode() == encoded
        assert hash_object("commit", encoded) == SIGNED_COMMIT_ID
        assert sha256_framed("commit", encoded) == SIGNED_COMMIT_ID
        decoded = Commit.decode(encoded)
        assert decoded == signed
        assert commit_signature_valid(decoded)

    def test_signing_is_deterministic_and_covers_content(self) -> None:
        key = SigningKey.from_seed(SEED)
        assert sign_commit(golden_commit(), key) == sign_commit(golden_commit(), key)
        tampered = Commit.decode(
            sign_commit(golden_commit(), key).encode().replace(b'"round":3', b'"round":4')
        )
        assert not commit_signature_valid(tampered)

    def test_decoded_golden_values(self) -> None:
        assert Snapshot.decode(SNAPSHOT_PAYLOAD) == golden_snapshot()
        commit = Commit.decode(COMMIT_PAYLOAD)
        assert commit == golden_commit()
        assert commit.parents == (PARENT_A, PARENT_B)
        assert commit.message == MESSAGE
        assert dict(commit.metadata) == METADATA
        assert decode_payload("blob", BLOB_PAYLOAD) is None


# --- framing ---------------------------------------------------------------------------


class TestSplitObject:
    @pytest.mark.parametrize(
        ("data", "match"),
        [
            (b"", "header missing"),
            (b"blob 24" + b" " * 40, "header missing"),
            (b"tree 0\x00", "unknown object kind"),
            (b"Blob 0\x00", "unknown object kind"),
            (b"blob\x00", "not a canonical decimal"),
            (b"blob \x00", "not a canonical decimal"),
            (b"blob 024\x00" + BLOB_PAYLOAD, "not a canonical decimal"),
            (b"blob +24\x00" + BLOB_PAYLOAD, "not a canonical decimal"),
            (b"blob -1\x00", "not a canonical decimal"),
            (b"blob 2 4\x00", "not a canonical decimal"),
            (b"blob  24\x00" + BLOB_PAYLOAD, "not a canonical decimal"),
            (b"blob 24\x00" + BLOB_PAYLOAD[:-1], "truncated"),
            (b"blob 24\x00" + BLOB_PAYLOAD + b"\x00", "25 follow"),
            (b"blob \xd9\xa3\x00", "not a canonical decimal"),  # Arabic-Indic digit three
        ],
    )
    def test_rejects(self, data: bytes, match: str) -> None:
        with pytest.raises(MalformedObjectError, match=match):
            split_object(data)

    def test_empty_payload(self) -> None:
        kind, payload = split_object(b"blob 0\x00")
        assert (kind, bytes(payload)) == ("blob", b"")

    def test_payload_is_a_view(self) -> None:
        data = bytearray(BLOB_ENCODED)
        _, payload = split_object(data)
        data[-1] = 0
        assert payload[-1] == 0


# --- canonical JSON --------------------------------------------------------------------


def test_canonical_json_form() -> None:
    value = {"b": [1, 2.5, None, True], "a": {"z": "\u00e9", "y": -0.0}}
    assert canonical_json(value) == '{"a":{"y":-0.0,"z":"é"},"b":[1,2.5,null,true]}'.encode()


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), {"x": float("-inf")}, {1, 2}, b"bytes", {"s": "\ud800"}],
    ids=["nan", "inf", "neg-inf", "set", "bytes", "lone-surrogate"],
)
def test_canonical_json_rejects_unencodable(value: object) -> None:
    with pytest.raises(MalformedObjectError, match="canonical JSON"):
        canonical_json(value)


def test_reencoding_decoded_payload_is_identity() -> None:
    for payload, cls in [(SNAPSHOT_PAYLOAD, Snapshot), (COMMIT_PAYLOAD, Commit)]:
        assert cls.decode(payload).encode() == payload
        assert cls.decode(memoryview(payload)).encode() == payload


NON_CANONICAL_COMMITS = {
    "spaces": json.dumps(json.loads(COMMIT_PAYLOAD), sort_keys=True, ensure_ascii=False).encode(),
    "space-after-colon": COMMIT_PAYLOAD.replace(b'"author":null', b'"author": null'),
    "unsorted-keys": json.dumps(
        dict(reversed(list(json.loads(COMMIT_PAYLOAD).items()))),
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode(),
    "unsorted-nested-keys": COMMIT_PAYLOAD.replace(
        b'{"loss":1.25,"n":[1,2.5e-07]}', b'{"n":[1,2.5e-07],"loss":1.25}'
    ),
    "duplicate-key": COMMIT_PAYLOAD.replace(b'{"author":null,', b'{"author":null,"author":null,'),
    "duplicate-nested-key": COMMIT_PAYLOAD.replace(b'"round":3', b'"round":3,"round":3'),
    "exponent-style": COMMIT_PAYLOAD.replace(b'"loss":1.25', b'"loss":1.25e0'),
    "exponent-style-2": COMMIT_PAYLOAD.replace(b'"lr":0.05', b'"lr":5e-2'),
    "long-exponent": COMMIT_PAYLOAD.replace(b"2.5e-07", b"2.5e-7"),
    "trailing-zero": COMMIT_PAYLOAD.replace(b'"loss":1.25', b'"loss":1.250'),
    "nan": COMMIT_PAYLOAD.replace(b'"lr":0.05', b'"lr":NaN'),
    "infinity": COMMIT_PAYLOAD.replace(b'"lr":0.05', b'"lr":Infinity'),
    "neg-infinity": COMMIT_PAYLOAD.replace(b'"lr":0.05', b'"lr":-Infinity'),
    "trailing-data": COMMIT_PAYLOAD + b"{}",
    "trailing-newline": COMMIT_PAYLOAD + b"\n",
    "leading-space": b" " + COMMIT_PAYLOAD,
    "bom": b"\xef\xbb\xbf" + COMMIT_PAYLOAD,
    "ascii-escaped": COMMIT_PAYLOAD.replace("\u2013".encode(), b"\\u2013"),
    "escaped-letter": COMMIT_PAYLOAD.replace(b"alice", b"\\u0061lice"),
    "escaped-slash": COMMIT_PAYLOAD.replace(b'"bob"', b'"b\\/ob"'),
    "invalid-utf8": COMMIT_PAYLOAD.replace(b"\xc3\xbf", b"\xff"),
    "overlong-utf8": COMMIT_PAYLOAD.replace(b"alice", b"\xc1\xa1lice"),
    "utf16": COMMIT_PAYLOAD.decode().encode("utf-16"),
    "not-an-object": b"[]",
    "string": b'"commit"',
    "empty": b"",
    "truncated": COMMIT_PAYLOAD[:-1],
}


@pytest.mark.parametrize("payload", NON_CANONICAL_COMMITS.values(), ids=NON_CANONICAL_COMMITS)
def test_non_canonical_commit_json_rejected(payload: bytes) -> None:
    with pytest.raises(MalformedObjectError):
        Commit.decode(payload)
    with pytest.raises(MalformedObjectError):
        parse_canonical_json(payload, "commit")


@pytest.mark.parametrize(
    "payload",
    [
        SNAPSHOT_PAYLOAD.replace(b'"shape":[2,2]', b'"shape": [2, 2]'),
        SNAPSHOT_PAYLOAD.replace(
            b'"dtype":"int64","shape":[2,2]', b'"shape":[2,2],"dtype":"int64"'
        ),
        SNAPSHOT_PAYLOAD.replace(b"[2,3]", b"[2,3.0]"),
        SNAPSHOT_PAYLOAD.replace(b"[2,3]", b"[2,3e0]"),
        SNAPSHOT_PAYLOAD + b" ",
        SNAPSHOT_PAYLOAD.replace(b'{"tensors":{', b'{"tensors":{},"tensors":{', 1),
    ],
    ids=["spaces", "unsorted", "float-dim", "exponent-dim", "trailing-space", "duplicate"],
)
def test_non_canonical_snapshot_json_rejected(payload: bytes) -> None:
    with pytest.raises(MalformedObjectError):
        Snapshot.decode(payload)


# --- structural validation -------------------------------------------------------------


def commit_dict(**overrides: object) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(COMMIT_PAYLOAD)
    for key, item in overrides.items():
        if item is _DELETE:
            del value[key]
        else:
            value[key] = item
    return value


def snapshot_dict(**entry_overrides: object) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(SNAPSHOT_PAYLOAD)
    entry = value["tensors"]["layer.weight"]
    for key, item in entry_overrides.items():
        if item is _DELETE:
            del entry[key]
        else:
            entry[key] = item
    return value


_DELETE = object()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({}, "exactly the fields"),
        ({"tensors": {}, "extra": 1}, "exactly the fields"),
        ({"Tensors": {}}, "exactly the fields"),
        ({"tensors": []}, "'tensors' must be an object"),
        ({"tensors": None}, "'tensors' must be an object"),
        ({"tensors": {"w": [BLOB_ID, "float32", [1]]}}, "must be an object"),
        (snapshot_dict(shape=_DELETE), "exactly the fields"),
        (snapshot_dict(extra=True), "exactly the fields"),
        (snapshot_dict(blob=BLOB_ID.upper()), "64 lowercase hex"),
        (snapshot_dict(blob=BLOB_ID[:-1]), "64 lowercase hex"),
        (snapshot_dict(blob=BLOB_ID + "0"), "64 lowercase hex"),
        (snapshot_dict(blob="g" * 64), "64 lowercase hex"),
        (snapshot_dict(blob=None), "64 lowercase hex"),
        (snapshot_dict(blob=1), "64 lowercase hex"),
        (snapshot_dict(dtype="float"), "unknown dtype"),
        (snapshot_dict(dtype="bfloat16"), "unknown dtype"),
        (snapshot_dict(dtype="<f4"), "unknown dtype"),
        (snapshot_dict(dtype="Float32"), "unknown dtype"),
        (snapshot_dict(dtype=4), "unknown dtype"),
        (snapshot_dict(dtype=None), "unknown dtype"),
        (snapshot_dict(dtype=["float32"]), "unknown dtype"),
        (snapshot_dict(shape=[-1]), "non-negative"),
        (snapshot_dict(shape=[2, -3]), "non-negative"),
        (snapshot_dict(shape=[2.0, 3]), "non-negative"),
        (snapshot_dict(shape=[True, 3]), "non-negative"),
        (snapshot_dict(shape=["2", 3]), "non-negative"),
        (snapshot_dict(shape=[None]), "non-negative"),
        (snapshot_dict(shape=6), "a shape must be a list"),
        (snapshot_dict(shape="23"), "a shape must be a list"),
        (snapshot_dict(shape=[1] * 65), "a shape must be a list"),
        (
            {"tensors": {"": {"blob": BLOB_ID, "dtype": "int8", "shape": []}}},
            "non-empty",
        ),
        (
            {"tensors": {"a\nb": {"blob": BLOB_ID, "dtype": "int8", "shape": []}}},
            "control characters",
        ),
        (
            {"tensors": {"a\x7f": {"blob": BLOB_ID, "dtype": "int8", "shape": []}}},
            "control characters",
        ),
        (
            {"tensors": {"w" * 1025: {"blob": BLOB_ID, "dtype": "int8", "shape": []}}},
            "longer than",
        ),
    ],
)
def test_invalid_snapshot_rejected(value: dict[str, Any], match: str) -> None:
    with pytest.raises(MalformedObjectError, match=match):
        Snapshot.decode(canonical_json(value))


def test_snapshot_accepts_edge_entries() -> None:
    value = {
        "tensors": {
            "scalar": {"blob": BLOB_ID, "dtype": "bool", "shape": []},
            "empty": {"blob": BLOB_ID, "dtype": "uint64", "shape": [0, 3]},
            "w" * 1024: {"blob": BLOB_ID, "dtype": "float16", "shape": [1] * 64},
            "\u00e9/\u6a21.\U0001f600": {"blob": BLOB_ID, "dtype": "int8", "shape": [2]},
        }
    }
    payload = canonical_json(value)
    snapshot = Snapshot.decode(payload)
    assert snapshot.encode() == payload
    assert snapshot.tensors["empty"].shape == (0, 3)
    assert snapshot.tensors["empty"].nbytes == 0
    assert snapshot.tensors["scalar"].nbytes == 1


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (commit_dict(signature=_DELETE), "exactly the fields"),
        (commit_dict(author=_DELETE), "exactly the fields"),
        (commit_dict(metadata=_DELETE), "exactly the fields"),
        (commit_dict(extra=1), "exactly the fields"),
        ({}, "exactly the fields"),
        (commit_dict(snapshot=SNAPSHOT_ID.upper()), "snapshot id must be 64 lowercase hex"),
        (commit_dict(snapshot=SNAPSHOT_ID[:63]), "snapshot id must be 64 lowercase hex"),
        (commit_dict(snapshot=None), "snapshot id must be 64 lowercase hex"),
        (commit_dict(snapshot=[SNAPSHOT_ID]), "snapshot id must be 64 lowercase hex"),
        (commit_dict(parents=[PARENT_A, "z" * 64]), "parent id must be 64 lowercase hex"),
        (commit_dict(parents=[" " + PARENT_A[1:]]), "parent id must be 64 lowercase hex"),
        (commit_dict(parents=[PARENT_A + "\n"]), "parent id must be 64 lowercase hex"),
        (commit_dict(parents=[1]), "parent id must be 64 lowercase hex"),
        (commit_dict(parents=[None]), "parent id must be 64 lowercase hex"),
        (commit_dict(parents=[PARENT_A, PARENT_A]), "distinct"),
        (commit_dict(parents=PARENT_A), "'parents' must be a list"),
        (commit_dict(parents={PARENT_A: 1}), "'parents' must be a list"),
        (commit_dict(parents=None), "'parents' must be a list"),
        (commit_dict(timestamp=1.5), "timestamp"),
        (commit_dict(timestamp=1700000000.0), "timestamp"),
        (commit_dict(timestamp="1700000000"), "timestamp"),
        (commit_dict(timestamp=None), "timestamp"),
        (commit_dict(timestamp=-1), "timestamp"),
        (commit_dict(timestamp=2**63), "timestamp"),
        (commit_dict(timestamp=True), "timestamp"),
        (commit_dict(timestamp=False), "timestamp"),
        (commit_dict(signature=SIGNATURE), "must name its author"),
        (commit_dict(author=AUTHOR.upper()), "author must be"),
        (commit_dict(author=AUTHOR[:-2]), "author must be"),
        (commit_dict(author=1), "author must be"),
        (commit_dict(author=AUTHOR, signature=SIGNATURE[:-2]), "signature must be"),
        (commit_dict(author=AUTHOR, signature=SIGNATURE.upper()), "signature must be"),
        (commit_dict(author=AUTHOR, signature=1), "signature must be"),
        (commit_dict(message=None), "message must be text"),
        (commit_dict(message=["x"]), "message must be text"),
        (commit_dict(message=1), "message must be text"),
        (commit_dict(metadata=[]), "'metadata' must be an object"),
        (commit_dict(metadata=None), "'metadata' must be an object"),
        (commit_dict(metadata="{}"), "'metadata' must be an object"),
    ],
)
def test_invalid_commit_rejected(value: dict[str, Any], match: str) -> None:
    with pytest.raises(MalformedObjectError, match=match):
        Commit.decode(canonical_json(value))


@pytest.mark.parametrize(
    "parents",
    [[{}], [[]], [PARENT_A, {"x": 1}], [[PARENT_A]]],
    ids=["dict", "list", "dict-after-id", "nested-list"],
)
def test_unhashable_parents_rejected_not_crashing(parents: list[object]) -> None:
    # Regression: validate() used to call set(parents) before checking each id was a
    # string, so an unhashable parent escaped as TypeError instead of MalformedObjectError.
    with pytest.raises(MalformedObjectError, match="parent id"):
        Commit.decode(canonical_json(commit_dict(parents=parents)))


@pytest.mark.parametrize(
    "payload",
    [
        COMMIT_PAYLOAD.replace(b'"message":"Runde', b'"message":"\\ud800Runde'),
        COMMIT_PAYLOAD.replace(b'"round":3', b'"\\udfff":3'),
        SNAPSHOT_PAYLOAD.replace(b'"layer.bias"', b'"layer.\\ud800"'),
    ],
    ids=["commit-message", "metadata-key", "tensor-name"],
)
def test_lone_surrogates_rejected_not_crashing(payload: bytes) -> None:
    # Regression: canonical_json encoded to UTF-8 outside its try, so a JSON escape of a
    # lone surrogate escaped as UnicodeEncodeError instead of MalformedObjectError.
    with pytest.raises(MalformedObjectError):
        decode_payload("snapshot" if payload.startswith(b'{"tensors"') else "commit", payload)


def test_commit_constructor_validates() -> None:
    with pytest.raises(MalformedObjectError, match="timestamp"):
        Commit(snapshot=ObjectId(SNAPSHOT_ID), timestamp=True)
    with pytest.raises(MalformedObjectError, match="timestamp"):
        Commit(snapshot=ObjectId(SNAPSHOT_ID), timestamp=1.0)  # type: ignore[arg-type]
    with pytest.raises(MalformedObjectError, match="must name its author"):
        Commit(snapshot=ObjectId(SNAPSHOT_ID), signature=SIGNATURE)
    with pytest.raises(MalformedObjectError, match="distinct"):
        Commit(snapshot=ObjectId(SNAPSHOT_ID), parents=(ObjectId(PARENT_A), ObjectId(PARENT_A)))
    with pytest.raises(MalformedObjectError, match="canonical JSON"):
        Commit(snapshot=ObjectId(SNAPSHOT_ID), metadata={"lr": float("nan")})
    with pytest.raises(MalformedObjectError, match="canonical JSON"):
        Commit(snapshot=ObjectId(SNAPSHOT_ID), metadata={"blob": b"raw"})
    with pytest.raises(MalformedObjectError):
        Commit(snapshot=ObjectId(SNAPSHOT_ID), message="\ud800").encode()


def test_commit_accepts_boundary_timestamps() -> None:
    for timestamp in (0, 2**63 - 1):
        commit = Commit(snapshot=ObjectId(SNAPSHOT_ID), timestamp=timestamp)
        assert Commit.decode(commit.encode()) == commit


def test_commit_is_immutable() -> None:
    commit = golden_commit()
    with pytest.raises(AttributeError):
        commit.message = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        commit.metadata["round"] = 4  # type: ignore[index]
    assert commit.encode() == COMMIT_PAYLOAD


@pytest.mark.parametrize(
    "value", [SNAPSHOT_ID.upper(), SNAPSHOT_ID[:-1], SNAPSHOT_ID + "\n", None, 7, b"0" * 64]
)
def test_validate_object_id_rejects(value: object) -> None:
    with pytest.raises(MalformedObjectError, match="64 lowercase hex"):
        validate_object_id(value)


# --- property tests --------------------------------------------------------------------

object_ids = st.text("0123456789abcdef", min_size=64, max_size=64)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
any_json = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)


def assert_only_fedvc_errors(function: Any, data: bytes) -> object:
    """Call ``function(data)``; anything it raises must be a FedvcError."""
    try:
        return function(data)
    except Exception as exc:
        assert isinstance(exc, FedvcError), f"{function.__qualname__} raised {exc!r}"
        return None


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=80),
        st.builds(
            lambda kind, size, payload: f"{kind} {size}".encode() + b"\x00" + payload,
            st.sampled_from(["blob", "snapshot", "commit", "tree", ""]),
            st.text(max_size=6),
            st.binary(max_size=16),
        ),
    )
)
def test_split_object_raises_only_fedvc_errors(data: bytes) -> None:
    result = assert_only_fedvc_errors(split_object, data)
    if result is not None:
        kind, payload = result  # type: ignore[misc]
        assert object_header(kind, len(payload)) + bytes(payload) == data


@FUZZ
@given(st.binary(max_size=200))
def test_snapshot_decode_arbitrary_bytes(data: bytes) -> None:
    assert_only_fedvc_errors(Snapshot.decode, data)


@FUZZ
@given(st.binary(max_size=200))
def test_commit_decode_arbitrary_bytes(data: bytes) -> None:
    assert_only_fedvc_errors(Commit.decode, data)


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field value that is usually valid, so that later checks get exercised too."""
    return st.one_of(valid, valid, any_json)


@FUZZ
@given(
    st.fixed_dictionaries(
        {
            "author": mostly(st.sampled_from([None, AUTHOR])),
            "message": mostly(st.text(max_size=8)),
            "metadata": mostly(st.dictionaries(st.text(max_size=4), any_json, max_size=3)),
            "parents": mostly(st.lists(st.one_of(object_ids, any_json), max_size=3)),
            "signature": mostly(st.sampled_from([None, SIGNATURE])),
            "snapshot": mostly(object_ids),
            "timestamp": mostly(st.integers(-1, 2**63)),
        },
        optional={"extra": any_json},
    )
)
def test_commit_decode_structured_garbage(value: dict[str, Any]) -> None:
    """Canonical JSON with the right field names and wrong values: only FedvcErrors."""
    payload = canonical_json(value)
    commit = assert_only_fedvc_errors(Commit.decode, payload)
    if commit is not None:
        assert isinstance(commit, Commit)
        assert commit.encode() == payload


@FUZZ
@given(
    st.dictionaries(
        st.text(max_size=6),
        mostly(
            st.fixed_dictionaries(
                {
                    "blob": mostly(object_ids),
                    "dtype": mostly(st.sampled_from(["float32", "int8", "bool"])),
                    "shape": mostly(st.lists(st.integers(-2, 3), max_size=3)),
                },
                optional={"extra": any_json},
            )
        ),
        max_size=3,
    ).map(lambda tensors: {"tensors": tensors})
)
def test_snapshot_decode_structured_garbage(value: dict[str, Any]) -> None:
    payload = canonical_json(value)
    snapshot = assert_only_fedvc_errors(Snapshot.decode, payload)
    if snapshot is not None:
        assert isinstance(snapshot, Snapshot)
        assert snapshot.encode() == payload


SIGNED_PAYLOAD = sign_commit(golden_commit(), SigningKey.from_seed(SEED)).encode()
VALID_ENCODINGS = [
    BLOB_ENCODED,
    object_header("snapshot", len(SNAPSHOT_PAYLOAD)) + SNAPSHOT_PAYLOAD,
    object_header("commit", len(COMMIT_PAYLOAD)) + COMMIT_PAYLOAD,
    object_header("commit", len(SIGNED_PAYLOAD)) + SIGNED_PAYLOAD,
]


def mutate(data: st.DataObject, original: bytes) -> bytes:
    operation = data.draw(st.sampled_from(["flip", "insert", "delete", "replace"]))
    index = data.draw(st.integers(0, len(original) - (operation != "insert")))
    if operation == "flip":
        bit = data.draw(st.integers(0, 7))
        return original[:index] + bytes([original[index] ^ (1 << bit)]) + original[index + 1 :]
    if operation == "insert":
        return original[:index] + bytes([data.draw(st.integers(0, 255))]) + original[index:]
    if operation == "delete":
        return original[:index] + original[index + 1 :]
    return original[:index] + bytes([data.draw(st.integers(0, 255))]) + original[index + 1 :]


@FUZZ
@given(st.data())
def test_mutated_encodings_raise_only_fedvc_errors(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(VALID_ENCODINGS))
    mutated = mutate(data, original)
    split = assert_only_fedvc_errors(split_object, mutated)
    if split is not None:
        kind, payload = split  # type: ignore[misc]
        decoded = assert_only_fedvc_errors(lambda p: decode_payload(kind, p), payload)
        if decoded is not None:
            # Whatever a decoder accepts is canonical: it re-encodes to the same bytes.
            assert decoded.encode() == bytes(payload)  # type: ignore[attr-defined]


@FUZZ
@given(st.data())
def test_mutated_payloads_raise_only_fedvc_errors(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from([SNAPSHOT_PAYLOAD, COMMIT_PAYLOAD, SIGNED_PAYLOAD]))
    mutated = mutate(data, original)
    for decoder in (Snapshot.decode, Commit.decode):
        decoded = assert_only_fedvc_errors(decoder, mutated)
        if decoded is not None:
            assert decoded.encode() == mutated  # type: ignore[attr-defined]


hex_keys = st.text("0123456789abcdef", min_size=64, max_size=64)


@st.composite
def commits(draw: st.DrawFn) -> Commit:
    signed = draw(st.booleans())
    author = draw(st.one_of(st.none(), hex_keys)) if not signed else None
    commit = Commit(
        snapshot=ObjectId(draw(object_ids)),
        parents=tuple(ObjectId(p) for p in draw(st.lists(object_ids, max_size=4, unique=True))),
        author=author,
        timestamp=draw(st.integers(0, 2**63 - 1)),
        message=draw(st.text(max_size=40)),
        metadata=draw(st.dictionaries(st.text(max_size=8), json_values, max_size=5)),
    )
    return sign_commit(commit, SigningKey.from_seed(SEED)) if signed else commit


@FUZZ
@given(commits())
def test_commit_round_trip(commit: Commit) -> None:
    payload = commit.encode()
    decoded = Commit.decode(payload)
    assert decoded == commit
    assert decoded.encode() == payload
    assert hash_object("commit", decoded.encode()) == hash_object("commit", payload)
    if commit.signature is not None:
        assert commit_signature_valid(decoded)


@FUZZ
@given(
    st.dictionaries(
        st.text(
            st.characters(codec="utf-8", min_codepoint=32, exclude_characters="\x7f"),
            min_size=1,
            max_size=10,
        ),
        st.builds(
            TensorEntry,
            object_ids.map(ObjectId),
            st.sampled_from(
                ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32"]
            ),
            st.lists(st.integers(0, 2**40), max_size=4).map(tuple),
        ),
        max_size=6,
    )
)
def test_snapshot_round_trip(tensors: dict[str, TensorEntry]) -> None:
    snapshot = Snapshot(tensors)
    payload = snapshot.encode()
    decoded = Snapshot.decode(payload)
    assert decoded == snapshot
    assert list(decoded.tensors) == sorted(tensors)
    assert decoded.encode() == payload


def test_commit_metadata_is_a_private_plain_json_copy() -> None:
    nested = {"metrics": {"accuracy": 0.5}, "tags": ["a"]}
    commit = Commit(snapshot=ObjectId("0" * 64), metadata=nested)
    nested["metrics"]["accuracy"] = 0.9
    nested["tags"].append("b")
    assert commit.metadata == {"metrics": {"accuracy": 0.5}, "tags": ["a"]}
    with pytest.raises(MalformedObjectError, match="text keys"):
        Commit(snapshot=ObjectId("0" * 64), metadata={1: "x"})  # type: ignore[dict-item]
    with pytest.raises(MalformedObjectError):
        Commit(snapshot=ObjectId("0" * 64), message="\ud800")
