"""``fedvc simulate``: an experiment file in, a repository, results.json and plots out."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from fedvc import cli
from fedvc.cli.simulate_commands import ProgressBar
from fedvc.objects import ObjectId
from fedvc.repo import Repository
from fedvc.simulation.runner import RoundRecord

pytest.importorskip("fedvc_client")

EXPERIMENT = """
[simulation]
name = "tiny"
rounds = 2
seed = 0
clients = 4
workers = 1

[data]
workload = "digits"
params = { hidden = [8] }

[partition]
kind = "dirichlet"
alpha = 0.5

[train]
epochs = 1
lr = 0.1

[[strategy]]
label = "FedAvg"
name = "fedavg"

[[strategy]]
label = "FedProx"
name = "fedavg"
train = { mu = 0.1 }
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("simulate")
    (root / "tiny.toml").write_text(EXPERIMENT)
    assert cli.main(["simulate", str(root / "tiny.toml"), "--out", str(root / "out")]) == 0
    return root / "out"


def test_results_json_has_every_round_of_every_strategy(run: Path) -> None:
    results = json.loads((run / "results.json").read_text())
    assert results["name"] == "tiny" and results["repository"] == "repo"
    assert results["partition"]["clients"] == 4 and sum(results["partition"]["sizes"]) == 1347
    assert len(results["partition"]["table"]) == 4 and results["partition"]["classes"] == list(
        range(10)
    )
    assert [s["label"] for s in results["strategies"]] == ["FedAvg", "FedProx"]
    assert [s["train"].get("mu") for s in results["strategies"]] == [None, 0.1]
    for strategy in results["strategies"]:
        rounds = strategy["rounds"]
        assert [r["round"] for r in rounds] == [0, 1, 2]
        assert rounds[0]["commit"] == results["initial_commit"] and rounds[0]["participants"] == 0
        for record in rounds:
            assert 0 <= record["accuracy"] <= 1 and record["loss"] > 0
        assert [r["participants"] for r in rounds[1:]] == [4, 4]
    for name in ("accuracy.png", "loss.png", "partition.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_round_is_a_signed_octopus_merge_on_its_branch(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = json.loads((run / "results.json").read_text())
    with Repository.open(run / "repo") as repo:
        for strategy in results["strategies"]:
            assert repo.resolve(strategy["branch"]) == strategy["rounds"][-1]["commit"]
            for record in strategy["rounds"][1:]:
                commit = repo.get_commit(record["commit"])
                assert len(commit.parents) == 5 and commit.signature is not None
    repo_dir, keys = str(run / "repo"), str(run / "keys")
    capsys.readouterr()
    for branch in ("fedavg", "fedprox"):
        assert cli.main(["--repo", repo_dir, "verify", branch, "--trust", keys]) == 0
        assert "ok: history of" in capsys.readouterr().out


def test_the_run_prints_a_table_and_refuses_to_overwrite(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = run.parent / "tiny.toml"
    assert cli.main(["simulate", str(config), "--out", str(run)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_bad_experiment_files_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(EXPERIMENT.replace("alpha = 0.5", "alpha = 0.5\nbeta = 1"))
    assert cli.main(["simulate", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "[partition]: unknown key(s) beta" in err and not (tmp_path / "out").exists()


def test_progress_and_tables_are_printed_and_no_plots_skips_the_pngs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "one.toml"
    config.write_text(EXPERIMENT.replace("rounds = 2", "rounds = 1"))
    out = tmp_path / "out"
    assert (
        cli.main(["simulate", str(config), "--out", str(out), "--rounds", "1", "--no-plots"]) == 0
    )
    assert (out / "results.json").is_file() and not list(out.glob("*.png"))
    captured = capsys.readouterr()
    assert "FedProx round 1: accuracy" in captured.err  # one line per round off a terminal
    assert "partition dirichlet alpha=0.5: 4 clients" in captured.out
    assert "FedAvg acc / loss" in captured.out and "final acc" in captured.out


def test_the_progress_bar_redraws_in_place_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    bar = ProgressBar(total=4, stream=stream, width=8)
    bar.trained("FedAvg", 1, 2)
    bar.round_finished("FedAvg", RoundRecord(1, ObjectId("ab" * 32), [0, 1], {"accuracy": 0.5}))
    bar.trained("FedAvg", 2, 2)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r[####----]  50%") and "FedAvg round 1: accuracy 0.5" in text
    assert "\r[########] 100%" in text and text.endswith("\n")
