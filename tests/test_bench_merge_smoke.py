"""bench/merge.py in a tiny configuration: every phase runs and reports sane figures.

The real benchmark takes minutes; this only guards against the script rotting (an API it
calls changing under it), with small models, few epochs and three clients.
"""

from __future__ import annotations

from types import ModuleType

import pytest
from script_loader import load_script

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench/merge.py", "bench_merge")


def test_tiny_merge_and_barrier(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    data = bench.load_data()
    recipe = bench.Recipe(epochs=3)
    figures = bench.run_merge(
        data, recipe, seed=0, clients=3, widths=(64, 16, 16, 10), fisher_draws=2, verbose=True
    )
    assert len(figures.clients) == 3 and sum(figures.sizes) == len(data.y_train)
    for value in (
        figures.naive,
        figures.matched,
        figures.matched_fisher,
        figures.regmean,
        figures.ensemble,
    ):
        assert 0.0 <= value <= 1.0
    assert min(figures.sizes) >= 10  # the Dirichlet split's min_size holds
    bench.report_merge(figures)
    barriers = bench.run_barrier(data, recipe, seed=0, widths=(64, 32, 32, 10), steps=3)
    assert set(barriers) == {"naive", "aligned"}
    assert all(result.ts == (0.0, 0.5, 1.0) for result in barriers.values())
    # aligning b to a permutes b: the endpoints compute the same functions, so same losses
    assert barriers["aligned"].losses[-1] == pytest.approx(barriers["naive"].losses[-1], rel=1e-5)
    bench.report_barrier(barriers)
    out = capsys.readouterr().out
    assert "matched + Fisher" in out and "regmean" in out and "aligned" in out
