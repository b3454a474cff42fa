"""Task arithmetic, TIES, DARE and slerp: merges of task vectors τᵢ = θᵢ - base."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bitwise import assert_bit_equal
from hypothesis import given, settings
from hypothesis import strategies as st

from fedvc.interference import interference_report
from fedvc.merge import (
    MergeError,
    MergeStrategy,
    Update,
    dare,
    fedavg,
    make,
    slerp,
    strategy_from_spec,
    task_arithmetic,
    ties,
)
from fedvc.merge.base import top_k_count


def model(seed: int, spread: float = 0.1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc.weight": (1.0 + spread * rng.standard_normal((6, 5))).astype(np.float32),
        "fc.bias": (spread * rng.standard_normal(6)).astype(np.float64),
        "bn.num_batches_tracked": np.array(10 * seed, np.int64),
    }


BASE = model(0)
UPDATES = [Update(model(i), weight=float(i), client=f"c{i}") for i in range(1, 6)]


def vectors(*taus: list[float], weights: tuple[float, ...] | None = None) -> list[Update]:
    """Clients ``c0, c1, ...`` whose task vectors (to a zero base) are ``taus``."""
    return [
        Update(
            {"x": np.array(tau, np.float64)},
            weight=1.0 if weights is None else weights[i],
            client=f"c{i}",
        )
        for i, tau in enumerate(taus)
    ]


def zero(size: int) -> dict[str, np.ndarray]:
    return {"x": np.zeros(size)}


def run(
    strategy: MergeStrategy, updates: list[Update], base: object = BASE
) -> dict[str, np.ndarray]:
    merged, state = strategy.merge(base, updates, strategy.init(base))  # type: ignore[arg-type]
    assert state == {}
    return merged


STRATEGIES = [
    task_arithmetic,
    lambda: task_arithmetic(0.3),
    ties,
    lambda: ties(0.5, 0.8),
    dare,
    lambda: dare(0.3, 0.5, 7),
]
ALL = [*STRATEGIES, slerp, lambda: slerp(0.3)]


def inputs_for(strategy: MergeStrategy) -> list[Update]:
    return UPDATES[:2] if strategy.spec.name == "slerp" else UPDATES


@pytest.mark.parametrize("factory", ALL)
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_client_order_does_not_matter(factory, seed: int) -> None:  # type: ignore[no-untyped-def]
    strategy = factory()
    updates = inputs_for(strategy)
    shuffled = [updates[i] for i in np.random.default_rng(seed).permutation(len(updates))]
    assert_bit_equal(run(strategy, updates), run(strategy, shuffled))


@pytest.mark.parametrize("factory", ALL)
def test_spec_rebuilds_the_same_strategy(factory) -> None:  # type: ignore[no-untyped-def]
    strategy = factory()
    rebuilt = strategy_from_spec(strategy.spec.to_json())
    assert rebuilt.spec == strategy.spec and rebuilt.streams == strategy.streams
    assert_bit_equal(run(rebuilt, inputs_for(strategy)), run(strategy, inputs_for(strategy)))


@pytest.mark.parametrize(
    "strategy",
    [task_arithmetic(1 / 4), ties(1.0), dare(1.0, 1 / 4), slerp(0.0), slerp(0.3), slerp(1.0)],
    ids=str,
)
def test_identical_inputs_give_the_input_back(strategy: MergeStrategy) -> None:
    one = model(3)
    count = 2 if strategy.spec.name == "slerp" else 4
    copies = [Update(one, weight=float(i + 1), client=f"c{i}") for i in range(count)]
    merged = run(strategy, copies)
    for key, value in one.items():
        np.testing.assert_allclose(merged[key], value, rtol=1e-6)  # float32 sums
        assert merged[key].dtype == value.dtype


@pytest.mark.parametrize("name", ["task_arithmetic", "dare"])
def test_the_sums_stream(name: str) -> None:
    strategy = make(name)
    assert isinstance(strategy, MergeStrategy) and strategy.streams
    assert strategy.accumulate is not None
    accumulator = strategy.accumulate(BASE, {})
    for update in UPDATES:  # the round engine adds updates in client order
        accumulator.add(update)
    streamed, _ = accumulator.finish()
    assert_bit_equal(streamed, run(strategy, UPDATES[::-1]))
    assert not ties().streams and not slerp().streams


@pytest.mark.parametrize("factory", [task_arithmetic, ties, dare])
def test_task_vectors_need_a_base(factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MergeError, match="needs the round's base model"):
        run(factory(), UPDATES, base=None)


@pytest.mark.parametrize("factory", [task_arithmetic, ties, dare])
def test_no_updates_or_no_weight_is_an_error(factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MergeError, match="at least one update"):
        run(factory(), [])
    with pytest.raises(MergeError, match="weights sum to 0"):
        run(factory(), [u.with_params(u.params, weight=0.0) for u in UPDATES])


def test_task_arithmetic_adds_the_task_vectors() -> None:
    updates = vectors([1, 2], [3, -1])
    assert run(task_arithmetic(), updates, base=zero(2))["x"].tolist() == [4, 1]
    assert run(task_arithmetic(0.5), updates, base=zero(2))["x"].tolist() == [2, 0.5]


def test_task_arithmetic_weights_average_one() -> None:
    # weights 1 and 3 become 0.5 and 1.5; equal weights of any size give the plain sum.
    weighted = vectors([1, 2], [3, -1], weights=(1, 3))
    assert run(task_arithmetic(), weighted, base=zero(2))["x"].tolist() == [5, -0.5]
    equal = vectors([1, 2], [3, -1], weights=(7, 7))
    assert run(task_arithmetic(), equal, base=zero(2))["x"].tolist() == [4, 1]


def test_task_arithmetic_scaled_by_one_over_n_is_fedavg() -> None:
    merged = run(task_arithmetic(1 / len(UPDATES)), UPDATES)
    averaged = run(fedavg(), UPDATES)
    for key in BASE:
        np.testing.assert_allclose(merged[key], averaged[key], rtol=1e-5, atol=1e-6)


def test_counters_take_the_weighted_mean() -> None:
    for strategy in (task_arithmetic(), ties(), dare()):
        # counters 10..50 weighted 1..5: 550 / 15 = 36.67
        assert run(strategy, UPDATES)["bn.num_batches_tracked"].tolist() == 37


def test_ties_trims_elects_and_takes_the_disjoint_mean() -> None:
    taus = ([3, -1, 0.5, 2], [-2, -2, 0.2, 2], [1, 4, 0.1, -1])
    # Without trimming, every sign sum is positive; each coordinate averages its positive
    # entries: (3 + 1) / 2, 4, (0.5 + 0.2 + 0.1) / 3, (2 + 2) / 2.
    merged = run(ties(1.0), vectors(*taus), base=zero(4))["x"]
    np.testing.assert_allclose(merged, [2, 4, 0.8 / 3, 2])
    # density 0.5 keeps the top 2 magnitudes of each vector (ties at the threshold all
    # stay): [3, 0, 0, 2], [-2, -2, 0, 2], [1, 4, 0, -1]. Coordinate 2 is trimmed away.
    merged = run(ties(0.5), vectors(*taus), base=zero(4))["x"]
    assert merged.tolist() == [2, 4, 0, 2]
    assert run(ties(0.5, scale=0.5), vectors(*taus), base=zero(4))["x"].tolist() == [1, 2, 0, 1]


def test_ties_weights_the_election_and_the_mean() -> None:
    # Coordinate 0: 1·3 - 1·2 + 2·1 = 3 elects +; agreeing 3 (w 1) and 1 (w 2) → 5/3.
    # Coordinate 1: 1·1 - 1·2 + 2·0 = -1 elects -, so only the second vector counts.
    merged = run(ties(1.0), vectors([3, 1], [-2, -2], [1, 0], weights=(1, 1, 2)), base=zero(2))
    np.testing.assert_allclose(merged["x"], [5 / 3, -2])


def test_ties_with_no_agreeing_entry_keeps_the_base() -> None:
    merged = run(ties(1.0), vectors([6.0], [4.0]), base={"x": np.array([5.0])})  # τ = ±1
    assert merged["x"].tolist() == [5.0]


def test_dare_is_deterministic_under_its_seed() -> None:
    first = run(dare(0.5, seed=1), UPDATES)
    assert_bit_equal(first, run(dare(0.5, seed=1), UPDATES))
    other = run(dare(0.5, seed=2), UPDATES)
    assert first["fc.weight"].tobytes() != other["fc.weight"].tobytes()


def test_dare_at_full_density_is_task_arithmetic() -> None:
    assert_bit_equal(run(dare(1.0, 0.7), UPDATES), run(task_arithmetic(0.7), UPDATES))


def test_dare_drops_and_rescales() -> None:
    merged = run(dare(0.3), vectors([1.0] * 20_000), base=zero(20_000))["x"]
    survivors = merged[merged != 0]
    np.testing.assert_allclose(survivors, 1 / 0.3)
    assert abs(survivors.size / merged.size - 0.3) < 0.02


def test_dares_drop_depends_only_on_seed_client_and_tensor() -> None:
    # A second client with a zero task vector changes nothing (weights average 1 either
    # way): c0's drop does not depend on who else reported, or in what order.
    alone = run(dare(0.5, seed=3), vectors([1.0] * 64), base=zero(64))
    both = vectors([1.0] * 64, [0.0] * 64)
    assert_bit_equal(run(dare(0.5, seed=3), both[::-1], base=zero(64)), alone)
    renamed = [Update({"x": np.ones(64)}, client="someone-else")]
    assert run(dare(0.5, seed=3), renamed, base=zero(64))["x"].tobytes() != alone["x"].tobytes()


@pytest.mark.parametrize(
    ("factory", "params"),
    [
        (dare, {"density": 0.0}),
        (dare, {"density": 1.5}),
        (dare, {"seed": 1.5}),
        (ties, {"density": 0}),
        (ties, {"scale": math.nan}),
        (task_arithmetic, {"scale": math.inf}),
        (slerp, {"t": 1.5}),
        (slerp, {"t": -0.1}),
    ],
)
def test_bad_parameters_are_refused(factory, params: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MergeError, match=r"must be"):
        factory(**params)


def test_slerp_returns_its_endpoints() -> None:
    first, second = UPDATES[:2]
    assert_bit_equal(run(slerp(0.0), [second, first]), first.params)  # c1 sorts first
    assert_bit_equal(run(slerp(1.0), [second, first]), second.params)


def test_slerp_keeps_the_norm_of_orthogonal_equal_norm_vectors() -> None:
    merged = run(slerp(0.5), vectors([3.0, 0.0], [0.0, 3.0]), base=None)["x"]
    np.testing.assert_allclose(merged, [3 / math.sqrt(2), 3 / math.sqrt(2)])
    assert np.linalg.norm(merged) == pytest.approx(3.0)
    quarter = run(slerp(1 / 3), vectors([1.0, 0.0], [0.0, 1.0]), base=None)["x"]
    np.testing.assert_allclose(quarter, [math.cos(math.pi / 6), math.sin(math.pi / 6)])


def test_slerp_falls_back_to_linear_for_colinear_or_zero_vectors() -> None:
    assert run(slerp(0.5), vectors([1.0, 2.0], [2.0, 4.0]), base=None)["x"].tolist() == [1.5, 3.0]
    assert run(slerp(0.25), vectors([0.0, 0.0], [4.0, 8.0]), base=None)["x"].tolist() == [1.0, 2.0]
    assert run(slerp(0.5), vectors([1.0, 1.0], [-1.0, -1.0]), base=None)["x"].tolist() == [0.0, 0.0]


def test_slerp_does_not_use_the_base() -> None:
    assert_bit_equal(run(slerp(0.3), UPDATES[:2]), run(slerp(0.3), UPDATES[:2], base=None))


def test_slerp_merges_exactly_two_models() -> None:
    for count in (1, 3):
        with pytest.raises(MergeError, match=f"exactly two models, got {count}"):
            run(slerp(), UPDATES[:count])


def test_slerp_ignores_weights_and_interpolates_counters_linearly() -> None:
    first, second = UPDATES[:2]
    heavy = [first.with_params(first.params, weight=100.0), second]
    merged = run(slerp(0.3), heavy)
    assert_bit_equal(merged, run(slerp(0.3), UPDATES[:2]))
    assert merged["bn.num_batches_tracked"].tolist() == 13  # 10 + 0.3 · (20 - 10)


def test_ties_keeps_at_least_one_entry_at_a_tiny_density() -> None:
    # Regression: ⌈1e-10 · size - slack⌉ was 0, and np.partition failed with ValueError.
    merged, _ = ties(density=1e-10).merge(BASE, UPDATES, {})
    moved = merged["fc.weight"] != BASE["fc.weight"]
    assert 1 <= np.count_nonzero(moved) <= len(UPDATES)


def test_ties_and_the_interference_report_count_the_same_top_k() -> None:
    # Regression: at density 0.07 on 100 entries TIES kept 7, interference 8.
    assert top_k_count(0.07, 100) == 7
    assert top_k_count(1e-10, 100) == 1 and top_k_count(1.0, 100) == 100
    assert top_k_count(0.5, 0) == 0
    base = {"x": np.zeros(100)}
    delta = np.arange(1.0, 101.0)
    first = Update({"x": delta}, client="a")
    second_delta = delta.copy()
    second_delta[92] = 0.0  # the 8th largest: outside a top-7 mask, inside a top-8 one
    second = Update({"x": second_delta}, client="b")
    merged, _ = ties(density=0.07).merge(base, [first, second], {})
    assert np.count_nonzero(merged["x"]) == 7
    report = interference_report(base, [first, second], density=0.07)
    assert report.layers["x"].overlap == 1.0


def test_scale_must_be_a_finite_number() -> None:
    for factory in (task_arithmetic, dare, ties):
        for scale in ("1", True, math.inf):
            with pytest.raises(MergeError, match=r"\(scale=\.\.\.\) must be a finite number"):
                factory(scale=scale)  # type: ignore[operator]
