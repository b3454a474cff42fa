"""bench/transport.py in a tiny configuration, so the script never rots.

The real run moves a gigabyte and a hundred clients; this one moves 10 MB and four
clients through every phase (a child server process included) and checks the figures.
"""

from __future__ import annotations

from types import ModuleType

import pytest
from script_loader import load_script

pytest.importorskip("fedvc_server")
pytest.importorskip("fedvc_client")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench/transport.py", "bench_transport")


def test_tiny_transport_bench(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    status = bench.main(["--gb", "0.01", "--clients", "4", "--rounds", "2"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "MB/s" in out and "8 updates admitted, 2 rounds merged" in out and " 0 errors" in out
    percent = float(out.split("MB on the wire, ")[1].split("%")[0])
    assert 9.0 < percent < 12.0  # one of ten tensors changed: a tenth of the bytes travel
