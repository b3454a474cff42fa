"""The on-disk store: one file per object, refs and a commit index in SQLite.

Layout of a repository directory (``.fedvc/`` in a working directory, or a bare one)::

    fedvc.db            SQLite: refs, settings, commit index
    objects/ab/cdef...  one file per object: ``<kind> <size>\\0<payload>``, named by its hash
    tmp/                objects being written

Objects are written once: to ``tmp/``, flushed and fsynced, renamed into place, and the
directory fsynced, so a crash leaves either the whole object or none of it. Every read
hashes the bytes again, so a flipped bit on disk is caught before it reaches a model.
Large objects are memory-mapped and handed out as zero-copy views. Refs move by a single
conditional SQL statement, which SQLite makes atomic across processes.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from fedvc.objects import (
    Commit,
    ObjectId,
    ObjectKind,
    hash_object,
    is_object_id,
    object_header,
    split_object,
)
from fedvc.store.base import (
    CorruptObjectError,
    ObjectNotFoundError,
    RefConflictError,
    StoredObject,
    StoreError,
    check_payload,
    validate_ref_name,
)

DATABASE = "fedvc.db"
FORMAT_VERSION = "1"
MMAP_THRESHOLD = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS refs (name TEXT PRIMARY KEY, target TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commits (
    id TEXT PRIMARY KEY, timestamp INTEGER NOT NULL, author TEXT, payload BLOB NOT NULL
);
"""


def is_store_dir(path: Path) -> bool:
    return (path / DATABASE).is_file() and (path / "objects").is_dir()


class Database:
    """One SQLite connection shared by a repository's object index and ref store."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                path, timeout=60, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the repository database {path}: {exc}") from exc
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL under WAL never corrupts the database, but may lose the last
            # transactions to a power cut; FULL syncs every one of them
            self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot open the repository database {path}: {exc}") from exc

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> int:
        """Run a statement; return how many rows it changed."""
        with self._lock:
            try:
                return self._conn.execute(sql, params).rowcount
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise StoreError(f"repository database {self.path}: {exc}") from exc

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run a query and fetch every row while holding the lock (the connection is shared)."""
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"repository database {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the connection (idempotent); SQLite then folds its write-ahead log back."""
        with self._lock:
            self._conn.close()


def _freshened(path: Path) -> bool:
    """Touch the object file at ``path`` if it exists, so that ``fedvc gc`` (which keeps
    recent files) does not remove an object that is being written again right now."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError:  # a store this process may read but not touch: the object is there
        return path.is_file()
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskObjectStore:
    """Objects as files under ``objects/``, each written to ``tmp/`` and renamed into place.

    ``durable`` (the default) also fsyncs every file and directory before the object is
    visible, so objects survive a power cut. Without it a write is still atomic for every
    other process (a crashed process leaves no partial object), which is enough for a
    scratch history that can be recomputed, such as a simulation's, at a fraction of the
    cost: a round of many small updates writes hundreds of files.
    """

    def __init__(self, root: Path, db: Database, *, durable: bool = True) -> None:
        self.root = root
        self.durable = durable
        self._objects = root / "objects"
        self._tmp = root / "tmp"
        self._db = db

    def _path(self, oid: str) -> Path:
        """Where object ``oid`` lives. Ids often come from untrusted metadata or the
        network: anything but 64 hex digits could name a path outside ``objects/``
        (``"..//dev/zero"``), so it is refused here, where every read and write passes."""
        if not is_object_id(oid):
            raise ObjectNotFoundError(
                str(oid)[:80], "that is not an object id (64 lowercase hex digits)"
            )
        return self._objects / oid[:2] / oid[2:]

    def put(
        self, kind: ObjectKind, payload: bytes | memoryview, *, hashed: ObjectId | None = None
    ) -> ObjectId:
        commit = check_payload(kind, payload)
        oid = hash_object(kind, payload) if hashed is None else hashed
        path = self._path(oid)
        if not _freshened(path):
            self._write_atomic(path, object_header(kind, len(payload)), payload)
        if commit is not None:
            self._index_commit(oid, commit)
        return oid

    def _write_atomic(self, path: Path, header: bytes, payload: bytes | memoryview) -> None:
        self._tmp.mkdir(exist_ok=True)
        tmp = self._tmp / f"{path.parent.name}{path.name}.{uuid.uuid4().hex}"
        try:
            with open(tmp, "xb") as file:
                file.write(header)
                file.write(payload)
                file.flush()
                if self.durable:
                    os.fsync(file.fileno())
            if not path.parent.is_dir():
                path.parent.mkdir(exist_ok=True)
                if self.durable:  # the new fan-out directory itself must survive a crash
                    _fsync_dir(self._objects)
            os.replace(tmp, path)  # a concurrent writer of the same id wrote the same bytes
            if self.durable:
                _fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write object {path.parent.name}{path.name}: {exc}") from exc

    def _index_commit(self, oid: ObjectId, commit: Commit) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO commits (id, timestamp, author, payload) VALUES (?, ?, ?, ?)",
            (oid, commit.timestamp, commit.author, commit.encode()),
        )

    def get(self, oid: ObjectId, *, verify: bool = True) -> StoredObject:
        data = self._read(oid)
        try:
            kind, payload = split_object(memoryview(data))
        except Exception as exc:
            raise CorruptObjectError(oid, str(exc)) from None
        actual = hash_object(kind, payload) if verify else oid
        if actual != oid:
            raise CorruptObjectError(oid, f"its bytes hash to {actual}")
        return StoredObject(kind, payload)

    def _read(self, oid: ObjectId) -> bytes | mmap.mmap:
        path = self._path(oid)
        try:
            with open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size < MMAP_THRESHOLD:
                    return file.read()
                return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise ObjectNotFoundError(oid) from None
        except OSError as exc:
            raise StoreError(f"cannot read object {oid}: {exc}") from exc

    def get_unverified(self, oid: ObjectId) -> bytes:
        data = self._read(oid)
        if isinstance(data, bytes):
            return data
        with data:
            return data[:]

    def contains(self, oid: ObjectId) -> bool:
        return is_object_id(oid) and self._path(oid).is_file()

    def iter_ids(self) -> Iterator[ObjectId]:
        for fan in sorted(self._objects.iterdir()):
            for file in sorted(fan.iterdir()):
                yield ObjectId(fan.name + file.name)

    def close(self) -> None:
        self._db.close()

    def stat(self, oid: ObjectId) -> tuple[float, int]:
        """When object ``oid`` was last written (or written again) and its size on disk."""
        try:
            info = self._path(oid).stat()
        except FileNotFoundError:
            raise ObjectNotFoundError(oid) from None
        return info.st_mtime, info.st_size

    def remove(self, oid: ObjectId) -> None:
        """Delete object ``oid`` (and its commit index entry). Only ``fedvc.gc`` calls
        this, for objects no ref reaches: a store is otherwise append-only."""
        self._db.execute("DELETE FROM commits WHERE id = ?", (oid,))
        self._path(oid).unlink(missing_ok=True)

    def temp_files(self, *, older_than: float) -> list[Path]:
        """Files in ``tmp/`` last written before ``older_than``: objects whose writer
        crashed before renaming them into place."""
        if not self._tmp.is_dir():
            return []
        return sorted(
            path
            for path in self._tmp.iterdir()
            if path.is_file() and path.stat().st_mtime < older_than
        )

    def commits_with_prefix(self, prefix: str) -> list[ObjectId]:
        rows = self._db.query(
            "SELECT id FROM commits WHERE id >= ? AND id < ? ORDER BY id",
            (prefix, prefix + "g"),
        )
        return [ObjectId(str(row[0])) for row in rows]

    def indexed_commit(self, oid: ObjectId) -> Commit | None:
        rows = self._db.query("SELECT payload FROM commits WHERE id = ?", (oid,))
        return Commit.decode(cast(bytes, rows[0][0])) if rows else None


class SqliteRefStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def get_ref(self, name: str) -> ObjectId | None:
        rows = self._db.query("SELECT target FROM refs WHERE name = ?", (name,))
        return ObjectId(str(rows[0][0])) if rows else None

    def set_ref(self, name: str, new: ObjectId, expected: ObjectId | None) -> None:
        validate_ref_name(name)
        if expected is None:
            try:
                self._db.execute("INSERT INTO refs (name, target) VALUES (?, ?)", (name, new))
                return
            except sqlite3.IntegrityError:
                raise RefConflictError(name, None, self.get_ref(name)) from None
        changed = self._db.execute(
            "UPDATE refs SET target = ? WHERE name = ? AND target = ?", (new, name, expected)
        )
        if changed != 1:
            raise RefConflictError(name, expected, self.get_ref(name))

    def delete_ref(self, name: str, expected: ObjectId) -> None:
        changed = self._db.execute(
            "DELETE FROM refs WHERE name = ? AND target = ?", (name, expected)
        )
        if changed != 1:
            raise RefConflictError(name, expected, self.get_ref(name))

    def list_refs(self, prefix: str = "") -> dict[str, ObjectId]:
        rows = self._db.query(
            "SELECT name, target FROM refs WHERE substr(name, 1, ?) = ? ORDER BY name",
            (len(prefix), prefix),
        )
        return {str(name): ObjectId(str(target)) for name, target in rows}

    def get_setting(self, key: str) -> str | None:
        rows = self._db.query("SELECT value FROM settings WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_setting(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def create_store_dir(path: Path) -> None:
    """Lay out an empty store in ``path`` (which may exist but must not hold one)."""
    if is_store_dir(path):
        raise StoreError(f"{path} already holds a fedvc repository")
    (path / "objects").mkdir(parents=True, exist_ok=True)
    (path / "tmp").mkdir(exist_ok=True)
    # The database is complete before it has its name: a reader that finds fedvc.db (another
    # process opening the repository while it is created) never sees it half made.
    draft = path / "tmp" / f"{DATABASE}.{uuid.uuid4().hex}"
    db = Database(draft)
    try:
        db.execute(
            "INSERT OR IGNORE INTO settings (key, value) VALUES ('format', ?)", (FORMAT_VERSION,)
        )
    finally:
        db.close()
    os.replace(draft, path / DATABASE)
    _fsync_dir(path)


def open_store_dir(path: Path, *, durable: bool = True) -> tuple[DiskObjectStore, SqliteRefStore]:
    """Open the object and ref stores of an existing store directory."""
    if not is_store_dir(path):
        raise StoreError(f"{path} is not a fedvc repository (no {DATABASE} and objects/)")
    db = Database(path / DATABASE, durable=durable)
    refs = SqliteRefStore(db)
    try:
        version = refs.get_setting("format")
    except StoreError:
        db.close()
        raise
    if version != FORMAT_VERSION:
        db.close()
        raise StoreError(
            f"{path} uses repository format {version!r}, this fedvc reads format "
            f"{FORMAT_VERSION!r}; upgrade fedvc"
        )
    return DiskObjectStore(path, db, durable=durable), refs
