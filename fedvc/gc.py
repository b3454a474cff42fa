"""Garbage collection: remove the objects no history names.

A store only grows. Commits orphaned by a lost compare-and-swap, objects a client
uploaded and never submitted, and files a crash left in ``tmp/`` stay until something
removes them. ``collect`` keeps every object reachable from a ref (branches and tags):
each commit, its parents, its snapshot and blobs, the snapshots it names in its metadata
(an update's Fisher and Grams, a merge's saved strategy state) and the update commits a
round merge lists as rejected, which stay as evidence for an audit. Everything else
older than the grace period is removed.

Running beside a server or a client is as safe as ``git gc`` is: objects written within
the grace period are kept, and writing an object that already exists touches its file
(``DiskObjectStore.put``), so a blob a new update reuses is young again even when it was
first written long ago. As in git, a write that lands between gc's look at a file's age
and its removal can still lose that object: choose a grace period longer than the
longest round, and prefer running gc when the fleet is idle.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from fedvc.errors import FedvcError
from fedvc.objects import ObjectId, is_object_id
from fedvc.repo import Repository
from fedvc.round_store import attached_snapshots
from fedvc.store.base import ObjectNotFoundError
from fedvc.store.disk import DiskObjectStore

DEFAULT_GRACE_SECONDS = 14 * 24 * 3600.0
"""Unreachable objects younger than this are kept (two weeks, as ``git gc`` prunes)."""


class GcError(FedvcError):
    """A repository that cannot be collected (one held in memory, not on disk)."""


@dataclass(frozen=True)
class GcReport:
    """What ``collect`` found and did (or, with ``dry_run``, would do)."""

    reachable: int
    removed: tuple[ObjectId, ...]
    removed_bytes: int
    young: int
    """Unreachable objects kept because they are younger than the grace period."""
    temp_files: int
    missing: tuple[ObjectId, ...]
    """Objects the history names that the store lacks (``fedvc verify`` says more)."""


def reachable(repo: Repository) -> tuple[set[ObjectId], set[ObjectId]]:
    """Every object id reachable from the repository's refs, and those the history needs
    that the store lacks. A rejected update is kept when it is there, but it is no loss
    when it is not: an update is often rejected because it never fully arrived."""
    found: set[ObjectId] = set()
    missing: set[ObjectId] = set()
    pending = [(oid, True) for oid in repo.refs.list_refs().values()]  # (id, needed)

    def snapshot(oid: ObjectId, needed: bool) -> None:
        if oid in found:
            return
        try:
            blobs = [entry.blob for entry in repo.get_snapshot(oid).tensors.values()]
        except ObjectNotFoundError:
            if needed:
                missing.add(oid)
            return
        found.add(oid)
        for blob in blobs:
            if repo.objects.contains(blob):
                found.add(blob)
            elif needed:
                missing.add(blob)

    while pending:
        oid, needed = pending.pop()
        if oid in found:
            continue
        try:
            commit = repo.get_commit(oid)
        except ObjectNotFoundError:
            if needed:
                missing.add(oid)
            continue
        found.add(oid)
        for attached in (commit.snapshot, *attached_snapshots(commit).values()):
            snapshot(attached, needed)
        pending += [(parent, needed) for parent in commit.parents]
        pending += [(rejected, False) for rejected in _rejected_commits(commit.metadata)]
    return found, missing - found


def _rejected_commits(metadata: Mapping[str, object]) -> list[ObjectId]:
    """The update commits a round merge lists as rejected (kept for an audit)."""
    record = metadata.get("round")
    rejected = record.get("rejected") if isinstance(record, Mapping) else None
    ids = []
    for entry in rejected if isinstance(rejected, list) else []:
        commit = entry.get("commit") if isinstance(entry, Mapping) else None
        if isinstance(commit, str) and is_object_id(commit):  # else never a stored commit
            ids.append(ObjectId(commit))
    return ids


def collect(
    repo: Repository,
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
    now: float | None = None,
) -> GcReport:
    """Remove the unreachable objects, and the files in ``tmp/``, older than the grace
    period; with ``dry_run``, only report them."""
    store = repo.objects
    if not isinstance(store, DiskObjectStore):
        raise GcError(
            "only a repository on disk can be collected; one held in memory goes when it does"
        )
    now = time.time() if now is None else now
    cutoff = now - grace_seconds
    keep, missing = reachable(repo)
    removed: list[ObjectId] = []
    removed_bytes = young = 0
    for oid in store.iter_ids():
        if oid in keep:
            continue
        modified, size = store.stat(oid)
        if modified > cutoff:
            young += 1
            continue
        if not dry_run:
            store.remove(oid)
        removed.append(oid)
        removed_bytes += size
    temp_files = store.temp_files(older_than=cutoff)
    if not dry_run:
        for path in temp_files:
            path.unlink(missing_ok=True)
    return GcReport(
        reachable=len(keep),
        removed=tuple(removed),
        removed_bytes=removed_bytes,
        young=young,
        temp_files=len(temp_files),
        missing=tuple(sorted(missing)),
    )
