"""``fedvc show`` on a round's merge commit: who took part, how they interfered, what was
turned away, as a table a person can read (and JSON for any other shape of metadata)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from federation import federate, new_repo

from fedvc.cli import main


def test_a_round_merge_is_shown_as_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = new_repo(tmp_path)
    federate(repo, "median", rounds=1)
    merge = repo.get_commit(repo.resolve("main"))
    capsys.readouterr()
    assert main(["--repo", str(tmp_path), "show", "main"]) == 0
    out = capsys.readouterr().out
    assert "merged with median(): 3 updates" in out
    for participant in merge.metadata["round"]["participants"]:
        assert participant["commit"][:12] in out and participant["key_id"] in out
    assert "interference score" in out and "rejected: none" in out
    assert "round = {" not in out  # the record is not dumped as JSON as well


def test_other_metadata_named_round_is_shown_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = new_repo(tmp_path)
    repo.commit_params(
        {"w": np.ones((4, 5), np.float32), "b": np.ones(5, np.float32)},
        "x",
        metadata={"round": {"note": "not a merge"}},
    )
    capsys.readouterr()
    assert main(["--repo", str(tmp_path), "show"]) == 0
    assert 'round = {"note": "not a merge"}' in capsys.readouterr().out
