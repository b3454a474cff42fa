"""bench/simulation.py in a tiny configuration: every section runs and reports figures.

The real benchmark takes minutes; this only guards against the script rotting (an API it
calls changing under it), with a handful of clients, one or two rounds and one process.
The ``flower`` section is checked through its one Flower run, the part that calls Flower.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from script_loader import load_script

pytest.importorskip("fedvc_client")
pytestmark = pytest.mark.slow  # the fleet section runs in a process of its own


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench/simulation.py", "bench_simulation")


def test_every_section_runs_tiny(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    figures = bench.main(
        [
            "--workers=1",
            "--epochs=1",
            "--overhead-clients=4",
            "--overhead-rounds=1",
            "--scale-clients=6",
            "--scale-rounds=1",
            "--fleet-clients=40",
            "--fleet-rounds=1",
            "--fleet-fraction=0.1",
            "--skew-rounds=1",
            f"--json={out}",
        ]
    )
    assert list(figures) == list(bench.DEFAULT_SECTIONS) and out.is_file()
    assert figures["overhead"]["client_rounds"] == 4
    assert figures["overhead"]["overhead_ms_per_client_round"] > 0
    assert figures["scale"]["client_rounds"] == 6
    assert figures["fleet"]["client_rounds"] == 4 and figures["fleet"]["peak_rss_mib"] > 0
    assert set(figures["skew"]["final_accuracy"]) == {"FedAvg", "FedProx", "Fisher", "Matched"}
    printed = capsys.readouterr().out
    for name in bench.DEFAULT_SECTIONS:
        assert f"{name}:" in printed


@pytest.mark.skipif(
    importlib.util.find_spec("flwr") is None or importlib.util.find_spec("ray") is None,
    reason='the Flower comparison needs Flower\'s simulation extra: pip install "flwr[simulation]"',
)
def test_flower_trains_the_same_clients_as_fedvc_tiny(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``flower`` section's engine, once (Ray's start is most of its ~20 s): the fedvc
    strategy in Flower's simulation engine, 3 clients x 2 rounds, lands on fedvc's models."""
    from fedvc.repo import Repository
    from fedvc.simulation.runner import server_key

    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    config = bench.experiment(bench.digits_toml(3, 2, 1, epochs=1))
    ours = Repository.memory()
    fedvc = bench.run_experiment(config, ours)
    repo = Repository.init(tmp_path / "repo", bare=True)
    run = bench.run_flower(config, 1, 1, repo)
    assert bench.signed_rounds(repo, "main", [server_key(config.seed).public_key]) == 2
    assert bench.total(run.rounds, "clients") == 6 and bench.total(run.rounds, "train") > 0
    expected = [r.accuracy for r in fedvc.runs[0].rounds]
    assert run.accuracy == pytest.approx(expected, abs=1e-6)  # same clients, seeds, model
    assert bench.max_difference(run.final, repo.read_params("main")) == 0  # what it recorded
    # fedvc's own final model: equal up to the order Flower's replies are summed in
    assert bench.max_difference(run.final, ours.read_params("fedavg")) < 1e-5
    # and `fedvc simulate` as a fresh process, as the cold comparison runs it
    seconds, merges, accuracy = bench.cold_fedvc(bench.digits_toml(3, 1, 1, epochs=1), 1, 0, 3)
    assert seconds > 0 and merges == 1 and accuracy == pytest.approx(expected[1], abs=1e-6)
