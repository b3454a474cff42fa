"""Fisher-weighted merging: agrees with FedAvg when it should, defers to confident clients."""

from __future__ import annotations

import importlib
import json
import random

import numpy as np
import pytest
from bitwise import assert_bit_equal

from fedvc.merge import MergeError, StrategySpec, Update, fedavg, fisher, strategy_from_spec

fisher_module = importlib.import_module("fedvc.merge.fisher")  # the package re-exports fisher()


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc.weight": rng.standard_normal((7, 5)).astype(np.float32),
        "fc.bias": rng.standard_normal(7).astype(np.float32),
        "bn.running_mean": rng.standard_normal(7).astype(np.float32),
        "bn.num_batches_tracked": np.array(10 * seed, np.int64),
    }


def fisher_of(seed: int, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Random positive Fishers for the weights; zeros for the buffers, as estimate_fisher gives."""
    rng = np.random.default_rng(1000 + seed)
    result = {name: np.zeros(array.shape, np.float32) for name, array in params.items()}
    for name in ("fc.weight", "fc.bias"):
        result[name] = rng.uniform(0.01, 5.0, params[name].shape).astype(np.float32)
    return result


def updates(count: int = 5) -> list[Update]:
    result = []
    for i in range(1, count + 1):
        params = model(i)
        result.append(Update(params, weight=float(i), client=f"c{i}", fisher=fisher_of(i, params)))
    return result


def merge(updates: list[Update], epsilon: float = 1e-8) -> dict[str, np.ndarray]:
    strategy = fisher(epsilon)
    merged, state = strategy.merge(None, updates, strategy.init(None))
    assert state == {}
    return merged


def test_equal_fishers_give_fedavg() -> None:
    same = [u.with_params(u.params, fisher=updates()[0].fisher) for u in updates()]
    merged = merge(same)
    expected, _ = fedavg().merge(None, same, {})
    assert merged.keys() == expected.keys()
    for name in merged:
        assert merged[name].dtype == expected[name].dtype
        np.testing.assert_allclose(merged[name], expected[name], rtol=1e-5, atol=1e-6)


def test_matches_the_formula() -> None:
    ups = updates()
    merged = merge(ups)
    total = sum(u.weight for u in ups)
    for name in ("fc.weight", "fc.bias"):
        assert ups[0].fisher is not None
        num = sum(u.weight / total * u.fisher[name] * u.params[name] for u in ups)  # type: ignore[index]
        den = sum(u.weight / total * u.fisher[name] for u in ups)  # type: ignore[index]
        np.testing.assert_allclose(merged[name], num / den, rtol=1e-5)


def test_a_confident_client_wins_its_coordinate() -> None:
    ups = updates(3)
    boosted = dict(ups[1].fisher or {})
    boosted["fc.weight"] = boosted["fc.weight"].copy()
    boosted["fc.weight"][2, 3] = 1e7
    ups[1] = ups[1].with_params(ups[1].params, fisher=boosted)
    merged = merge(ups)
    assert merged["fc.weight"][2, 3] == pytest.approx(ups[1].params["fc.weight"][2, 3], rel=1e-5)
    # elsewhere the others still count
    assert merged["fc.weight"][0, 0] != pytest.approx(ups[1].params["fc.weight"][0, 0], rel=1e-3)


def test_zero_fisher_falls_back_to_the_weighted_mean() -> None:
    ups = updates()
    merged = merge(ups)
    expected, _ = fedavg().merge(None, ups, {})
    # the buffers have zero Fisher everywhere; the counter is an integer tensor
    np.testing.assert_allclose(merged["bn.running_mean"], expected["bn.running_mean"], rtol=1e-6)
    assert merged["bn.num_batches_tracked"] == expected["bn.num_batches_tracked"]
    assert merged["bn.num_batches_tracked"].dtype == np.int64
    assert np.isfinite(merged["fc.weight"]).all()


def test_identical_inputs_come_back() -> None:
    params = model(3)
    same = [
        Update(params, weight=w, client=f"c{w}", fisher=fisher_of(int(w), params))
        for w in (1.0, 4.0)
    ]
    merged = merge(same)
    for name, array in params.items():
        np.testing.assert_allclose(merged[name], array, rtol=1e-6)
        assert merged[name].dtype == array.dtype


def test_client_order_does_not_matter() -> None:
    ups = updates()
    shuffled = ups[:]
    random.Random(3).shuffle(shuffled)
    assert_bit_equal(merge(ups), merge(shuffled))


def test_streams_and_accumulate_matches_merge() -> None:
    strategy = fisher()
    assert strategy.streams and strategy.accumulate is not None
    accumulator = strategy.accumulate(None, {})
    for update in sorted(updates(), key=lambda u: u.client):
        accumulator.add(update)
    streamed, state = accumulator.finish()
    assert state == {}
    assert_bit_equal(streamed, merge(updates()))


def test_large_tensors_are_chunked_exactly() -> None:
    size = 3 * fisher_module.CHUNK + 17
    rng = np.random.default_rng(0)
    ups = [
        Update(
            {"w": rng.standard_normal(size).astype(np.float32)},
            weight=float(i + 1),
            client=str(i),
            fisher={"w": rng.uniform(0, 2, size)},  # float64 Fisher for float32 params
        )
        for i in range(3)
    ]
    merged = merge(ups)["w"]
    num = sum(u.weight * (u.fisher["w"] + 1e-8) * u.params["w"] for u in ups)  # type: ignore[index]
    den = sum(u.weight * (u.fisher["w"] + 1e-8) for u in ups)  # type: ignore[index]
    assert merged.dtype == np.float32
    np.testing.assert_allclose(merged, num / den, rtol=1e-5, atol=1e-6)


def test_spec_round_trips_through_the_registry() -> None:
    strategy = fisher(1e-6)
    assert strategy.spec == StrategySpec("fisher", {"epsilon": 1e-6})
    rebuilt = strategy_from_spec(json.loads(json.dumps(strategy.spec.to_json())))
    assert rebuilt.spec == strategy.spec
    assert_bit_equal(rebuilt.merge(None, updates(), {})[0], merge(updates(), 1e-6))


def test_missing_fisher_is_an_error() -> None:
    ups = updates(2)
    ups[1] = Update(ups[1].params, client="c2")
    with pytest.raises(MergeError, match=r"'c2' carries no Fisher.*estimate_fisher"):
        merge(ups)


def test_fisher_must_name_and_shape_the_params() -> None:
    ups = updates(2)
    fewer = {k: v for k, v in (ups[0].fisher or {}).items() if k != "fc.bias"}
    with pytest.raises(MergeError, match=r"missing \['fc.bias'\]"):
        merge([ups[0].with_params(ups[0].params, fisher=fewer), ups[1]])
    wrong = {**(ups[0].fisher or {}), "fc.bias": np.ones(3, np.float32)}
    with pytest.raises(MergeError, match=r"'fc.bias'.*Fisher has shape \(3,\)"):
        merge([ups[0].with_params(ups[0].params, fisher=wrong), ups[1]])


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_fisher_entries_must_be_finite_and_non_negative(bad: float) -> None:
    ups = updates(2)
    poisoned = {**(ups[0].fisher or {}), "fc.bias": np.full(7, bad, np.float32)}
    with pytest.raises(MergeError, match="finite and ≥ 0"):
        merge([ups[0].with_params(ups[0].params, fisher=poisoned), ups[1]])


def test_other_errors() -> None:
    with pytest.raises(MergeError, match="at least one update"):
        merge([])
    ups = [u.with_params(u.params, weight=0.0) for u in updates(2)]
    with pytest.raises(MergeError, match="weights sum to 0"):
        merge(ups)
    for epsilon in (0.0, -1.0, float("nan")):
        with pytest.raises(
            MergeError, match=r"fisher\(epsilon=\.\.\.\) must be a finite number > 0"
        ):
            fisher(epsilon)
    other = updates(2)
    other[1] = Update({"x": np.zeros(2, np.float32)}, client="c2", fisher={"x": np.zeros(2)})
    with pytest.raises(MergeError, match="different tensors"):
        merge(other)


def test_epsilon_must_be_a_real_number_not_a_bool_or_string() -> None:
    # Regression: "x" raised TypeError and True was accepted as ε = 1.
    for epsilon in ("x", True, None):
        with pytest.raises(
            MergeError, match=r"fisher\(epsilon=\.\.\.\) must be a finite number > 0"
        ):
            fisher(epsilon)  # type: ignore[arg-type]


def test_a_rejected_update_leaves_the_sums_untouched() -> None:
    # Regression: add() summed tensors while still checking them, so an update refused for
    # its second tensor had already added its first.
    good = updates(3)
    first = good[0]
    bad_fisher = {**(first.fisher or {}), "fc.bias": np.full(7, -1.0, np.float32)}
    wrong_shape = {**first.params, "bn.running_mean": np.zeros(3, np.float32)}
    rejected = [
        first.with_params(first.params, client="bad", fisher=bad_fisher),
        Update(
            wrong_shape,
            client="odd",
            fisher={k: np.zeros(np.shape(v), np.float32) for k, v in wrong_shape.items()},
        ),
    ]
    accumulator = fisher_module.FisherAccumulator(1e-8)
    accumulator.add(good[0])
    for update in rejected:
        with pytest.raises(MergeError):
            accumulator.add(update)
    for update in good[1:]:
        accumulator.add(update)
    assert_bit_equal(accumulator.finish()[0], merge(good))
