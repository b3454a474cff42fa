"""bench/simulation.py in a tiny configuration: every section runs and reports figures.

The real benchmark takes minutes; this only guards against the script rotting (an API it
calls changing under it), with a handful of clients, one or two rounds and one process.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("fedvc_client")
pytestmark = pytest.mark.slow  # the fleet section runs in a process of its own

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "simulation.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_simulation", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


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
    assert list(figures) == list(bench.SECTIONS) and out.is_file()
    assert figures["overhead"]["client_rounds"] == 4
    assert figures["overhead"]["overhead_ms_per_client_round"] > 0
    assert figures["scale"]["client_rounds"] == 6
    assert figures["fleet"]["client_rounds"] == 4 and figures["fleet"]["peak_rss_mib"] > 0
    assert set(figures["skew"]["final_accuracy"]) == {"FedAvg", "FedProx", "Fisher", "Matched"}
    printed = capsys.readouterr().out
    for name in bench.SECTIONS:
        assert f"{name}:" in printed
