"""Walks over the commit DAG: history order, ancestry, merge bases, objects to sync.

Every function takes a loader (``ObjectId -> Commit``) instead of a repository, so the
same walks serve a local repository, a remote's advertised commits, and tests.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from fedvc.objects import Commit, ObjectId, Snapshot

CommitLoader = Callable[[ObjectId], Commit]
SnapshotLoader = Callable[[ObjectId], Snapshot]


def ancestors(
    load: CommitLoader, heads: Iterable[ObjectId], *, first_parent: bool = False
) -> Iterator[ObjectId]:
    """Every commit reachable from ``heads`` (heads included), each once, breadth first."""
    seen: set[ObjectId] = set()
    queue = deque(heads)
    while queue:
        oid = queue.popleft()
        if oid in seen:
            continue
        seen.add(oid)
        yield oid
        parents = load(oid).parents
        queue.extend(parents[:1] if first_parent else parents)


def history(
    load: CommitLoader, heads: Iterable[ObjectId], *, first_parent: bool = False
) -> list[tuple[ObjectId, Commit]]:
    """Commits reachable from ``heads``, newest first, never a parent before its child.

    Kahn's algorithm with a heap on (timestamp, id): among the commits whose children
    have all been shown, the newest comes next, as in ``git log --topo-order``.
    """
    commits = {oid: load(oid) for oid in ancestors(load, heads, first_parent=first_parent)}
    pending_children: dict[ObjectId, int] = dict.fromkeys(commits, 0)
    for commit in commits.values():
        for parent in _parents(commit, first_parent):
            if parent in pending_children:
                pending_children[parent] += 1
    ready = [(-c.timestamp, oid) for oid, c in commits.items() if pending_children[oid] == 0]
    heapq.heapify(ready)
    ordered: list[tuple[ObjectId, Commit]] = []
    while ready:
        _, oid = heapq.heappop(ready)
        commit = commits[oid]
        ordered.append((oid, commit))
        for parent in _parents(commit, first_parent):
            if parent in pending_children:
                pending_children[parent] -= 1
                if pending_children[parent] == 0:
                    heapq.heappush(ready, (-commits[parent].timestamp, parent))
    return ordered


def _parents(commit: Commit, first_parent: bool) -> tuple[ObjectId, ...]:
    return commit.parents[:1] if first_parent else commit.parents


def is_ancestor(load: CommitLoader, ancestor: ObjectId, descendant: ObjectId) -> bool:
    """Whether ``ancestor`` is reachable from ``descendant`` (a commit is its own ancestor)."""
    return any(oid == ancestor for oid in ancestors(load, [descendant]))


def merge_base(load: CommitLoader, a: ObjectId, b: ObjectId) -> ObjectId | None:
    """The best common ancestor of ``a`` and ``b``: one no other common ancestor descends from.

    When several qualify (criss-cross histories) the newest wins, then the smallest id,
    so the answer is deterministic.
    """
    common = set(ancestors(load, [a])) & set(ancestors(load, [b]))
    if not common:
        return None
    dominated = set(ancestors(load, [p for oid in common for p in load(oid).parents]))
    best = [oid for oid in common if oid not in dominated]
    return min(best, key=lambda oid: (-load(oid).timestamp, oid))


def reachable_objects(
    load_commit: CommitLoader, load_snapshot: SnapshotLoader, heads: Iterable[ObjectId]
) -> set[ObjectId]:
    """Every commit, snapshot and blob id reachable from ``heads``."""
    found: set[ObjectId] = set()
    for oid in ancestors(load_commit, heads):
        commit = load_commit(oid)
        found.add(oid)
        if commit.snapshot not in found:
            found.add(commit.snapshot)
            found.update(e.blob for e in load_snapshot(commit.snapshot).tensors.values())
    return found


def missing_objects(
    load_commit: CommitLoader,
    load_snapshot: SnapshotLoader,
    want: Iterable[ObjectId],
    have: Iterable[ObjectId],
) -> set[ObjectId]:
    """Objects a peer holding ``have`` needs to hold ``want`` too: what a sync must send.

    Content addressing makes this a set difference: a tensor unchanged since any commit
    the peer has is never sent again.
    """
    have = list(have)
    wanted = reachable_objects(load_commit, load_snapshot, want)
    return wanted - reachable_objects(load_commit, load_snapshot, have) if have else wanted
