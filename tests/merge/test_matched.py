"""Matched averaging: alignment before averaging, with and without a common base."""

from __future__ import annotations

import importlib
import itertools
import random

import numpy as np
import pytest

from fedvc.align import apply_permutation, infer_spec, random_perms
from fedvc.merge import (
    MergeError,
    Update,
    align,
    chain,
    fedavg,
    matched,
    matched_fisher,
    strategy_from_spec,
)


def mlp(seed: int, widths: tuple[int, ...] = (6, 24, 24, 3)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        params[f"{2 * i}.weight"] = (
            rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)
        ).astype(np.float32)
        params[f"{2 * i}.bias"] = (0.1 * rng.standard_normal(fan_out)).astype(np.float32)
    return params


def forward(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    layers = sorted({int(name.split(".")[0]) for name in params})
    for i, layer in enumerate(layers):
        x = x @ params[f"{layer}.weight"].T + params[f"{layer}.bias"]
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


MODEL = mlp(0)
SPEC = infer_spec(MODEL)
INPUTS = np.random.default_rng(9).standard_normal((50, 6)).astype(np.float32)


def permuted(params: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    return apply_permutation(SPEC, random_perms(SPEC, params, seed=seed), params)


def noisy(params: dict[str, np.ndarray], seed: int, scale: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: (v + scale * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in params.items()
    }


def test_without_a_base_permuted_copies_merge_back_to_the_model() -> None:
    updates = [Update(permuted(MODEL, seed), client=f"c{seed}") for seed in range(1, 5)]
    merged, _ = matched().merge(None, updates, {})
    naive, _ = fedavg().merge(None, updates, {})
    np.testing.assert_allclose(forward(merged, INPUTS), forward(MODEL, INPUTS), atol=1e-5)
    assert np.abs(forward(naive, INPUTS) - forward(MODEL, INPUTS)).max() > 0.1


def test_with_a_base_each_update_is_aligned_to_it_and_streams() -> None:
    deltas = [noisy(MODEL, seed, 1e-3) for seed in range(3)]
    updates = [Update(permuted(d, 10 + i), client=f"c{i}") for i, d in enumerate(deltas)]
    strategy = matched()
    assert strategy.streams and strategy.accumulate is not None
    merged, _ = strategy.merge(MODEL, updates, strategy.init(MODEL))
    expected = {k: np.mean([d[k] for d in deltas], axis=0) for k in MODEL}
    for name in MODEL:
        np.testing.assert_allclose(merged[name], expected[name], atol=1e-6)
    accumulator = strategy.accumulate(MODEL, {})
    for update in sorted(updates, key=lambda u: u.client):
        accumulator.add(update)
    streamed, _ = accumulator.finish()
    for name in MODEL:
        assert streamed[name].tobytes() == merged[name].tobytes()
    with pytest.raises(MergeError, match="round base"):
        strategy.accumulate(None, {}).add(updates[0])


def test_fisher_and_extras_are_permuted_with_the_params() -> None:
    original = noisy(MODEL, 3, 0.01)
    fisher = {k: np.abs(v) + 1.0 for k, v in original.items()}
    moments = {k: 2 * v for k, v in original.items()}
    perms = random_perms(SPEC, original, seed=4)
    update = Update(
        apply_permutation(SPEC, perms, original),
        client="a",
        fisher=apply_permutation(SPEC, perms, fisher),
        extras={"m": apply_permutation(SPEC, perms, moments)},
    )
    (aligned,) = align().apply(MODEL, [update])
    assert aligned.fisher is not None
    for name in MODEL:
        np.testing.assert_array_equal(aligned.params[name], original[name])
        np.testing.assert_array_equal(aligned.fisher[name], fisher[name])
        np.testing.assert_array_equal(aligned.extras["m"][name], moments[name])


def test_matched_fisher_without_a_base_and_order_independence() -> None:
    updates, originals = [], []
    for seed in range(1, 4):
        originals.append(noisy(MODEL, seed, 1e-3))
        params = permuted(originals[-1], seed)
        updates.append(
            Update(
                params,
                weight=float(seed),
                client=f"c{seed}",
                fisher={k: np.ones_like(v) for k, v in params.items()},
            )
        )
    merged, _ = matched_fisher().merge(None, updates, {})
    shuffled = updates[:]
    random.Random(0).shuffle(shuffled)
    again, _ = matched_fisher().merge(None, shuffled, {})
    for name in merged:
        assert merged[name].tobytes() == again[name].tobytes()
    ideal = {k: sum(w * o[k] for w, o in zip((1, 2, 3), originals, strict=True)) / 6 for k in MODEL}
    np.testing.assert_allclose(forward(merged, INPUTS), forward(ideal, INPUTS), atol=1e-5)


def test_specs_round_trip_through_the_registry() -> None:
    for strategy in (matched(max_iter=7), matched_fisher(seed=3), chain(align(SPEC), fedavg())):
        rebuilt = strategy_from_spec(strategy.spec.to_json())
        assert rebuilt.spec == strategy.spec
    updates = [Update(permuted(MODEL, s), client=str(s)) for s in range(3)]
    explicit = chain(align(SPEC), fedavg())
    rebuilt = strategy_from_spec(explicit.spec.to_json())
    a, _ = explicit.merge(None, updates, {})
    b, _ = rebuilt.merge(None, updates, {})
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_extras_without_buffers_are_permuted_where_present() -> None:
    # Regression: extras were permuted strictly, so optimizer moments (which cover the
    # trainable tensors, not BatchNorm's running statistics) failed with AlignError.
    rng = np.random.default_rng(5)
    model = {
        "0.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "0.bias": rng.standard_normal(8).astype(np.float32),
        "1.weight": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "1.bias": rng.standard_normal(8).astype(np.float32),
        "1.running_mean": rng.standard_normal(8).astype(np.float32),
        "1.running_var": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "2.weight": rng.standard_normal((3, 8)).astype(np.float32),
        "2.bias": rng.standard_normal(3).astype(np.float32),
    }
    spec = infer_spec(model)
    perms = random_perms(spec, model, seed=2)
    moments = {k: 2 * v for k, v in model.items() if "running" not in k}
    update = Update(
        apply_permutation(spec, perms, model),
        client="a",
        extras={"m": apply_permutation(spec, perms, moments, strict=False)},
    )
    (aligned,) = align().apply(model, [update])
    assert aligned.extras["m"].keys() == moments.keys()
    for name, moment in moments.items():
        np.testing.assert_array_equal(aligned.extras["m"][name], moment)


def test_the_symmetry_is_inferred_once_per_base(monkeypatch: pytest.MonkeyPatch) -> None:
    matched_module = importlib.import_module("fedvc.merge.matched")
    calls: list[int] = []

    def counting(params: dict[str, np.ndarray]) -> object:
        calls.append(len(params))
        return infer_spec(params)

    monkeypatch.setattr(matched_module, "infer_spec", counting)
    strategy = matched()
    assert strategy.accumulate is not None
    accumulator = strategy.accumulate(MODEL, {})
    for seed in range(1, 4):
        accumulator.add(Update(permuted(MODEL, seed), client=f"c{seed}"))
    merged, _ = accumulator.finish()
    assert len(calls) == 1
    np.testing.assert_allclose(forward(merged, INPUTS), forward(MODEL, INPUTS), atol=1e-5)
    other = {k: v.copy() for k, v in MODEL.items()}  # a new base is inferred afresh
    strategy.accumulate(other, {}).add(Update(permuted(MODEL, 1), client="c1"))
    assert len(calls) == 2


def test_a_spec_given_as_a_mapping_is_recorded_as_its_dict() -> None:
    transform = align(SPEC.to_dict())
    assert transform.spec.params["spec"] == SPEC.to_dict()
    (aligned,) = transform.apply(MODEL, [Update(permuted(MODEL, 1), client="a")])
    for name in MODEL:
        np.testing.assert_array_equal(aligned.params[name], MODEL[name])
