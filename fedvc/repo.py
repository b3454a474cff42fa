"""``Repository``: models in, models out, history and refs, over any object and ref store.

This is the porcelain every command and the round engine use: ``commit_params`` turns a
state_dict into blobs, a snapshot and a (signed) commit and moves a branch by
compare-and-swap; ``read_params`` turns any revision back into zero-copy arrays.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedvc import graph
from fedvc.errors import FedvcError
from fedvc.objects import Commit, ObjectId, Snapshot, TensorEntry, short_id
from fedvc.signing import SigningKey, sign_commit
from fedvc.store.base import (
    CorruptObjectError,
    ObjectStore,
    RefConflictError,
    RefStore,
    validate_ref_name,
)
from fedvc.store.disk import create_store_dir, is_store_dir, open_store_dir
from fedvc.store.memory import MemoryObjectStore, MemoryRefStore
from fedvc.tensors import TensorError, as_param_map, dtype_name, tensor_bytes, tensor_from_bytes

REPO_DIR = ".fedvc"
DEFAULT_BRANCH = "main"
MIN_PREFIX = 4
_REVISION = re.compile(r"(?P<base>[^~^]+)(?P<steps>(?:[~^][0-9]*)*)\Z")
_STEP = re.compile(r"([~^])([0-9]*)")


class RepositoryNotFoundError(FedvcError):
    pass


class RevisionError(FedvcError):
    """A revision that names no commit, or more than one."""


class BranchMovedError(RefConflictError):
    """A commit was stored, but its branch moved meanwhile: the commit is not on it."""

    def __init__(self, branch: str, commit: ObjectId, conflict: RefConflictError) -> None:
        super().__init__(conflict.name, conflict.expected, conflict.actual)
        self.commit = commit
        self.args = (
            f"branch {branch} moved to {short_id(conflict.actual or '')} while commit "
            f"{short_id(commit)} was being written on top of "
            f"{short_id(conflict.expected or '') or '(no commit)'}. Nothing was lost: the "
            f"commit is stored. Commit again on the new tip, or keep this one with "
            f"'fedvc branch NAME {short_id(commit)}'.",
        )


def default_clock() -> float:
    return time.time()


class Repository:
    """A model repository: an object store, a ref store, and a clock.

    ``path`` is the store directory for disk repositories (``None`` in memory). Time is
    injected so that simulations and tests produce the same commit ids on every run.
    """

    def __init__(
        self,
        objects: ObjectStore,
        refs: RefStore,
        *,
        path: Path | None = None,
        clock: Callable[[], float] = default_clock,
    ) -> None:
        self.objects = objects
        self.refs = refs
        self.path = path
        self.clock = clock
        self._commit_cache = functools.lru_cache(maxsize=4096)(self._load_commit)
        self._snapshot_cache = functools.lru_cache(maxsize=256)(self._load_snapshot)

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def memory(cls, *, clock: Callable[[], float] = default_clock) -> Repository:
        return cls(MemoryObjectStore(), MemoryRefStore(), clock=clock)

    @classmethod
    def init(
        cls,
        path: str | Path,
        *,
        bare: bool = False,
        branch: str = DEFAULT_BRANCH,
        clock: Callable[[], float] = default_clock,
        durable: bool = True,
    ) -> Repository:
        """Create a repository in ``path/.fedvc`` (or in ``path`` itself when ``bare``).

        ``durable=False`` skips the fsyncs that make writes survive a power cut (see
        ``DiskObjectStore``): for scratch histories that can be recomputed.
        """
        validate_ref_name(branch)
        store_dir = Path(path) if bare else Path(path) / REPO_DIR
        create_store_dir(store_dir)
        repo = cls.open(store_dir, clock=clock, durable=durable)
        repo.refs.set_setting("head", branch)
        return repo

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        clock: Callable[[], float] = default_clock,
        durable: bool = True,
    ) -> Repository:
        """Open the repository in ``path``: a store directory or a directory holding .fedvc."""
        path = Path(path)
        store_dir = path if is_store_dir(path) else path / REPO_DIR
        if not is_store_dir(store_dir):
            raise RepositoryNotFoundError(
                f"no fedvc repository in {path}: create one with 'fedvc init {path}'"
            )
        objects, refs = open_store_dir(store_dir, durable=durable)
        return cls(objects, refs, path=store_dir, clock=clock)

    @classmethod
    def open_or_init(cls, path: str | Path) -> Repository:
        """The repository in ``path``, or a new bare one when ``path`` is missing or empty:
        how a server or a client keeps its store. A directory with other files in it is
        refused rather than filled with a store's files."""
        path = Path(path)
        if is_store_dir(path) or is_store_dir(path / REPO_DIR):
            return cls.open(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RepositoryNotFoundError(
                f"{path} exists, is not empty and holds no fedvc repository: point at an "
                "empty or new directory"
            )
        return cls.init(path, bare=True)

    @classmethod
    def discover(
        cls, start: str | Path = ".", *, clock: Callable[[], float] = default_clock
    ) -> Repository:
        """Open the nearest repository at or above ``start``, as Git finds ``.git``."""
        start = Path(start).resolve()
        for directory in (start, *start.parents):
            if is_store_dir(directory) or is_store_dir(directory / REPO_DIR):
                return cls.open(directory, clock=clock)
        raise RepositoryNotFoundError(
            f"no fedvc repository in {start} or any parent directory: run 'fedvc init' "
            "or pass --repo DIR"
        )

    def close(self) -> None:
        """Release the store's files and database connection (a no-op in memory)."""
        close = getattr(self.objects, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------

    def write_snapshot(self, params: Mapping[str, object]) -> ObjectId:
        """Store every tensor as a blob (once, whatever its name) and the snapshot naming them."""
        entries = {}
        for name, array in as_param_map(params).items():
            blob = self.objects.put("blob", tensor_bytes(array))
            entries[name] = TensorEntry(blob, dtype_name(array.dtype), tuple(array.shape))
        return self.objects.put("snapshot", Snapshot(entries).encode())

    def write_commit(
        self,
        snapshot: ObjectId,
        *,
        parents: Sequence[ObjectId] = (),
        message: str = "",
        metadata: Mapping[str, Any] | None = None,
        signer: SigningKey | None = None,
        timestamp: int | None = None,
    ) -> ObjectId:
        """Store a commit (signed when ``signer`` is given) without moving any ref."""
        for parent in parents:
            self.get_commit(parent)  # a commit never points at a parent the store lacks
        commit = Commit(
            snapshot=snapshot,
            parents=tuple(parents),
            timestamp=int(self.clock()) if timestamp is None else timestamp,
            message=message,
            metadata=dict(metadata or {}),
        )
        if signer is not None:
            commit = sign_commit(commit, signer)
        return self.objects.put("commit", commit.encode())

    def commit_params(
        self,
        params: Mapping[str, object],
        message: str = "",
        *,
        branch: str | None = None,
        parents: Sequence[ObjectId] | None = None,
        metadata: Mapping[str, Any] | None = None,
        signer: SigningKey | None = None,
        timestamp: int | None = None,
    ) -> ObjectId:
        """Commit a model on ``branch`` (default: HEAD's) and move the branch to it.

        ``parents`` defaults to the branch tip. The branch moves by compare-and-swap from
        the tip read before writing; if another writer moved it meanwhile this raises
        ``BranchMovedError`` and the new commit stays stored, reachable by its id.
        """
        branch = branch or self.head_branch
        ref = branch_ref(branch)
        tip = self.refs.get_ref(ref)
        snapshot = self.write_snapshot(params)
        oid = self.write_commit(
            snapshot,
            parents=([tip] if tip else []) if parents is None else parents,
            message=message,
            metadata=metadata,
            signer=signer,
            timestamp=timestamp,
        )
        try:
            self.refs.set_ref(ref, oid, tip)
        except RefConflictError as conflict:
            raise BranchMovedError(branch, oid, conflict) from None
        return oid

    # -- reading -----------------------------------------------------------------------

    def _load_commit(self, oid: ObjectId) -> Commit:
        stored = self.objects.get(oid)
        if stored.kind != "commit":
            raise RevisionError(f"object {oid} is a {stored.kind}, not a commit")
        return Commit.decode(stored.payload)

    def _load_snapshot(self, oid: ObjectId) -> Snapshot:
        stored = self.objects.get(oid)
        if stored.kind != "snapshot":
            raise CorruptObjectError(oid, f"expected a snapshot, found a {stored.kind}")
        return Snapshot.decode(stored.payload)

    def get_commit(self, oid: ObjectId) -> Commit:
        return self._commit_cache(oid)

    def get_snapshot(self, oid: ObjectId) -> Snapshot:
        return self._snapshot_cache(oid)

    def read_tensor(self, entry: TensorEntry) -> np.ndarray:
        """One tensor as a read-only array over the stored bytes (memory-mapped on disk)."""
        stored = self.objects.get(entry.blob)
        if stored.kind != "blob":
            raise CorruptObjectError(entry.blob, f"expected a blob, found a {stored.kind}")
        try:
            return tensor_from_bytes(stored.payload, entry.dtype, entry.shape)
        except TensorError as exc:
            raise CorruptObjectError(entry.blob, str(exc)) from None

    def read_snapshot(self, snapshot: ObjectId) -> dict[str, np.ndarray]:
        return self.snapshot_params(self.get_snapshot(snapshot))

    def snapshot_params(self, snapshot: Snapshot) -> dict[str, np.ndarray]:
        """The tensors of a snapshot already read, as ``read_snapshot`` gives them."""
        return {name: self.read_tensor(entry) for name, entry in snapshot.tensors.items()}

    def read_params(self, rev: str = "HEAD") -> dict[str, np.ndarray]:
        """The model at ``rev`` as tensor name → read-only array (zero-copy)."""
        return self.read_snapshot(self.get_commit(self.resolve(rev)).snapshot)

    def log(
        self, rev: str = "HEAD", *, limit: int | None = None, first_parent: bool = False
    ) -> list[tuple[ObjectId, Commit]]:
        """History of ``rev``, newest first, children before parents."""
        entries = graph.history(self.get_commit, [self.resolve(rev)], first_parent=first_parent)
        return entries if limit is None else entries[:limit]

    # -- refs and revisions ------------------------------------------------------------

    @property
    def head_branch(self) -> str:
        return self.refs.get_setting("head") or DEFAULT_BRANCH

    def branches(self) -> dict[str, ObjectId]:
        return {
            n.removeprefix("refs/heads/"): t for n, t in self.refs.list_refs("refs/heads/").items()
        }

    def tags(self) -> dict[str, ObjectId]:
        return {
            n.removeprefix("refs/tags/"): t for n, t in self.refs.list_refs("refs/tags/").items()
        }

    def create_branch(self, name: str, rev: str = "HEAD", *, force: bool = False) -> ObjectId:
        return self._create_ref(branch_ref(name), rev, force=force)

    def create_tag(self, name: str, rev: str = "HEAD", *, force: bool = False) -> ObjectId:
        return self._create_ref(tag_ref(name), rev, force=force)

    def _create_ref(self, ref: str, rev: str, *, force: bool) -> ObjectId:
        target = self.resolve(rev)
        current = self.refs.get_ref(ref)
        if current is not None and not force:
            raise RefConflictError(ref, None, current)
        self.refs.set_ref(ref, target, current)
        return target

    def resolve(self, rev: str) -> ObjectId:
        """Resolve a revision: id or unique prefix, branch, tag, HEAD, then ``~N`` / ``^N``."""
        match = _REVISION.match(rev.strip()) if isinstance(rev, str) else None
        if not match:
            raise RevisionError(f"malformed revision {rev!r}: expected NAME, ID, NAME~N or NAME^N")
        oid = self._resolve_base(match["base"])
        for op, count in _STEP.findall(match["steps"]):
            oid = self._step(rev, oid, op, int(count) if count else 1)
        return oid

    def _resolve_base(self, base: str) -> ObjectId:
        if base == "HEAD":
            head = self.refs.get_ref(branch_ref(self.head_branch))
            if head is None:
                raise RevisionError(
                    f"branch {self.head_branch} has no commits yet: commit a model first "
                    "(fedvc commit MODEL.safetensors)"
                )
            return head
        for ref in (base, f"refs/heads/{base}", f"refs/tags/{base}"):
            if ref.startswith("refs/") and (target := self.refs.get_ref(ref)) is not None:
                return target
        if re.fullmatch(rf"[0-9a-f]{{{MIN_PREFIX},64}}", base):
            found = self.objects.commits_with_prefix(base)
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise RevisionError(
                    f"commit prefix {base} is ambiguous: {', '.join(short_id(o) for o in found[:5])}"
                    f"{'...' if len(found) > 5 else ''}; give more digits"
                )
        raise RevisionError(
            f"unknown revision {base!r}: not a branch, tag or commit id (prefixes need at "
            f"least {MIN_PREFIX} hex digits); branches: {', '.join(self.branches()) or 'none'}"
        )

    def _step(self, rev: str, oid: ObjectId, op: str, count: int) -> ObjectId:
        if op == "^":
            if count == 0:
                return oid
            parents = self.get_commit(oid).parents
            if count > len(parents):
                raise RevisionError(f"{rev}: commit {short_id(oid)} has {len(parents)} parents")
            return parents[count - 1]
        for _ in range(count):
            parents = self.get_commit(oid).parents
            if not parents:
                raise RevisionError(f"{rev}: history ends at root commit {short_id(oid)}")
            oid = parents[0]
        return oid


def branch_ref(name: str) -> str:
    return name if name.startswith("refs/") else validate_ref_name(f"refs/heads/{name}")


def tag_ref(name: str) -> str:
    return name if name.startswith("refs/") else validate_ref_name(f"refs/tags/{name}")
