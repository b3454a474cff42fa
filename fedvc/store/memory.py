"""In-memory object and ref stores: simulations, tests, and throwaway repositories.

They keep the disk store's contract exactly (hash checked on every read, compare-and-swap
refs, a commit index), so code tested against memory behaves the same on disk.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from fedvc.objects import Commit, ObjectId, ObjectKind, hash_object, object_header, split_object
from fedvc.store.base import (
    CorruptObjectError,
    ObjectNotFoundError,
    RefConflictError,
    StoredObject,
    check_payload,
    validate_ref_name,
)


class MemoryObjectStore:
    def __init__(self) -> None:
        self._objects: dict[ObjectId, bytes] = {}
        self._commits: dict[ObjectId, Commit] = {}
        self._lock = threading.Lock()

    def put(
        self, kind: ObjectKind, payload: bytes | memoryview, *, hashed: ObjectId | None = None
    ) -> ObjectId:
        commit = check_payload(kind, payload)
        oid = hash_object(kind, payload) if hashed is None else hashed
        with self._lock:
            if oid not in self._objects:
                self._objects[oid] = b"".join((object_header(kind, len(payload)), payload))
                if commit is not None:
                    self._commits[oid] = commit
        return oid

    def get(self, oid: ObjectId, *, verify: bool = True) -> StoredObject:
        data = self.get_unverified(oid)
        try:
            kind, payload = split_object(data)
        except Exception as exc:
            raise CorruptObjectError(oid, str(exc)) from None
        actual = hash_object(kind, payload) if verify else oid
        if actual != oid:
            raise CorruptObjectError(oid, f"its bytes hash to {actual}")
        return StoredObject(kind, payload)

    def get_unverified(self, oid: ObjectId) -> bytes:
        try:
            return self._objects[oid]
        except KeyError:
            raise ObjectNotFoundError(oid) from None

    def contains(self, oid: ObjectId) -> bool:
        return oid in self._objects

    def iter_ids(self) -> Iterator[ObjectId]:
        return iter(list(self._objects))

    def commits_with_prefix(self, prefix: str) -> list[ObjectId]:
        return sorted(oid for oid in self._commits if oid.startswith(prefix))

    def indexed_commit(self, oid: ObjectId) -> Commit | None:
        return self._commits.get(oid)


class MemoryRefStore:
    def __init__(self) -> None:
        self._refs: dict[str, ObjectId] = {}
        self._settings: dict[str, str] = {}
        self._lock = threading.Lock()

    def get_ref(self, name: str) -> ObjectId | None:
        return self._refs.get(name)

    def set_ref(self, name: str, new: ObjectId, expected: ObjectId | None) -> None:
        validate_ref_name(name)
        with self._lock:
            actual = self._refs.get(name)
            if actual != expected:
                raise RefConflictError(name, expected, actual)
            self._refs[name] = new

    def delete_ref(self, name: str, expected: ObjectId) -> None:
        with self._lock:
            actual = self._refs.get(name)
            if actual != expected:
                raise RefConflictError(name, expected, actual)
            del self._refs[name]

    def list_refs(self, prefix: str = "") -> dict[str, ObjectId]:
        return {n: t for n, t in sorted(self._refs.items()) if n.startswith(prefix)}

    def get_setting(self, key: str) -> str | None:
        return self._settings.get(key)

    def set_setting(self, key: str, value: str) -> None:
        self._settings[key] = value
