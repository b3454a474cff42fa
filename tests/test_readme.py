"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fedvc.merge import Update, fedavg, make, register
from fedvc.merge import registry as registry_module

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def block_with(marker: str) -> str:
    matches = [block for block in BLOCKS if marker in block]
    assert len(matches) == 1, f"expected one README block containing {marker!r}"
    return matches[0]


def test_python_quick_tour_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(block_with("Repository.init"), "README.md", "exec"), {})
    assert (tmp_path / "runs" / ".fedvc").is_dir() and (tmp_path / "model.safetensors").is_file()


def test_custom_strategy_example_works_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    namespace: dict[str, object] = {}
    exec(compile(block_with("def geometric_median"), "README.md", "exec"), namespace)
    monkeypatch.setattr(registry_module, "_registered", {})
    register("geomedian", namespace["geometric_median"])  # type: ignore[arg-type]

    rng = np.random.default_rng(0)
    honest = [
        {"w": rng.normal(1.0, 0.01, (4, 3)).astype(np.float32), "b": np.ones(2, np.float32)}
        for _ in range(4)
    ]
    poisoned = {"w": np.full((4, 3), 1e6, np.float32), "b": np.full(2, -1e6, np.float32)}
    updates = [Update(p, client=str(i)) for i, p in enumerate([*honest, poisoned])]
    strategy = make("geomedian", {"iterations": 50})
    merged, _ = strategy.merge(None, updates, {})  # type: ignore[union-attr]
    averaged, _ = fedavg().merge(None, updates, {})
    assert np.abs(merged["w"] - 1.0).max() < 0.1 and merged["w"].dtype == np.float32
    assert np.abs(averaged["w"] - 1.0).max() > 1e4


def test_fleet_task_example_takes_part_in_a_round() -> None:
    from fedvc.coordinator import Coordinator, CoordinatorConfig
    from fedvc.participant import Participant
    from fedvc.repo import Repository
    from fedvc.signing import SigningKey
    from fedvc.trust import TrustStore

    namespace: dict[str, object] = {}
    exec(compile(block_with("class Task:"), "README.md", "exec"), namespace)
    repo = Repository.memory()
    server, client = SigningKey.generate(), SigningKey.generate()
    repo.commit_params({"w": np.zeros(3, np.float32)}, "initial model", signer=server)
    coordinator = Coordinator(
        repo,
        make("fedavg"),  # type: ignore[arg-type]
        trust=TrustStore([client.public_key]),
        signer=server,
        config=CoordinatorConfig(rounds=2),
    )
    task = namespace["Task"]()  # type: ignore[operator]
    submitted = Participant(coordinator, task, client, repo).run()
    assert [s.verdict.admitted for s in submitted] == [True, True]
    np.testing.assert_allclose(repo.read_params("main")["w"], 0.2, rtol=1e-6)


def test_in_process_federation_example_runs_three_signed_rounds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace: dict[str, object] = {}
    exec(compile(block_with("while not coordinator.finished"), "README.md", "exec"), namespace)
    repo = namespace["repo"]
    merges = [c for _, c in repo.log("main", first_parent=True) if len(c.parents) > 1]  # type: ignore[attr-defined]
    assert len(merges) == 3 and all(len(c.parents) == 4 for c in merges)
    np.testing.assert_allclose(repo.read_params("main")["w"], 6.0)  # type: ignore[attr-defined]
    assert "6." in capsys.readouterr().out


@pytest.mark.slow
def test_the_quickstart_example_runs_a_verified_round(tmp_path: Path) -> None:
    """The README's first command, at one epoch: every fedvc command in it succeeds."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    done = subprocess.run(
        [sys.executable, str(script), "--dir", str(tmp_path / "repo"), "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "merged model (HEAD): test accuracy" in done.stdout
    assert "$ fedvc" in done.stdout and "verify" in done.stdout
