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


def test_seed_table_counts_the_targets(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.parse_seeds("0-2,5") == [0, 1, 2, 5]
    fields = dict(clients=[0.8], sizes=[100], best_client=0.8, ensemble=0.9, regmean=0.95)
    hit = bench.MergeFigures(naive=0.2, matched=0.8, matched_fisher=0.9, **fields)
    miss = bench.MergeFigures(naive=0.6, matched=0.7, matched_fisher=0.79, **fields)
    bench.report_seeds([(0, hit), (1, miss), (2, hit)])
    out = capsys.readouterr().out
    assert "matched >= 0.78: 2 of 3 seeds" in out
    assert "matched + Fisher >= 0.85 and > best client: 2 of 3 seeds" in out
    assert "naive <= 0.3 (collapses): 2 of 3 seeds" in out
    assert "0.700*" in out and "0.790*" in out and "0.800*" not in out
