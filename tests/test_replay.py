"""fedvc.replay: a merge recomputed from its recorded inputs gives its snapshot, or says not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from federation import SERVER, federate, new_repo

from fedvc.cli import main
from fedvc.replay import replay, replay_history, snapshot_id
from fedvc.repo import Repository


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "fisher", "median"])
def test_every_round_replays_to_its_snapshot(tmp_path: Path, strategy: str) -> None:
    repo = new_repo(tmp_path)
    federate(repo, strategy, rounds=3)
    results = replay_history(repo, "main")
    assert len(results) == 3 and all(r.ok for r in results), results


def test_a_merged_model_that_is_not_what_its_inputs_make_is_caught(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    federate(repo, "fedavg", rounds=1)
    honest = repo.get_commit(repo.resolve("main"))
    skewed = {k: v + 1e-3 for k, v in repo.read_params("main").items()}
    forged = repo.write_commit(
        repo.write_snapshot(skewed),
        parents=honest.parents,
        metadata=honest.metadata,
        signer=SERVER,  # a validly signed commit: only a replay can tell
    )
    result = replay(repo, forged)
    assert result.ok is False and "not what its inputs make" in result.detail
    assert replay(repo, repo.resolve("main")).ok


def test_a_merge_whose_recorded_participants_are_not_its_parents_fails(tmp_path: Path) -> None:
    """Only parents are walked and signature-checked by verify: a participant that is not
    a parent would be an input nobody vouched for."""
    repo = new_repo(tmp_path)
    federate(repo, "fedavg", rounds=1)
    honest = repo.get_commit(repo.resolve("main"))
    forged = repo.write_commit(
        honest.snapshot,
        parents=honest.parents[:-1],  # one participant dropped from the parents only
        metadata=honest.metadata,
        signer=SERVER,
    )
    result = replay(repo, forged)
    assert result.ok is False and "not its 2 signed parents" in result.detail
    record = dict(honest.metadata["round"])
    record["participants"] = [{**record["participants"][0], "commit": "..//dev/zero"}]
    bad_id = repo.write_commit(
        honest.snapshot, parents=honest.parents, metadata={"round": record}, signer=SERVER
    )
    unreadable = replay(repo, bad_id)
    assert unreadable.ok is False and "64 lowercase hex digits" in unreadable.detail


def test_snapshot_id_matches_what_the_store_writes() -> None:
    repo = Repository.memory()
    params = {"a": np.arange(3, dtype=np.int64), "b": np.ones((2, 2), np.float32)}
    assert snapshot_id(params) == repo.write_snapshot(params)


def test_verify_replay_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = new_repo(tmp_path)
    federate(repo, "fedavg", rounds=2)
    base = repo.resolve("main")
    a = repo.commit_params(
        {k: v * 2 for k, v in repo.read_params(base).items()}, "a", branch="a", parents=[base]
    )
    b = repo.commit_params(
        {k: v * 3 for k, v in repo.read_params(base).items()}, "b", branch="b", parents=[base]
    )
    out = tmp_path / "m.npz"
    assert main(["--repo", str(tmp_path), "merge", "--base", base, a, b, "-o", str(out)]) == 0
    files_merge = main(
        [
            "--repo",
            str(tmp_path),
            "merge",
            "--base",
            base,
            str(out),
            a,
            "-o",
            str(tmp_path / "n.npz"),
            "--branch",
            "files",
        ]
    )
    assert files_merge == 0
    capsys.readouterr()
    assert main(["--repo", str(tmp_path), "verify", "--replay"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("replayed ") == 3 and "ok: history" in printed
    assert main(["--repo", str(tmp_path), "verify", "--replay", "files"]) == 0
    assert "skipped" in capsys.readouterr().out


def test_verify_checks_the_fisher_and_strategy_state_a_history_names(tmp_path: Path) -> None:
    from fedvc.verify import verify

    repo = new_repo(tmp_path)
    federate(repo, "fisher", rounds=1)
    federate(repo, "fedadam", rounds=2)  # continues main: round 2 saves its state
    merge = repo.get_commit(repo.resolve("main"))
    assert isinstance(merge.metadata["round"]["strategy_state"], str)
    update = repo.get_commit(repo.resolve("main~1^2"))
    fisher = repo.get_snapshot(update.metadata["fisher"])
    blob = next(iter(fisher.tensors.values())).blob
    before = verify(repo, "main")
    assert before.ok
    path = tmp_path / ".fedvc" / "objects" / blob[:2] / blob[2:]
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    (problem,) = verify(repo, "main").problems
    assert problem.oid == blob and "Fisher" in problem.where
