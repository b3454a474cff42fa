"""``fedvc-server demo``: fresh keys, a server and three fedvc-client processes training the
reference digits task on loopback; the history it leaves verifies and replays."""

from __future__ import annotations

from pathlib import Path

import pytest
from fedvc_server.cli import main

from fedvc.cli import main as fedvc

pytestmark = pytest.mark.slow


def test_demo_runs_a_fleet_and_leaves_a_verifiable_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "demo"
    assert main(["demo", "--clients", "3", "--rounds", "2", "--dir", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "round 1: merged 3 updates" in printed and "round 2: merged 3 updates" in printed
    logs = sorted(root.glob("client-*.log"))
    assert len(logs) == 3 and all("done: 2 updates submitted" in p.read_text() for p in logs)
    trust = [
        "--trust",
        str(root / "keys" / "clients"),
        "--trust",
        str(root / "keys" / "server.key.pub"),
    ]
    assert fedvc(["--repo", str(root / "server"), "verify", "--replay", *trust]) == 0
    assert "replayed" in capsys.readouterr().out
    assert main(["demo", "--dir", str(root)]) == 2  # never over an existing run
    assert "choose an empty --dir" in capsys.readouterr().err
