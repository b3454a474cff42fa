"""What a store must do: the object and ref protocols, and the errors they raise.

Objects are immutable and named by their hash, so writing one twice is harmless and every
read can prove it got the right bytes. Refs are the only mutable state, and they move only
by compare-and-swap: a writer states the value it expects to replace, and loses cleanly
(``RefConflictError``) if someone else moved the ref first. Both backends (memory, disk)
pass one contract test suite, ``tests/store/test_contract.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from fedvc.errors import FedvcError
from fedvc.objects import (
    OBJECT_KINDS,
    Commit,
    MalformedObjectError,
    ObjectId,
    ObjectKind,
    decode_payload,
)


class StoreError(FedvcError):
    """A store cannot do what was asked (missing object, corrupt bytes, lost race)."""


class ObjectNotFoundError(StoreError):
    def __init__(self, oid: str, detail: str = "") -> None:
        self.oid = oid
        super().__init__(
            f"object {oid} is not in the store{': ' + detail if detail else ''}; "
            "it may never have been written, or the repository is incomplete"
        )


class CorruptObjectError(StoreError):
    """The bytes stored under an id do not hash to that id (or do not decode)."""

    def __init__(self, oid: str, detail: str) -> None:
        self.oid = oid
        super().__init__(
            f"object {oid} is corrupt: {detail}; restore it from another copy of the "
            "repository (fedvc verify lists every damaged object)"
        )


class RefConflictError(StoreError):
    """A compare-and-swap on a ref lost: the ref no longer holds the expected value."""

    def __init__(self, name: str, expected: str | None, actual: str | None) -> None:
        self.name, self.expected, self.actual = name, expected, actual
        super().__init__(
            f"ref {name} was expected at {expected or '(absent)'} but is at "
            f"{actual or '(absent)'}: someone else updated it first"
        )


class InvalidRefNameError(StoreError):
    pass


_REF_BODY = re.compile(r"[A-Za-z0-9._/-]+\Z")


def validate_ref_name(name: str) -> str:
    """Accept Git-like ref names: letters, digits and ``._/-``; no component starts with
    ``.`` or ``-``; no ``..``, empty component or trailing ``.lock``."""
    body = name
    for prefix in ("refs/heads/", "refs/tags/"):
        if isinstance(name, str) and name.startswith(prefix):
            body = name[len(prefix) :]
    if (
        not isinstance(name, str)
        or len(name) > 255
        or not _REF_BODY.match(body)
        or ".." in body
        or any(not part or part[0] in ".-" for part in body.split("/"))
        or body.endswith((".", ".lock"))
    ):
        raise InvalidRefNameError(
            f"invalid ref name {name!r}: use letters, digits and ._/- (no part starting with "
            "'.' or '-', no '..' or '//', not ending in '/', '.' or '.lock')"
        )
    return name


def check_payload(kind: ObjectKind, payload: bytes | memoryview) -> Commit | None:
    """Validate a payload at the door of a store; return the commit if it is one.

    A store never holds a snapshot or commit that fedvc could not decode, so every later
    reader can trust structure as long as the hash matches.
    """
    if kind not in OBJECT_KINDS:
        raise MalformedObjectError(
            f"refusing to store an object of unknown kind {kind!r}: expected one of "
            f"{', '.join(OBJECT_KINDS)}"
        )
    try:
        decoded = decode_payload(kind, payload)
    except MalformedObjectError as exc:
        raise MalformedObjectError(f"refusing to store a malformed {kind}: {exc}") from None
    return decoded if isinstance(decoded, Commit) else None


@dataclass(frozen=True)
class StoredObject:
    """An object read back from a store, its hash already checked."""

    kind: ObjectKind
    payload: memoryview


class ObjectStore(Protocol):
    def put(
        self, kind: ObjectKind, payload: bytes | memoryview, *, hashed: ObjectId | None = None
    ) -> ObjectId:
        """Store an object (once) and return its id.

        ``hashed`` is the id of bytes the caller has just hashed itself (a receiver that
        checked every object on arrival), so they are not hashed a second time.
        """

    def get(self, oid: ObjectId, *, verify: bool = True) -> StoredObject:
        """Read an object and verify its hash; raise ObjectNotFound/CorruptObject.

        ``verify=False`` skips the hash only where the bytes are about to be checked
        anyway: objects sent to a peer, which hashes every object on arrival.
        """

    def get_unverified(self, oid: ObjectId) -> bytes:
        """The raw stored bytes, unchecked: only for diagnosing corruption."""

    def contains(self, oid: ObjectId) -> bool: ...

    def iter_ids(self) -> Iterator[ObjectId]: ...

    def commits_with_prefix(self, prefix: str) -> list[ObjectId]:
        """Ids of indexed commits starting with ``prefix`` (to resolve short ids)."""

    def indexed_commit(self, oid: ObjectId) -> Commit | None:
        """The commit index's copy of a commit, or None if it was never indexed.

        Besides fast look-ups, the index is a second witness: when a commit object is
        edited on disk, ``fedvc verify`` compares it with this copy and names the fields.
        """


class RefStore(Protocol):
    def get_ref(self, name: str) -> ObjectId | None: ...

    def set_ref(self, name: str, new: ObjectId, expected: ObjectId | None) -> None:
        """Compare-and-swap: set ``name`` to ``new`` only if it now holds ``expected``."""

    def delete_ref(self, name: str, expected: ObjectId) -> None: ...

    def list_refs(self, prefix: str = "") -> dict[str, ObjectId]: ...

    def get_setting(self, key: str) -> str | None: ...

    def set_setting(self, key: str, value: str) -> None: ...
