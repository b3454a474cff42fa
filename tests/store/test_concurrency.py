"""Real processes racing on one disk repository: refs move by compare-and-swap, nothing is lost.

Each worker is a fresh interpreter (``sys.executable -c WORKER``) that opens the same
repository. File barriers make the races real: every worker has read the branch tip and
written its objects before any of them tries to move the branch.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedvc.objects import ObjectId
from fedvc.repo import BranchMovedError, Repository
from fedvc.store import RefConflictError

pytestmark = pytest.mark.slow

WORKER = r"""
import json, sys, time
from pathlib import Path

import numpy as np

from fedvc.repo import BranchMovedError, Repository
from fedvc.store import RefConflictError

args = json.loads(sys.argv[1])
sync, index, parties = Path(args["sync"]), args["index"], args["parties"]


def barrier(name):
    (sync / f"{name}.{index}").touch()
    deadline = time.monotonic() + 30
    while len(list(sync.glob(f"{name}.*"))) < parties:
        if time.monotonic() > deadline:
            raise SystemExit(f"worker {index}: barrier {name} timed out")
        time.sleep(0.001)


def params(k):
    return {"own": np.full(8, index * 1000 + k, dtype=np.float32), "shared": np.ones(8)}


def conflict(exc, commit):
    return {
        "won": False,
        "commit": commit,
        "error": type(exc).__name__,
        "is_ref_conflict": isinstance(exc, RefConflictError),
        "message": str(exc),
        "expected": exc.expected,
        "actual": exc.actual,
    }


mode = args["mode"]
if mode == "cas":
    # Both write a commit on the same parent, then both try to move the branch from it.
    repo = Repository.open(args["repo"])
    own = repo.write_commit(
        repo.write_snapshot(params(0)), parents=[args["base"]], message=f"worker {index}"
    )
    barrier("written")
    try:
        repo.refs.set_ref(args["ref"], own, args["base"])
        result = {"won": True, "commit": own}
    except RefConflictError as exc:
        result = conflict(exc, own)
elif mode == "commit_params":
    # The clock is read after the tip and before the branch moves: a barrier there makes
    # every worker read the same tip before any of them moves the branch.
    def clock():
        barrier("tip-read")
        return 1_700_000_000 + index

    repo = Repository.open(args["repo"], clock=clock)
    try:
        own = repo.commit_params(params(0), f"worker {index}", branch=args["branch"])
        result = {"won": True, "commit": own}
    except BranchMovedError as exc:
        result = conflict(exc, exc.commit)
elif mode == "loop":
    repo = Repository.open(args["repo"])
    barrier("start")
    commits, conflicts = [], 0
    for k in range(args["count"]):
        for _attempt in range(1000):
            try:
                commits.append(repo.commit_params(params(k), f"worker {index} commit {k}"))
                break
            except BranchMovedError:
                conflicts += 1
        else:
            raise SystemExit(f"worker {index}: gave up on commit {k}")
    result = {"commits": commits, "conflicts": conflicts}
else:
    raise SystemExit(f"unknown mode {mode}")
print(json.dumps(result))
"""


def run_workers(tmp_path: Path, parties: int, **args: Any) -> list[dict[str, Any]]:
    sync = tmp_path / "sync"
    sync.mkdir()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                json.dumps({**args, "sync": str(sync), "index": index, "parties": parties}),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for index in range(parties)
    ]
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, f"worker failed:\n{err}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def assert_store_intact(repo: Repository) -> None:
    """Every object reads back with a matching hash, and SQLite finds no damage."""
    assert repo.path is not None
    ids = list(repo.objects.iter_ids())
    assert ids
    for oid in ids:
        repo.objects.get(oid)
    assert list((repo.path / "tmp").iterdir()) == []
    with sqlite3.connect(repo.path / "fedvc.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def test_compare_and_swap_race_has_one_winner(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path, clock=lambda: 1_700_000_000)
    base = repo.commit_params({"w": [0.0]}, "base")
    results = run_workers(
        tmp_path, 3, mode="cas", repo=str(tmp_path), ref="refs/heads/main", base=base
    )

    winners = [r for r in results if r["won"]]
    losers = [r for r in results if not r["won"]]
    assert len(winners) == 1 and len(losers) == 2
    winner = winners[0]["commit"]
    assert repo.refs.get_ref("refs/heads/main") == winner
    for loser in losers:
        assert loser["error"] == "RefConflictError"
        assert (loser["expected"], loser["actual"]) == (base, winner)
        assert loser["message"] == (
            f"ref refs/heads/main was expected at {base} but is at {winner}: "
            "someone else updated it first"
        )
    commits = {r["commit"] for r in results}
    assert len(commits) == 3
    for oid in commits:  # the losers' commits are stored too, just not on the branch
        assert repo.get_commit(oid).parents == (base,)
        assert repo.objects.indexed_commit(oid) == repo.get_commit(oid)
    assert_store_intact(repo)


@pytest.mark.parametrize("start", ["empty-branch", "existing-tip"])
def test_commit_params_race_raises_branch_moved(tmp_path: Path, start: str) -> None:
    repo = Repository.init(tmp_path, clock=lambda: 1_700_000_000)
    base = repo.commit_params({"w": [0.0]}, "base") if start == "existing-tip" else None
    results = run_workers(tmp_path, 2, mode="commit_params", repo=str(tmp_path), branch="main")

    winners = [r for r in results if r["won"]]
    losers = [r for r in results if not r["won"]]
    assert len(winners) == 1 and len(losers) == 1
    winner, loser = winners[0]["commit"], losers[0]
    assert repo.refs.get_ref("refs/heads/main") == winner
    assert loser["error"] == BranchMovedError.__name__
    assert loser["is_ref_conflict"]
    assert (loser["expected"], loser["actual"]) == (base, winner)
    message = loser["message"]
    assert f"branch main moved to {winner[:12]}" in message
    assert f"while commit {loser['commit'][:12]} was being written" in message
    assert (base[:12] if base else "(no commit)") in message
    assert "Nothing was lost: the commit is stored" in message
    # Both read the same tip: the loser's commit has the winner's parent, and is stored.
    lost = repo.get_commit(ObjectId(loser["commit"]))
    assert lost.parents == repo.get_commit(winner).parents == ((base,) if base else ())
    assert [oid for oid, _ in repo.log("main")] == [winner] + ([base] if base else [])
    assert_store_intact(repo)


def test_concurrent_commit_loops_lose_nothing(tmp_path: Path) -> None:
    workers, count = 2, 20
    repo = Repository.init(tmp_path)
    results = run_workers(tmp_path, workers, mode="loop", repo=str(tmp_path), count=count)

    log = repo.log("main")
    assert len(log) == workers * count
    for (_, commit), (parent, _) in itertools.pairwise(log):
        assert commit.parents == (parent,)  # one linear chain
    assert log[-1][1].parents == ()
    assert {c.message for _, c in log} == {
        f"worker {w} commit {k}" for w in range(workers) for k in range(count)
    }
    on_branch = [oid for oid, _ in log]
    for index, result in enumerate(results):
        # Each worker's commits are on the branch, in the order the worker made them.
        mine = [oid for oid in reversed(on_branch) if oid in set(result["commits"])]
        assert mine == result["commits"]
        assert [repo.get_commit(o).message for o in mine] == [
            f"worker {index} commit {k}" for k in range(count)
        ]
    # Every attempt that lost a race left its commit in the store, off the branch.
    conflicts = sum(r["conflicts"] for r in results)
    assert len(repo.objects.commits_with_prefix("")) == workers * count + conflicts
    assert_store_intact(repo)


def test_branch_moved_error_is_a_ref_conflict() -> None:
    conflict = RefConflictError("refs/heads/main", ObjectId("a" * 64), ObjectId("b" * 64))
    error = BranchMovedError("main", ObjectId("c" * 64), conflict)
    assert isinstance(error, RefConflictError)
    assert (error.name, error.expected, error.actual, error.commit) == (
        "refs/heads/main",
        "a" * 64,
        "b" * 64,
        "c" * 64,
    )
    assert str(error).startswith(f"branch main moved to {'b' * 12} while commit {'c' * 12}")
