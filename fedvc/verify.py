"""Audit a revision's whole ancestry: every hash, every structure, every signature.

``verify`` never stops at the first problem: it keeps walking (using the commit index's
copy of a damaged commit to find its parents) and returns every finding, each naming the
object, where it is used, what was expected and what was found. When a commit object was
edited on disk, the commit index in SQLite still holds its original fields, so the report
names exactly which fields changed.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from fedvc.objects import (
    COMMIT_FIELDS,
    Commit,
    MalformedObjectError,
    ObjectId,
    Snapshot,
    short_id,
    split_object,
)
from fedvc.repo import Repository
from fedvc.round_store import attached_snapshots
from fedvc.signing import PublicKey, commit_signature_valid
from fedvc.store.base import CorruptObjectError, ObjectNotFoundError, StoreError
from fedvc.trust import TrustStore

ProblemKind = Literal["missing", "corrupt", "malformed", "bad-signature", "untrusted", "unsigned"]


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    oid: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.detail}"


@dataclass
class VerifyReport:
    """What ``verify`` checked and what it found; ``ok`` only when nothing is wrong."""

    head: ObjectId
    commits: int = 0
    snapshots: int = 0
    blobs: int = 0
    bytes_checked: int = 0
    signed: int = 0
    problems: list[Problem] = field(default_factory=list)
    unsigned: list[ObjectId] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "ok": self.ok,
            "commits": self.commits,
            "snapshots": self.snapshots,
            "blobs": self.blobs,
            "bytes_checked": self.bytes_checked,
            "signed": self.signed,
            "unsigned": self.unsigned,
            "problems": [
                {"kind": p.kind, "object": p.oid, "where": p.where, "detail": p.detail}
                for p in self.problems
            ],
        }


def verify(repo: Repository, rev: str = "HEAD", trust: TrustStore | None = None) -> VerifyReport:
    """Check everything reachable from ``rev``.

    With ``trust``, every commit must be signed by a trusted key; without it, signatures
    that are present must be valid and unsigned commits are listed in ``unsigned``.
    """
    report = VerifyReport(head=repo.resolve(rev))
    seen_snapshots: set[ObjectId] = set()
    seen_blobs: set[ObjectId] = set()
    queue, seen = deque([report.head]), {report.head}
    while queue:
        oid = queue.popleft()
        commit = _check_commit(repo, oid, report, trust)
        if commit is None:
            continue
        for parent in commit.parents:
            if parent not in seen:
                seen.add(parent)
                queue.append(parent)
        attached = attached_snapshots(commit).items()
        for role, snapshot in [("snapshot", commit.snapshot), *attached]:
            if snapshot not in seen_snapshots:
                seen_snapshots.add(snapshot)
                _check_snapshot(repo, oid, snapshot, report, seen_blobs, role)
    return report


def _check_commit(
    repo: Repository, oid: ObjectId, report: VerifyReport, trust: TrustStore | None
) -> Commit | None:
    where = f"commit {short_id(oid)}"
    report.commits += 1
    try:
        stored = repo.objects.get(oid)
        report.bytes_checked += len(stored.payload)
        if stored.kind != "commit":
            raise MalformedObjectError(f"expected a commit, found a {stored.kind}")
        commit = Commit.decode(stored.payload)
    except ObjectNotFoundError:
        report.problems.append(Problem("missing", oid, where, "object is not in the store"))
        return repo.objects.indexed_commit(oid)
    except CorruptObjectError as exc:
        report.problems.append(
            Problem("corrupt", oid, where, _describe_commit_damage(repo, oid, exc))
        )
        return repo.objects.indexed_commit(oid)
    except (MalformedObjectError, StoreError) as exc:
        report.problems.append(Problem("malformed", oid, where, str(exc)))
        return repo.objects.indexed_commit(oid)
    if commit.signature is None:
        if trust is not None:
            report.problems.append(
                Problem("unsigned", oid, where, "commit is not signed, but --trust requires it")
            )
        report.unsigned.append(oid)
    elif not commit_signature_valid(commit):
        report.problems.append(
            Problem("bad-signature", oid, where, f"signature does not match author {commit.author}")
        )
    else:
        report.signed += 1
        if trust is not None and not trust.trusts(PublicKey.from_hex(str(commit.author))):
            report.problems.append(
                Problem(
                    "untrusted", oid, where, f"signed by key {commit.author}, which is not trusted"
                )
            )
    return commit


def _describe_commit_damage(repo: Repository, oid: ObjectId, exc: CorruptObjectError) -> str:
    """Name the edited fields by comparing the damaged object with its index copy."""
    original = repo.objects.indexed_commit(oid)
    try:
        _, payload = split_object(repo.objects.get_unverified(oid))
        found = json.loads(bytes(payload).decode("utf-8"))
    except (MalformedObjectError, ValueError, StoreError):
        return f"{_first_clause(exc)}; the bytes no longer parse as a commit"
    if original is None or not isinstance(found, dict):
        return _first_clause(exc)
    expected = {**original.unsigned_json(), "signature": original.signature}
    edited = [
        _field_change(name, expected.get(name), found.get(name))
        for name in sorted(COMMIT_FIELDS | set(found))
        if expected.get(name) != found.get(name)
    ]
    detail = ", ".join(edited) if edited else "formatting changed, fields equal"
    return f"content does not match its id; edited fields: {detail}"


def _first_clause(exc: Exception) -> str:
    return str(exc).split(";")[0]


def _field_change(name: str, was: object, now: object) -> str:
    """How one field changed; parent lists as short ids, with which ones left or came."""
    if name == "parents" and isinstance(was, list) and isinstance(now, list):
        removed = [short_id(str(p)) for p in was if p not in now]
        added = [short_id(str(p)) for p in now if p not in was]
        moves = f"; removed {removed or 'none'}, added {added or 'none'}"
        return f"parents (was {_ids(was)}, now {_ids(now)}{moves})"
    return f"{name} (was {_brief(was)}, now {_brief(now)})"


def _ids(parents: list[object], limit: int = 8) -> str:
    shown = [short_id(str(p)) for p in parents[:limit]]
    more = f" +{len(parents) - limit} more" if len(parents) > limit else ""
    return f"[{' '.join(shown)}{more}]"


def _brief(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_snapshot(
    repo: Repository,
    commit: ObjectId,
    snapshot_id: ObjectId,
    report: VerifyReport,
    seen_blobs: set[ObjectId],
    role: str = "snapshot",
) -> None:
    where = f"{role} {short_id(snapshot_id)} of commit {short_id(commit)}"
    report.snapshots += 1
    try:
        stored = repo.objects.get(snapshot_id)
        report.bytes_checked += len(stored.payload)
        if stored.kind != "snapshot":
            raise MalformedObjectError(f"expected a snapshot, found a {stored.kind}")
        snapshot = Snapshot.decode(stored.payload)
    except ObjectNotFoundError:
        report.problems.append(Problem("missing", snapshot_id, where, "object is not in the store"))
        return
    except (CorruptObjectError, MalformedObjectError, StoreError) as exc:
        report.problems.append(Problem("corrupt", snapshot_id, where, str(exc)))
        return
    for name, entry in snapshot.tensors.items():
        if entry.blob in seen_blobs:
            continue
        seen_blobs.add(entry.blob)
        report.blobs += 1
        _check_blob(repo, entry.blob, entry.nbytes, f"tensor {name!r} in {where}", report)


def _check_blob(
    repo: Repository, blob: ObjectId, nbytes: int, where: str, report: VerifyReport
) -> None:
    try:
        stored = repo.objects.get(blob)
    except ObjectNotFoundError:
        report.problems.append(Problem("missing", blob, where, f"blob {blob} is not in the store"))
        return
    except (CorruptObjectError, StoreError) as exc:
        report.problems.append(Problem("corrupt", blob, where, _first_clause(exc)))
        return
    report.bytes_checked += len(stored.payload)
    if stored.kind != "blob" or len(stored.payload) != nbytes:
        report.problems.append(
            Problem(
                "malformed",
                blob,
                where,
                f"object {blob}: expected a blob of {nbytes} bytes, found a {stored.kind} of "
                f"{len(stored.payload)}",
            )
        )
