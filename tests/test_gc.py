"""fedvc gc: what no ref reaches goes once it is old enough; history and evidence stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from fedvc import cli
from fedvc.gc import GcError, collect, reachable
from fedvc.objects import ObjectId
from fedvc.repo import Repository
from fedvc.verify import verify


def model(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(4, value, np.float32), "b": np.full(2, -value, np.float32)}


def age(repo: Repository, seconds: float) -> None:
    """Make every object file (and temp file) ``seconds`` older."""
    for path in (repo.path / "objects").rglob("*"):
        if path.is_file():
            stat = path.stat()
            os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))
    for path in (repo.path / "tmp").iterdir():
        stat = path.stat()
        os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


def objects_of(repo: Repository, commit: ObjectId) -> set[ObjectId]:
    found = repo.get_commit(commit)
    blobs = {e.blob for e in repo.get_snapshot(found.snapshot).tensors.values()}
    return {commit, found.snapshot, *blobs}


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """main: base -> round merge (one admitted update with a Fisher, one rejected update
    listed in the merge); a tag on an older side commit; and an orphan commit."""
    repo = Repository.init(tmp_path, bare=True)
    base = repo.commit_params(model(0), "base")
    fisher = repo.write_snapshot(model(10))
    update = repo.write_commit(
        repo.write_snapshot(model(1)), parents=[base], metadata={"fisher": fisher}
    )
    rejected = repo.write_commit(repo.write_snapshot(model(2)), parents=[base], message="nan")
    record = {"rejected": [{"commit": rejected, "key_id": "", "reason": "x", "detail": ""}]}
    merge = repo.write_commit(
        repo.write_snapshot(model(1)), parents=[base, update], metadata={"round": record}
    )
    repo.refs.set_ref("refs/heads/main", merge, repo.resolve("main"))
    repo.create_tag("old", repo.write_commit(repo.write_snapshot(model(3)), parents=[base]))
    repo.write_commit(repo.write_snapshot(model(4)), parents=[base], message="orphan")
    return repo


def test_only_unreachable_objects_older_than_the_grace_period_go(repo: Repository) -> None:
    orphan = next(oid for oid, c in _all_commits(repo) if c.message == "orphan")
    doomed = objects_of(repo, orphan) - objects_of(repo, repo.resolve("main~1"))
    kept, missing = reachable(repo)
    assert not missing and not doomed & kept
    before = set(repo.objects.iter_ids())

    young = collect(repo, grace_seconds=3600)  # everything was just written
    assert young.removed == () and young.young == len(doomed)
    assert set(repo.objects.iter_ids()) == before

    age(repo, 7200)
    dry = collect(repo, grace_seconds=3600, dry_run=True)
    assert set(dry.removed) == doomed and set(repo.objects.iter_ids()) == before

    report = collect(repo, grace_seconds=3600)
    assert set(report.removed) == doomed and report.removed_bytes > 0
    assert set(repo.objects.iter_ids()) == before - doomed == kept
    assert repo.objects.indexed_commit(orphan) is None  # the commit index forgets it too
    for rev in ("main", "old"):
        assert verify(repo, rev).ok
    fisher = repo.get_commit(repo.resolve("main^2")).metadata["fisher"]
    assert repo.read_snapshot(ObjectId(fisher))["w"][0] == 10  # an update's Fisher stays
    rejected = repo.get_commit(repo.resolve("main")).metadata["round"]["rejected"][0]["commit"]
    assert repo.get_commit(ObjectId(rejected)).message == "nan"  # evidence stays
    assert collect(repo, grace_seconds=0).removed == ()  # nothing more to take


def test_writing_an_object_again_makes_it_young(repo: Repository) -> None:
    """An old unreachable blob that a new update reuses must not be taken from under it."""
    age(repo, 7200)
    reused = repo.write_snapshot(model(4))  # the orphan's tensors, written again
    report = collect(repo, grace_seconds=3600)
    assert repo.objects.contains(reused)
    assert all(repo.objects.contains(e.blob) for e in repo.get_snapshot(reused).tensors.values())
    assert reused not in report.removed


def test_stale_temporary_files_go(repo: Repository) -> None:
    leftover = repo.path / "tmp" / "abcd.partial"
    leftover.write_bytes(b"half an object")
    assert collect(repo, grace_seconds=3600).temp_files == 0
    age(repo, 7200)
    assert collect(repo, grace_seconds=3600).temp_files == 1
    assert not leftover.exists()


def test_a_ref_to_a_lost_object_is_reported_not_fatal(repo: Repository) -> None:
    lost = ObjectId("ab" * 32)
    repo.refs.set_ref("refs/heads/lost", lost, None)
    assert collect(repo, grace_seconds=0).missing == (lost,)


def test_a_rejected_update_that_never_arrived_is_no_loss(repo: Repository) -> None:
    base = repo.resolve("main~1")
    record = {"rejected": [{"commit": "cd" * 32, "key_id": "", "reason": "missing_objects"}]}
    merge = repo.write_commit(
        repo.write_snapshot(model(5)), parents=[base], metadata={"round": record}
    )
    repo.refs.set_ref("refs/heads/other", merge, None)
    assert collect(repo, grace_seconds=0).missing == ()


def test_a_repository_in_memory_is_refused() -> None:
    with pytest.raises(GcError, match="only a repository on disk"):
        collect(Repository.memory())


def test_the_command(repo: Repository, capsys: pytest.CaptureFixture[str]) -> None:
    orphan = next(oid for oid, c in _all_commits(repo) if c.message == "orphan")
    doomed = objects_of(repo, orphan) - objects_of(repo, repo.resolve("main~1"))
    age(repo, 3 * 24 * 3600)
    where = str(repo.path)
    assert cli.main(["--repo", where, "gc", "--dry-run"]) == 0
    assert "would remove 0 unreachable objects" in capsys.readouterr().out  # 14 days' grace
    assert cli.main(["--repo", where, "gc", "--older-than", "86400"]) == 0
    out = capsys.readouterr().out
    assert f"removed {len(doomed)} unreachable objects" in out and "0 temporary files" in out
    assert cli.main(["--repo", where, "gc", "--older-than", "-1"]) == 2
    assert "0 or more seconds" in capsys.readouterr().err


def _all_commits(repo: Repository) -> list[tuple[ObjectId, object]]:
    found = []
    for oid in repo.objects.iter_ids():
        commit = repo.objects.indexed_commit(oid)
        if commit is not None:
            found.append((oid, commit))
    return found


def test_age_helper_is_honest(repo: Repository) -> None:
    """The tests above rely on ``age`` moving modification times back."""
    oid = next(iter(repo.objects.iter_ids()))
    modified, _ = repo.objects.stat(oid)
    age(repo, 100)
    assert repo.objects.stat(oid)[0] == pytest.approx(modified - 100)
    assert time.time() - repo.objects.stat(oid)[0] >= 100


def test_a_lost_blob_of_the_history_is_reported(repo: Repository) -> None:
    snapshot = repo.get_snapshot(repo.get_commit(repo.resolve("old")).snapshot)
    blob = snapshot.tensors["w"].blob
    repo.objects.remove(blob)
    assert collect(repo, grace_seconds=0).missing == (blob,)
