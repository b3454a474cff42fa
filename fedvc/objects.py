"""Immutable, content-addressed objects: blobs, snapshots and commits.

Every object is stored as ``<kind> <size>\\0<payload>`` and named by the SHA-256 of those
bytes, exactly as Git names its objects. A blob's payload is one tensor's canonical bytes
(``tensors.tensor_bytes``); a snapshot's and a commit's payloads are canonical JSON
(UTF-8, keys sorted, no whitespace, finite numbers only), so equal content always has one
encoding and one id. Decoders accept only canonical bytes: they re-encode what they parsed
and reject anything that differs, so no two encodings of one value can coexist in a store.

A commit's signature covers ``SIGNING_PREFIX`` + the canonical JSON of every field but the
signature; the commit id covers the signature too, so a re-signed commit is a new commit.
See README.md, "Storage format", for the specification these functions implement.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NewType, cast, get_args

from fedvc.errors import FedvcError
from fedvc.tensors import TensorError, byte_length, numpy_dtype, validate_name, validate_shape

ObjectId = NewType("ObjectId", str)
"""64 lowercase hex digits: SHA-256 of an object's encoded bytes."""

ObjectKind = Literal["blob", "snapshot", "commit"]
OBJECT_KINDS: tuple[str, ...] = get_args(ObjectKind)

SIGNING_PREFIX = b"fedvc commit signature v1\x00"
"""Domain separation: a commit signature can never be replayed as any other signature."""

MAX_HEADER = 32
MAX_PARENTS = 100_000
_OBJECT_ID = re.compile(r"[0-9a-f]{64}\Z")
_PUBLIC_KEY = re.compile(r"[0-9a-f]{64}\Z")
_SIGNATURE = re.compile(r"[0-9a-f]{128}\Z")


class MalformedObjectError(FedvcError):
    """Bytes that do not decode to a valid, canonically encoded fedvc object."""


def is_object_id(value: object) -> bool:
    """Whether ``value`` is 64 lowercase hex digits, the only form an object id takes."""
    return isinstance(value, str) and _OBJECT_ID.match(value) is not None


def validate_object_id(value: object, what: str = "object id") -> ObjectId:
    """Return ``value`` as an ``ObjectId`` if it is 64 lowercase hex digits."""
    if not isinstance(value, str) or not is_object_id(value):
        raise MalformedObjectError(f"{what} must be 64 lowercase hex digits, got {value!r}")
    return ObjectId(value)


def object_header(kind: ObjectKind, size: int) -> bytes:
    """The header that precedes an object's payload on disk and in its hash."""
    return f"{kind} {size}\x00".encode("ascii")


def object_hasher(kind: ObjectKind, size: int) -> hashlib._Hash:
    """A SHA-256 that has taken the header of a ``size``-byte object: feed it the payload,
    in one piece or as it arrives, and its hex digest is the object's id."""
    return hashlib.sha256(object_header(kind, size))


def hash_object(kind: ObjectKind, payload: bytes | memoryview) -> ObjectId:
    """The id of an object, hashed without concatenating header and payload."""
    digest = object_hasher(kind, len(payload))
    digest.update(payload)
    return ObjectId(digest.hexdigest())


def split_object(data: bytes | memoryview) -> tuple[ObjectKind, memoryview]:
    """Split encoded object bytes into kind and payload, validating the header."""
    view = memoryview(data)
    head = bytes(view[:MAX_HEADER])
    end = head.find(b"\x00")
    if end < 0:
        raise MalformedObjectError(
            "object header missing: expected '<kind> <size>\\0' within the first "
            f"{MAX_HEADER} bytes, got {head[:16]!r}"
        )
    kind_text, _, size_text = head[:end].decode("ascii", "replace").partition(" ")
    if kind_text not in OBJECT_KINDS:
        raise MalformedObjectError(
            f"unknown object kind {kind_text!r}: expected one of {', '.join(OBJECT_KINDS)}"
        )
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise MalformedObjectError(f"object size {size_text!r} is not a canonical decimal")
    payload = view[end + 1 :]
    if int(size_text) != len(payload):
        raise MalformedObjectError(
            f"{kind_text} header says {size_text} bytes but {len(payload)} follow (truncated?)"
        )
    return cast(ObjectKind, kind_text), payload


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` as canonical JSON: sorted keys, no spaces, UTF-8, finite numbers."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")  # UnicodeEncodeError (a lone surrogate) is a ValueError
    except (TypeError, ValueError, RecursionError) as exc:
        raise MalformedObjectError(f"value cannot be encoded as canonical JSON: {exc}") from exc


def parse_canonical_json(payload: bytes | memoryview, kind: str) -> dict[str, Any]:
    """Parse a JSON object and insist that its encoding is the canonical one."""
    raw = bytes(payload)
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedObjectError(f"{kind} payload is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedObjectError(
            f"{kind} payload must be a JSON object, got {type(value).__name__}"
        )
    if canonical_json(value) != raw:
        raise MalformedObjectError(
            f"{kind} payload is valid JSON but not canonical (sorted keys, no spaces, "
            "shortest numbers, no duplicate keys); it was not written by fedvc"
        )
    return value


def _require_keys(obj: Mapping[str, Any], keys: set[str], what: str) -> None:
    if set(obj) != keys:
        raise MalformedObjectError(
            f"{what} must have exactly the fields {sorted(keys)}, got {sorted(obj)}"
        )


@dataclass(frozen=True)
class TensorEntry:
    """One tensor in a snapshot: which blob holds its bytes, and how to read them."""

    blob: ObjectId
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return byte_length(self.dtype, self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"blob": self.blob, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, name: str, value: object) -> TensorEntry:
        if not isinstance(value, dict):
            raise MalformedObjectError(f"snapshot entry {name!r} must be an object")
        _require_keys(value, {"blob", "dtype", "shape"}, f"snapshot entry {name!r}")
        try:
            numpy_dtype(value["dtype"])
            shape = validate_shape(value["shape"])
        except TensorError as exc:
            raise MalformedObjectError(f"snapshot entry {name!r}: {exc}") from None
        blob = validate_object_id(value["blob"], f"blob id of {name!r}")
        return cls(blob=blob, dtype=value["dtype"], shape=shape)


@dataclass(frozen=True)
class Snapshot:
    """A whole model at one point: tensor name → ``TensorEntry``, sorted by name."""

    tensors: Mapping[str, TensorEntry]

    def __post_init__(self) -> None:
        ordered = {name: self.tensors[name] for name in sorted(self.tensors)}
        object.__setattr__(self, "tensors", MappingProxyType(ordered))

    def encode(self) -> bytes:
        return canonical_json({"tensors": {n: e.to_json() for n, e in self.tensors.items()}})

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Snapshot:
        value = parse_canonical_json(payload, "snapshot")
        _require_keys(value, {"tensors"}, "snapshot")
        tensors = value["tensors"]
        if not isinstance(tensors, dict):
            raise MalformedObjectError("snapshot field 'tensors' must be an object")
        entries: dict[str, TensorEntry] = {}
        for name, entry in tensors.items():
            try:
                validate_name(name)
            except TensorError as exc:
                raise MalformedObjectError(f"snapshot: {exc}") from None
            entries[name] = TensorEntry.from_json(name, entry)
        return cls(entries)

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.tensors.values())


COMMIT_FIELDS = {"author", "message", "metadata", "parents", "signature", "snapshot", "timestamp"}


@dataclass(frozen=True)
class Commit:
    """A snapshot with its history and provenance.

    ``parents[0]`` is the commit this one branched from (a round's base); a round's merge
    commit lists the base and then every admitted update. ``author`` is the signer's raw
    Ed25519 public key in hex (``None`` for an unsigned commit), so a signature can be
    checked from the commit alone; ``fedvc.signing`` decides whether that key is trusted.
    """

    snapshot: ObjectId
    parents: tuple[ObjectId, ...] = ()
    author: str | None = None
    timestamp: int = 0
    message: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    signature: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "parents", tuple(self.parents))
        if not isinstance(self.metadata, Mapping) or not all(
            isinstance(k, str) for k in self.metadata
        ):
            raise MalformedObjectError("commit metadata must be a mapping with text keys")
        # a private deep copy in plain JSON types: nothing the caller keeps can change it
        plain = json.loads(canonical_json(dict(self.metadata)))
        object.__setattr__(self, "metadata", MappingProxyType(plain))
        self.validate()

    def validate(self) -> None:
        """Check every field's type and form; raise ``MalformedObjectError`` otherwise."""
        validate_object_id(self.snapshot, "commit snapshot id")
        for parent in self.parents:  # ids first: set() below needs hashable strings
            validate_object_id(parent, "commit parent id")
        if len(self.parents) > MAX_PARENTS or len(set(self.parents)) != len(self.parents):
            raise MalformedObjectError(
                f"commit parents must be distinct and at most {MAX_PARENTS}, got {len(self.parents)}"
            )
        if self.author is not None and not (
            isinstance(self.author, str) and _PUBLIC_KEY.match(self.author)
        ):
            raise MalformedObjectError(
                f"commit author must be a 64-hex Ed25519 public key or null, got {self.author!r}"
            )
        if self.signature is not None and not (
            isinstance(self.signature, str) and _SIGNATURE.match(self.signature)
        ):
            raise MalformedObjectError("commit signature must be 128 lowercase hex digits or null")
        if self.signature is not None and self.author is None:
            raise MalformedObjectError("a signed commit must name its author key")
        if type(self.timestamp) is not int or not 0 <= self.timestamp < 2**63:
            raise MalformedObjectError(
                f"commit timestamp must be a non-negative integer (Unix seconds), got {self.timestamp!r}"
            )
        if not isinstance(self.message, str):
            raise MalformedObjectError(
                f"commit message must be text, got {type(self.message).__name__}"
            )
        canonical_json(self.message)  # raises on text that is not valid Unicode (the
        # metadata was encoded once already, in __post_init__)

    def unsigned_json(self) -> dict[str, Any]:
        return {
            "author": self.author,
            "message": self.message,
            "metadata": dict(self.metadata),
            "parents": list(self.parents),
            "snapshot": self.snapshot,
            "timestamp": self.timestamp,
        }

    def signing_bytes(self) -> bytes:
        """The exact bytes an author signs: everything but the signature, domain-separated."""
        return SIGNING_PREFIX + canonical_json(self.unsigned_json())

    def encode(self) -> bytes:
        return canonical_json({**self.unsigned_json(), "signature": self.signature})

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Commit:
        value = parse_canonical_json(payload, "commit")
        _require_keys(value, COMMIT_FIELDS, "commit")
        if not isinstance(value["parents"], list):
            raise MalformedObjectError("commit field 'parents' must be a list")
        if not isinstance(value["metadata"], dict):
            raise MalformedObjectError("commit field 'metadata' must be an object")
        return cls(
            snapshot=value["snapshot"],
            parents=tuple(value["parents"]),
            author=value["author"],
            timestamp=value["timestamp"],
            message=value["message"],
            metadata=value["metadata"],
            signature=value["signature"],
        )


def decode_payload(kind: ObjectKind, payload: bytes | memoryview) -> Snapshot | Commit | None:
    """Decode a snapshot or commit payload (blobs have no structure: ``None``)."""
    if kind == "snapshot":
        return Snapshot.decode(payload)
    if kind == "commit":
        return Commit.decode(payload)
    return None


def short_id(oid: str, length: int = 12) -> str:
    """The abbreviated form shown to people (like Git's short hashes)."""
    return oid[:length]
