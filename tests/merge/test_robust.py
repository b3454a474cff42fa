"""Byzantine-robust aggregation: median, trimmed mean, Krum, Multi-Krum, norm clipping."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
from bitwise import assert_bit_equal
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedvc.diff import norm
from fedvc.merge import (
    MergeError,
    MergeStrategy,
    Update,
    UpdateTransform,
    chain,
    clip_by_norm,
    fedavg,
    krum,
    make,
    median,
    multikrum,
    strategy_from_spec,
    trimmed_mean,
)

robust = importlib.import_module("fedvc.merge.robust")


def model(seed: int, spread: float = 0.1) -> dict[str, np.ndarray]:
    """A small model near a common centre; ``spread`` sets how far clients stray."""
    rng = np.random.default_rng(seed)
    return {
        "fc.weight": (1.0 + spread * rng.standard_normal((5, 4))).astype(np.float32),
        "fc.bias": (spread * rng.standard_normal(5)).astype(np.float64),
        "bn.num_batches_tracked": np.array(10 * seed, np.int64),
    }


BASE = model(0)
UPDATES = [Update(model(i), weight=float(i), client=f"c{i}") for i in range(1, 8)]


def points(*values: float, weights: tuple[float, ...] | None = None) -> list[Update]:
    """One-coordinate clients ``c0, c1, ...`` at ``values``."""
    return [
        Update(
            {"x": np.array([value], np.float64)},
            weight=1.0 if weights is None else weights[i],
            client=f"c{i}",
        )
        for i, value in enumerate(values)
    ]


def run(
    strategy: MergeStrategy, updates: list[Update], base: object = BASE
) -> dict[str, np.ndarray]:
    merged, state = strategy.merge(base, updates, strategy.init(base))  # type: ignore[arg-type]
    assert state == {}
    return merged


STRATEGIES = [
    median,
    lambda: trimmed_mean(0.2),
    lambda: krum(1),
    lambda: multikrum(2),
    lambda: multikrum(1, m=3),
    lambda: chain(clip_by_norm(0.5), fedavg()),
]


@pytest.mark.parametrize("factory", STRATEGIES)
@settings(max_examples=20, deadline=None)
@given(order=st.permutations(range(len(UPDATES))))
def test_client_order_does_not_matter(factory, order: list[int]) -> None:  # type: ignore[no-untyped-def]
    strategy = factory()
    assert_bit_equal(run(strategy, UPDATES), run(strategy, [UPDATES[i] for i in order]))


@pytest.mark.parametrize("factory", STRATEGIES[:-1])
def test_identical_inputs_give_the_input_back_exactly(factory) -> None:  # type: ignore[no-untyped-def]
    one = model(3)
    copies = [Update(one, weight=float(i + 1), client=f"c{i}") for i in range(7)]
    assert_bit_equal(run(factory(), copies), one)
    assert_bit_equal(run(factory(), copies, base=None), one)


def test_identical_inputs_pass_through_clipping_and_averaging() -> None:
    one = model(3)
    copies = [Update(one, weight=float(i + 1), client=f"c{i}") for i in range(4)]
    merged = run(chain(clip_by_norm(0.5), fedavg()), copies, base=one)  # deltas of norm 0
    for key, value in one.items():
        np.testing.assert_allclose(merged[key], value, rtol=1e-6)  # float32 sums


@pytest.mark.parametrize("factory", STRATEGIES)
def test_spec_rebuilds_the_same_strategy(factory) -> None:  # type: ignore[no-untyped-def]
    strategy = factory()
    rebuilt = strategy_from_spec(strategy.spec.to_json())
    assert rebuilt.spec == strategy.spec and rebuilt.streams == strategy.streams
    assert_bit_equal(run(rebuilt, UPDATES), run(strategy, UPDATES))


@pytest.mark.parametrize("factory", [median, trimmed_mean, krum, multikrum])
def test_weights_are_ignored_by_the_counting_rules(factory) -> None:  # type: ignore[no-untyped-def]
    reweighted = [
        u.with_params(u.params, weight=100.0 if i == 0 else 1.0) for i, u in enumerate(UPDATES)
    ]
    # multikrum averages its selection by weight: only m = 1 ignores weights.
    strategy = multikrum(1, m=1) if factory is multikrum else factory()
    assert_bit_equal(run(strategy, UPDATES), run(strategy, reweighted))


def test_median_of_three_ignores_the_outlier() -> None:
    assert run(median(), points(1, 100, 2), base=None)["x"].tolist() == [2.0]


def test_median_of_an_even_count_averages_the_middle_pair() -> None:
    assert run(median(), points(1, 2, 4, 100), base=None)["x"].tolist() == [3.0]


def test_median_of_counters_rounds_half_to_even() -> None:
    updates = [Update({"n": np.array([v], np.int64)}, client=f"c{v}") for v in (10, 20, 31, 40)]
    merged = run(median(), updates, base=None)["n"]
    assert merged.dtype == np.int64 and merged.tolist() == [26]  # (20 + 31) / 2 = 25.5


def test_median_with_a_base_equals_median_without() -> None:
    assert_bit_equal(run(median(), UPDATES), run(median(), UPDATES, base=None))


def test_a_minority_of_nan_clients_cannot_poison_the_median() -> None:
    merged = run(median(), points(1.0, math.nan, 2.0, 3.0, math.inf), base=None)
    assert merged["x"].tolist() == [3.0]


@settings(max_examples=50, deadline=None)
@given(
    values=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 7), st.integers(0, 9)),
        elements=st.floats(-1e6, 1e6, width=32),
    )
)
def test_median_matches_numpy(values: np.ndarray) -> None:
    updates = [Update({"w": row}, client=f"c{i}") for i, row in enumerate(values)]
    expected = np.median(values.astype(np.float64), axis=0).astype(np.float32)
    np.testing.assert_array_equal(run(median(), updates, base=None)["w"], expected)


def test_chunking_does_not_change_any_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    strategies = [median(), trimmed_mean(0.2), krum(1), multikrum(1)]
    whole = [run(s, UPDATES) for s in strategies]
    monkeypatch.setattr(robust, "CHUNK", 3)
    for strategy, expected in zip(strategies, whole, strict=True):
        assert_bit_equal(run(strategy, UPDATES), expected)


def test_trimmed_mean_with_a_third_on_three_clients_is_the_middle_value() -> None:
    assert run(trimmed_mean(1 / 3), points(7, -50, 4), base=None)["x"].tolist() == [4.0]


def test_trimmed_mean_drops_the_extremes_and_averages_the_rest() -> None:
    # beta = 0.2 of 5 clients drops one value from each end of every coordinate.
    merged = run(trimmed_mean(0.2), points(1, 100, 3, -40, 5), base=None)
    assert merged["x"].tolist() == [3.0]
    assert run(trimmed_mean(0.0), points(1, 2, 6), base=None)["x"].tolist() == [3.0]


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7, math.nan, True, "0.1"])
def test_trimmed_mean_rejects_a_bad_beta(beta: object) -> None:
    with pytest.raises(MergeError, match=r"\[0, 0.5\)"):
        trimmed_mean(beta)  # type: ignore[arg-type]


@pytest.mark.parametrize("factory", [median, trimmed_mean, krum, multikrum])
def test_no_updates_is_an_error(factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MergeError, match="at least one update"):
        run(factory(), [])


def test_krum_picks_a_benign_client_over_an_outlier() -> None:
    outlier = Update({k: v + 50 for k, v in model(9).items()}, weight=1000.0, client="c0")
    updates = [outlier, *UPDATES[:5]]
    merged = run(krum(1), updates)
    assert any(
        merged["fc.weight"].tobytes() == u.params["fc.weight"].tobytes() for u in UPDATES[:5]
    )
    assert merged["fc.weight"].tobytes() != outlier.params["fc.weight"].tobytes()


def test_krum_scores_by_nearest_neighbours() -> None:
    # f = 1 of n = 5: each score sums the 2 nearest squared distances. Clients at 1 and 2
    # both score 2; the tie goes to the first in client order.
    assert run(krum(1), points(0, 1, 2, 3, 100), base=None)["x"].tolist() == [1.0]


def test_krum_never_picks_a_nan_client() -> None:
    merged = run(krum(1), points(math.nan, 1, 1.5, 2, 3), base=None)
    assert merged["x"].tolist() == [1.5]


def test_krum_ignores_counters_in_its_distances() -> None:
    updates = points(0, 1, 2, 3, 100)
    updates = [
        u.with_params({**u.params, "n": np.array(10**9 * i, np.int64)})
        for i, u in enumerate(updates)
    ]
    merged = run(krum(1), updates, base=None)
    assert merged["x"].tolist() == [1.0] and merged["n"].tolist() == 10**9


@pytest.mark.parametrize("factory", [krum, multikrum])
def test_krum_needs_more_than_2f_plus_2_clients(factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MergeError, match=r"more than 2f \+ 2 = 4 updates .* got 4"):
        run(factory(1), UPDATES[:4])
    run(factory(1), UPDATES[:5])


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_krum_rejects_a_bad_f(bad: object) -> None:
    with pytest.raises(MergeError, match="integer ≥ 0"):
        krum(bad)  # type: ignore[arg-type]


def test_multikrum_averages_the_m_best() -> None:
    assert run(multikrum(1, m=2), points(0, 1, 2, 3, 100), base=None)["x"].tolist() == [1.5]
    weighted = points(0, 1, 2, 3, 100, weights=(1, 1, 3, 1, 1))
    assert run(multikrum(1, m=2), weighted, base=None)["x"].tolist() == [1.75]
    # m defaults to n - f = 4: every client but the outlier.
    assert run(multikrum(1), points(0, 1, 2, 3, 100), base=None)["x"].tolist() == [1.5]


def test_multikrum_with_m_one_is_krum() -> None:
    assert_bit_equal(run(multikrum(1, m=1), UPDATES), run(krum(1), UPDATES))


def test_multikrum_checks_m() -> None:
    with pytest.raises(MergeError, match="integer ≥ 1"):
        multikrum(1, m=0)
    with pytest.raises(MergeError, match="averages 8 updates but only 7 arrived"):
        run(multikrum(1, m=8), UPDATES)
    zero = [u.with_params(u.params, weight=0.0) for u in UPDATES]
    with pytest.raises(MergeError, match="weights sum to 0"):
        run(multikrum(1), zero)


def shifted(delta: dict[str, np.ndarray], client: str = "c1") -> Update:
    return Update({k: BASE[k] + v.astype(BASE[k].dtype) for k, v in delta.items()}, client=client)


def delta_of(update: Update) -> dict[str, np.ndarray]:
    return {
        k: np.asarray(update.params[k], np.float64) - BASE[k]
        for k in BASE
        if k != "bn.num_batches_tracked"
    }


def test_clip_by_norm_scales_a_long_delta_down() -> None:
    step = np.zeros((5, 4))
    step[0, 0], step[1, 1] = 6.0, 8.0  # norm 10
    update = shifted(
        {"fc.weight": step, "fc.bias": np.zeros(5), "bn.num_batches_tracked": np.array(3)}
    )
    (clipped,) = clip_by_norm(5.0).apply(BASE, [update])
    assert norm(delta_of(clipped)) == pytest.approx(5.0, rel=1e-6)
    assert delta_of(clipped)["fc.weight"][0, 0] == pytest.approx(3.0, rel=1e-6)
    assert clipped.params["bn.num_batches_tracked"] == BASE["bn.num_batches_tracked"] + 3


def test_clip_by_norm_leaves_a_short_delta_alone() -> None:
    update = shifted(
        {
            "fc.weight": np.zeros((5, 4)),
            "fc.bias": np.full(5, 2 / math.sqrt(5)),
            "bn.num_batches_tracked": np.array(0),
        }
    )
    (kept,) = clip_by_norm(5.0).apply(BASE, [update])
    assert kept is update


def test_clip_by_norm_measures_the_whole_model() -> None:
    step = {
        "fc.weight": np.full((5, 4), 3 / math.sqrt(20)),
        "fc.bias": np.full(5, 4 / math.sqrt(5)),
    }
    update = shifted({**step, "bn.num_batches_tracked": np.array(0)})  # norm 5 over two tensors
    (clipped,) = clip_by_norm(2.5).apply(BASE, [update])
    for key, value in delta_of(clipped).items():
        np.testing.assert_allclose(value, step[key] / 2, rtol=1e-5)


def test_clip_by_norm_streams_inside_chain() -> None:
    strategy = chain(clip_by_norm(5.0), fedavg())
    assert strategy.streams
    assert not chain(clip_by_norm(5.0), median()).streams
    far = [
        shifted({k: 10 * np.ones_like(v, np.float64) for k, v in BASE.items()}, f"c{i}")
        for i in range(3)
    ]
    accumulator = strategy.accumulate(BASE, {})  # type: ignore[misc]
    for update in far:
        accumulator.add(update)
    streamed, _ = accumulator.finish()
    assert_bit_equal(streamed, run(strategy, far))
    assert norm(delta_of(Update(streamed))) == pytest.approx(5.0, rel=1e-5)


def test_clip_by_norm_needs_a_base_and_a_finite_delta() -> None:
    with pytest.raises(MergeError, match="give the base"):
        clip_by_norm(1.0).apply(None, UPDATES)
    broken = shifted(
        {
            "fc.weight": np.full((5, 4), math.nan),
            "fc.bias": np.zeros(5),
            "bn.num_batches_tracked": np.array(0),
        }
    )
    with pytest.raises(MergeError, match="NaN or infinite"):
        clip_by_norm(1.0).apply(BASE, [broken])


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, True])
def test_clip_by_norm_rejects_a_bad_bound(bad: object) -> None:
    with pytest.raises(MergeError, match="finite number > 0"):
        clip_by_norm(bad)  # type: ignore[arg-type]


def test_clip_by_norm_is_a_registered_transform() -> None:
    transform = make("clip_by_norm", {"max_norm": 5})
    assert isinstance(transform, UpdateTransform) and transform.spec.params == {"max_norm": 5.0}
    with pytest.raises(MergeError, match="update transform"):
        strategy_from_spec(transform.spec.to_json())
