"""The store contract: every object and ref store backend behaves the same.

One suite, parametrized over the memory backend and the disk backend (objects as files,
refs and the commit index in SQLite), plus disk-only checks of the on-disk layout.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedvc.errors import FedvcError
from fedvc.objects import (
    Commit,
    MalformedObjectError,
    ObjectId,
    ObjectKind,
    Snapshot,
    TensorEntry,
    hash_object,
    object_header,
)
from fedvc.repo import Repository
from fedvc.signing import SigningKey, sign_commit
from fedvc.store import (
    CorruptObjectError,
    DiskObjectStore,
    InvalidRefNameError,
    MemoryObjectStore,
    MemoryRefStore,
    ObjectNotFoundError,
    ObjectStore,
    RefConflictError,
    RefStore,
    SqliteRefStore,
    StoreError,
    create_store_dir,
    open_store_dir,
)
from fedvc.store.disk import DATABASE, FORMAT_VERSION
from fedvc.tensors import tensor_bytes


@dataclass
class Backend:
    name: str
    objects: ObjectStore
    refs: RefStore
    corrupt: Callable[[ObjectId, bytes], None]
    """Replace the bytes stored under an id, behind the store's back."""
    path: Path | None = None


def memory_backend() -> Backend:
    objects, refs = MemoryObjectStore(), MemoryRefStore()

    def corrupt(oid: ObjectId, data: bytes) -> None:
        objects._objects[oid] = data  # the only way to damage a memory store

    return Backend("memory", objects, refs, corrupt)


def disk_backend(path: Path, *, durable: bool = True) -> Backend:
    create_store_dir(path)
    objects, refs = open_store_dir(path, durable=durable)

    def corrupt(oid: ObjectId, data: bytes) -> None:
        object_path(path, oid).write_bytes(data)

    return Backend("disk", objects, refs, corrupt, path)


def object_path(store_dir: Path, oid: str) -> Path:
    return store_dir / "objects" / oid[:2] / oid[2:]


@pytest.fixture(params=["memory", "disk", "disk without fsync"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        yield memory_backend()
    else:
        yield disk_backend(tmp_path / "store", durable=request.param == "disk")


@pytest.fixture
def disk(tmp_path: Path) -> Backend:
    return disk_backend(tmp_path / "store")


# --- sample objects --------------------------------------------------------------------

BLOB = bytes(tensor_bytes(np.arange(6, dtype=np.float32)))
BLOB_ID = hash_object("blob", BLOB)
SNAPSHOT = Snapshot({"w": TensorEntry(BLOB_ID, "float32", (2, 3))}).encode()
SNAPSHOT_ID = hash_object("snapshot", SNAPSHOT)


def make_commit(message: str = "", parents: tuple[ObjectId, ...] = (), timestamp: int = 1) -> bytes:
    return Commit(
        snapshot=SNAPSHOT_ID, parents=parents, timestamp=timestamp, message=message
    ).encode()


COMMIT = make_commit("first")
COMMIT_ID = hash_object("commit", COMMIT)
SIGNED = sign_commit(
    Commit.decode(make_commit("signed", (COMMIT_ID,))), SigningKey.from_seed(bytes(32))
).encode()
SAMPLES: list[tuple[ObjectKind, bytes]] = [
    ("blob", BLOB),
    ("blob", b""),
    ("blob", bytes(range(256)) * 3),
    ("snapshot", SNAPSHOT),
    ("snapshot", Snapshot({}).encode()),
    ("commit", COMMIT),
    ("commit", SIGNED),
]
OTHER_ID = ObjectId("f" * 64)


# --- objects ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "payload"), SAMPLES)
def test_put_get_round_trip(backend: Backend, kind: ObjectKind, payload: bytes) -> None:
    oid = backend.objects.put(kind, payload)
    assert oid == hash_object(kind, payload)
    assert backend.objects.contains(oid)
    stored = backend.objects.get(oid)
    assert stored.kind == kind
    assert bytes(stored.payload) == payload
    assert backend.objects.get_unverified(oid) == object_header(kind, len(payload)) + payload


def test_put_accepts_memoryview_and_bytearray(backend: Backend) -> None:
    assert backend.objects.put("blob", memoryview(BLOB)) == BLOB_ID
    assert backend.objects.put("snapshot", bytearray(SNAPSHOT)) == SNAPSHOT_ID
    assert bytes(backend.objects.get(BLOB_ID).payload) == BLOB


def test_put_of_bytes_the_caller_hashed_stores_them_under_that_id(backend: Backend) -> None:
    assert backend.objects.put("blob", BLOB, hashed=BLOB_ID) == BLOB_ID
    stored = backend.objects.get(BLOB_ID)  # reading still verifies
    assert (stored.kind, bytes(stored.payload)) == ("blob", BLOB)


def test_unverified_reads_skip_the_hash_but_verified_ones_catch_damage(backend: Backend) -> None:
    backend.objects.put("blob", BLOB)
    wrong = hash_object("blob", b"something else")
    backend.objects.put("blob", BLOB, hashed=wrong)  # a caller that lied about its hash
    assert bytes(backend.objects.get(wrong, verify=False).payload) == BLOB
    with pytest.raises(CorruptObjectError):
        backend.objects.get(wrong)


def test_put_is_idempotent(backend: Backend) -> None:
    first = backend.objects.put("commit", COMMIT)
    second = backend.objects.put("commit", COMMIT)
    assert first == second == COMMIT_ID
    assert list(backend.objects.iter_ids()) == [COMMIT_ID]
    assert backend.objects.commits_with_prefix("") == [COMMIT_ID]
    if backend.path is not None:
        assert all_object_files(backend.path) == [object_path(backend.path, COMMIT_ID)]


def test_same_bytes_as_different_kinds_are_different_objects(backend: Backend) -> None:
    as_blob = backend.objects.put("blob", SNAPSHOT)
    as_snapshot = backend.objects.put("snapshot", SNAPSHOT)
    assert as_blob != as_snapshot
    assert backend.objects.get(as_blob).kind == "blob"
    assert backend.objects.get(as_snapshot).kind == "snapshot"


def test_iter_ids_and_contains(backend: Backend) -> None:
    ids = {backend.objects.put(kind, payload) for kind, payload in SAMPLES}
    assert len(ids) == len(SAMPLES)
    assert set(backend.objects.iter_ids()) == ids
    assert not backend.objects.contains(OTHER_ID)


@pytest.mark.parametrize("bad", ["..//dev/zero", "../../etc/passwd", "", "AB" * 32, "ab" * 33])
def test_an_id_that_is_not_64_hex_digits_names_no_object(backend: Backend, bad: str) -> None:
    """Ids come from untrusted metadata and the network: none may reach outside the store."""
    assert not backend.objects.contains(ObjectId(bad))
    with pytest.raises(ObjectNotFoundError):
        backend.objects.get(ObjectId(bad))
    with pytest.raises(ObjectNotFoundError):
        backend.objects.get_unverified(ObjectId(bad))


def test_missing_object(backend: Backend) -> None:
    with pytest.raises(ObjectNotFoundError, match=OTHER_ID) as info:
        backend.objects.get(OTHER_ID)
    assert info.value.oid == OTHER_ID
    with pytest.raises(ObjectNotFoundError):
        backend.objects.get_unverified(OTHER_ID)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-1] + bytes([data[-1] ^ 1]),  # one bit of the payload
        lambda data: data.replace(b"commit", b"blob  ", 1),  # another kind, same length
        lambda data: data[:-1],  # truncated: header and length disagree
        lambda data: data + b" ",  # trailing garbage
        lambda data: b"",  # emptied
        lambda data: b"tree" + data[6:],  # unknown kind
        lambda data: make_commit("forged"),  # whole other (headerless) bytes
        lambda data: object_header("commit", len(make_commit("x"))) + make_commit("x"),
    ],
    ids=[
        "bit-flip",
        "kind",
        "truncated",
        "trailing",
        "empty",
        "unknown-kind",
        "headerless",
        "swap",
    ],
)
def test_get_verifies_hash(backend: Backend, damage: Callable[[bytes], bytes]) -> None:
    oid = backend.objects.put("commit", COMMIT)
    backend.corrupt(oid, damage(backend.objects.get_unverified(oid)))
    with pytest.raises(CorruptObjectError, match=oid) as info:
        backend.objects.get(oid)
    assert info.value.oid == oid
    assert isinstance(info.value, StoreError)


def test_corrupt_blob_detected(backend: Backend) -> None:
    oid = backend.objects.put("blob", BLOB)
    data = bytearray(backend.objects.get_unverified(oid))
    data[10] ^= 0x80
    backend.corrupt(oid, bytes(data))
    with pytest.raises(CorruptObjectError, match=f"object {oid} is corrupt"):
        backend.objects.get(oid)
    assert backend.objects.get_unverified(oid) == bytes(data)  # diagnosis still possible


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("snapshot", b""),
        ("snapshot", b"{}"),
        ("snapshot", b'{"tensors": {}}'),
        ("snapshot", b'{"tensors":{"w":{"blob":"x","dtype":"float32","shape":[1]}}}'),
        ("commit", b"not json"),
        ("commit", COMMIT + b"\n"),
        ("commit", COMMIT.replace(b'"timestamp":1', b'"timestamp":true')),
        ("commit", COMMIT.replace(b'"signature":null,', b"")),
        ("commit", SNAPSHOT),
        ("snapshot", COMMIT),
    ],
)
def test_put_refuses_malformed_payloads(backend: Backend, kind: ObjectKind, payload: bytes) -> None:
    with pytest.raises(MalformedObjectError, match=f"refusing to store a malformed {kind}"):
        backend.objects.put(kind, payload)
    assert not backend.objects.contains(hash_object(kind, payload))
    assert list(backend.objects.iter_ids()) == []
    assert backend.objects.commits_with_prefix("") == []


def test_put_refuses_unknown_kind(backend: Backend) -> None:
    # An object of an unknown kind could be stored but never read back (get would call
    # it corrupt), so the store must refuse it at the door.
    with pytest.raises(FedvcError, match="tree"):
        backend.objects.put("tree", b"{}")  # type: ignore[arg-type]
    assert list(backend.objects.iter_ids()) == []


def test_commit_index(backend: Backend) -> None:
    ids = [backend.objects.put("commit", make_commit(f"c{i}", timestamp=i)) for i in range(20)]
    backend.objects.put("blob", BLOB)
    backend.objects.put("snapshot", SNAPSHOT)
    assert backend.objects.commits_with_prefix("") == sorted(ids)
    for oid in ids:
        assert oid in backend.objects.commits_with_prefix(oid[:1])
        assert backend.objects.commits_with_prefix(oid[:12]) == [oid]
        assert backend.objects.commits_with_prefix(oid) == [oid]
        indexed = backend.objects.indexed_commit(oid)
        assert indexed is not None
        assert indexed.encode() == bytes(backend.objects.get(oid).payload)
    for prefix in "0123456789abcdef":
        assert backend.objects.commits_with_prefix(prefix) == [
            o for o in sorted(ids) if o[0] == prefix
        ]
    assert backend.objects.commits_with_prefix(BLOB_ID[:8]) == []  # blobs are not indexed
    assert backend.objects.commits_with_prefix("g") == []
    assert backend.objects.indexed_commit(BLOB_ID) is None
    assert backend.objects.indexed_commit(SNAPSHOT_ID) is None
    assert backend.objects.indexed_commit(OTHER_ID) is None


def test_signed_commit_indexed_with_author(backend: Backend) -> None:
    oid = backend.objects.put("commit", SIGNED)
    indexed = backend.objects.indexed_commit(oid)
    assert indexed == Commit.decode(SIGNED)
    assert indexed is not None and indexed.author is not None


# --- refs ------------------------------------------------------------------------------

A, B, C = (ObjectId(c * 64) for c in "abc")
MAIN = "refs/heads/main"


def test_ref_create_with_expected_none(backend: Backend) -> None:
    assert backend.refs.get_ref(MAIN) is None
    backend.refs.set_ref(MAIN, A, None)
    assert backend.refs.get_ref(MAIN) == A


def test_ref_create_conflicts_when_it_exists(backend: Backend) -> None:
    backend.refs.set_ref(MAIN, A, None)
    with pytest.raises(RefConflictError) as info:
        backend.refs.set_ref(MAIN, B, None)
    assert (info.value.name, info.value.expected, info.value.actual) == (MAIN, None, A)
    assert "(absent)" in str(info.value) and A in str(info.value)
    assert backend.refs.get_ref(MAIN) == A


def test_ref_update_with_right_and_wrong_expected(backend: Backend) -> None:
    backend.refs.set_ref(MAIN, A, None)
    backend.refs.set_ref(MAIN, B, A)
    assert backend.refs.get_ref(MAIN) == B
    with pytest.raises(RefConflictError) as info:
        backend.refs.set_ref(MAIN, C, A)
    assert (info.value.name, info.value.expected, info.value.actual) == (MAIN, A, B)
    assert MAIN in str(info.value) and A in str(info.value) and B in str(info.value)
    assert backend.refs.get_ref(MAIN) == B
    backend.refs.set_ref(MAIN, B, B)  # a no-op move is still a successful swap
    assert backend.refs.get_ref(MAIN) == B


def test_ref_update_of_absent_ref_conflicts(backend: Backend) -> None:
    with pytest.raises(RefConflictError) as info:
        backend.refs.set_ref(MAIN, B, A)
    assert (info.value.expected, info.value.actual) == (A, None)
    assert backend.refs.get_ref(MAIN) is None


def test_ref_delete_with_cas(backend: Backend) -> None:
    backend.refs.set_ref(MAIN, A, None)
    with pytest.raises(RefConflictError) as info:
        backend.refs.delete_ref(MAIN, B)
    assert (info.value.expected, info.value.actual) == (B, A)
    assert backend.refs.get_ref(MAIN) == A
    backend.refs.delete_ref(MAIN, A)
    assert backend.refs.get_ref(MAIN) is None
    with pytest.raises(RefConflictError) as info:
        backend.refs.delete_ref(MAIN, A)
    assert (info.value.expected, info.value.actual) == (A, None)
    backend.refs.set_ref(MAIN, C, None)  # a deleted ref can be created again
    assert backend.refs.get_ref(MAIN) == C


def test_list_refs(backend: Backend) -> None:
    refs = {
        "refs/heads/main": A,
        "refs/heads/feature/x": B,
        "refs/heads/dev": C,
        "refs/tags/v1": A,
        "refs/tags/v1.1": B,
        "HEADLESS": C,
    }
    for name, target in refs.items():
        backend.refs.set_ref(name, target, None)
    assert backend.refs.list_refs() == refs
    assert list(backend.refs.list_refs()) == sorted(refs)
    heads = backend.refs.list_refs("refs/heads/")
    assert heads == {n: t for n, t in refs.items() if n.startswith("refs/heads/")}
    assert list(heads) == sorted(heads)
    assert backend.refs.list_refs("refs/tags/v1") == {"refs/tags/v1": A, "refs/tags/v1.1": B}
    assert backend.refs.list_refs("refs/remotes/") == {}


@pytest.mark.parametrize(
    "name",
    [
        "",
        "refs/heads/",
        "refs/heads/a..b",
        "refs/heads/a//b",
        "refs/heads/x.lock",
        "refs/heads/x.",
        "-x",
        ".x",
        "/refs/heads/x",
        "refs/heads/a b",
        "refs/heads/a\nb",
        "refs/heads/a~1",
        "refs/heads/a^",
        "refs/heads/a:b",
        "refs/heads/a*",
        "refs/heads/\u00e9",
        "refs/heads/" + "x" * 250,
    ],
)
def test_invalid_ref_names_rejected(backend: Backend, name: str) -> None:
    with pytest.raises(InvalidRefNameError, match="invalid ref name"):
        backend.refs.set_ref(name, A, None)
    assert backend.refs.list_refs() == {}


@pytest.mark.parametrize("name", ["refs/heads/-x", "refs/tags/.v1"])
def test_ref_name_after_heads_or_tags_prefix_must_not_start_with_dot_or_dash(
    backend: Backend, name: str
) -> None:
    # KNOWN BUG (left failing on purpose): _REF_NAME's "refs/(heads|tags)/" prefix is
    # optional, so the regex matches these names with the prefix skipped and the
    # first-character rule ("not starting with '.', '/' or '-'") never applies to a branch
    # or tag: Repository.create_branch("-x") is accepted as refs/heads/-x.
    with pytest.raises(InvalidRefNameError, match="invalid ref name"):
        backend.refs.set_ref(name, A, None)


def test_valid_ref_names_accepted(backend: Backend) -> None:
    for name in ["main", "refs/heads/feature/round-3", "refs/tags/v1.0_rc1", "x" * 255]:
        backend.refs.set_ref(name, A, None)
        assert backend.refs.get_ref(name) == A


def test_settings(backend: Backend) -> None:
    assert backend.refs.get_setting("head") is None
    backend.refs.set_setting("head", "main")
    assert backend.refs.get_setting("head") == "main"
    backend.refs.set_setting("head", "dev \u00e9")
    assert backend.refs.get_setting("head") == "dev \u00e9"
    backend.refs.set_setting("empty", "")
    assert backend.refs.get_setting("empty") == ""
    assert backend.refs.get_setting("missing") is None


# --- disk only -------------------------------------------------------------------------


def all_object_files(store_dir: Path) -> list[Path]:
    return sorted(p for p in (store_dir / "objects").rglob("*") if p.is_file())


def test_disk_object_file_is_header_and_payload(disk: Backend) -> None:
    assert disk.path is not None
    for kind, payload in SAMPLES:
        oid = disk.objects.put(kind, payload)
        path = object_path(disk.path, oid)
        assert path.read_bytes() == object_header(kind, len(payload)) + payload
        assert oid == hash_object(kind, payload)
    assert len(all_object_files(disk.path)) == len(SAMPLES)


def test_disk_writes_via_tmp_and_leaves_no_temp_files(
    disk: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert disk.path is not None
    renames: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    ids = [disk.objects.put(kind, payload) for kind, payload in SAMPLES]
    assert [dst for _, dst in renames] == [object_path(disk.path, oid) for oid in ids]
    assert all(src.parent == disk.path / "tmp" for src, _ in renames)
    assert list((disk.path / "tmp").iterdir()) == []
    disk.objects.put("blob", BLOB)  # already stored: no second write
    assert len(renames) == len(SAMPLES)


def test_disk_failed_write_leaves_no_temp_file(
    disk: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert disk.path is not None

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(StoreError, match="No space left"):
        disk.objects.put("blob", BLOB)
    assert list((disk.path / "tmp").iterdir()) == []
    assert not disk.objects.contains(BLOB_ID)


def test_disk_reopen_sees_everything(disk: Backend) -> None:
    assert disk.path is not None
    ids = {disk.objects.put(kind, payload) for kind, payload in SAMPLES}
    disk.refs.set_ref(MAIN, COMMIT_ID, None)
    disk.refs.set_ref("refs/tags/v1", BLOB_ID, None)
    disk.refs.set_setting("head", "main")
    objects, refs = open_store_dir(disk.path)
    assert set(objects.iter_ids()) == ids
    for kind, payload in SAMPLES:
        stored = objects.get(hash_object(kind, payload))
        assert (stored.kind, bytes(stored.payload)) == (kind, payload)
    assert refs.list_refs() == {MAIN: COMMIT_ID, "refs/tags/v1": BLOB_ID}
    assert refs.get_setting("head") == "main"
    assert refs.get_setting("format") == FORMAT_VERSION
    assert objects.commits_with_prefix("") == sorted([COMMIT_ID, hash_object("commit", SIGNED)])
    assert objects.indexed_commit(COMMIT_ID) == Commit.decode(COMMIT)
    refs.set_ref(MAIN, hash_object("commit", SIGNED), COMMIT_ID)  # CAS across connections
    with pytest.raises(RefConflictError):
        disk.refs.set_ref(MAIN, OTHER_ID, COMMIT_ID)


def test_disk_large_object_is_memory_mapped_and_verified(disk: Backend) -> None:
    assert disk.path is not None
    payload = np.random.default_rng(0).bytes((1 << 20) + 17)
    oid = disk.objects.put("blob", payload)
    assert bytes(disk.objects.get(oid).payload) == payload
    path = object_path(disk.path, oid)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptObjectError, match=oid):
        disk.objects.get(oid)


def test_disk_wrong_format_version(disk: Backend) -> None:
    assert disk.path is not None
    disk.refs.set_setting("format", "2")
    with pytest.raises(StoreError, match="format '2'"):
        open_store_dir(disk.path)


def test_disk_missing_format_version(disk: Backend) -> None:
    assert disk.path is not None
    with sqlite3.connect(disk.path / DATABASE) as conn:
        conn.execute("DELETE FROM settings WHERE key = 'format'")
    with pytest.raises(StoreError, match="format None"):
        open_store_dir(disk.path)


def test_disk_open_and_create_errors(tmp_path: Path, disk: Backend) -> None:
    assert disk.path is not None
    with pytest.raises(StoreError, match="not a fedvc repository"):
        open_store_dir(tmp_path / "nothing")
    with pytest.raises(StoreError, match="already holds a fedvc repository"):
        create_store_dir(disk.path)


def test_disk_backend_types(disk: Backend) -> None:
    assert isinstance(disk.objects, DiskObjectStore)
    assert isinstance(disk.refs, SqliteRefStore)


# --- deduplication through a repository ------------------------------------------------


def model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer{i}.weight": rng.standard_normal((4, 3)).astype(np.float32) for i in range(10)}


def test_unchanged_tensors_stored_once_across_commits(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path, clock=lambda: 1_700_000_000)
    assert repo.path is not None
    params = model()
    first = repo.commit_params(params, "first")
    files = set(all_object_files(repo.path))
    assert len(files) == 10 + 1 + 1  # ten blobs, a snapshot, a commit

    changed = dict(params)
    changed["layer7.weight"] = params["layer7.weight"] + 1
    second = repo.commit_params(changed, "second")
    new_files = set(all_object_files(repo.path)) - files
    new_ids = {path.parent.name + path.name for path in new_files}
    new_blob = hash_object("blob", bytes(tensor_bytes(changed["layer7.weight"])))
    snapshot = repo.get_commit(second).snapshot
    assert new_ids == {new_blob, snapshot, second}
    assert repo.get_commit(second).parents == (first,)

    kinds = {oid: repo.objects.get(oid).kind for oid in new_ids}
    assert sorted(kinds.values()) == ["blob", "commit", "snapshot"]
    old = repo.get_snapshot(repo.get_commit(first).snapshot).tensors
    new = repo.get_snapshot(snapshot).tensors
    assert [n for n in new if new[n].blob != old[n].blob] == ["layer7.weight"]


def test_identical_tensors_under_different_names_share_a_blob(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path, clock=lambda: 1_700_000_000)
    assert repo.path is not None
    weight = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    oid = repo.commit_params(
        {"encoder.weight": weight, "decoder.weight": weight.copy(), "bias": np.zeros(4)}
    )
    tensors = repo.get_snapshot(repo.get_commit(oid).snapshot).tensors
    assert tensors["encoder.weight"].blob == tensors["decoder.weight"].blob
    assert tensors["bias"].blob != tensors["encoder.weight"].blob
    assert len(all_object_files(repo.path)) == 2 + 1 + 1  # two blobs, a snapshot, a commit
    read = repo.read_params(oid)
    np.testing.assert_array_equal(read["encoder.weight"], weight)
    np.testing.assert_array_equal(read["decoder.weight"], weight)


@pytest.mark.parametrize("durable, synced", [(True, True), (False, False)])
def test_a_durable_store_fsyncs_each_object_and_a_scratch_one_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, synced: bool
) -> None:
    backend = disk_backend(tmp_path / "store", durable=durable)
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd))
    backend.objects.put("blob", BLOB)
    assert bool(calls) == synced
    assert bytes(backend.objects.get(BLOB_ID).payload) == BLOB  # written whole either way
