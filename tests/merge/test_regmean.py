"""regmean: each linear layer merged as the regression that best reproduces every client's."""

from __future__ import annotations

import numpy as np
import pytest
from bitwise import assert_bit_equal
from regression import gram, least_squares, with_ones

from fedvc.align import infer_spec, random_perms
from fedvc.merge import MergeError, Update, make, regmean
from fedvc.merge.matched import permute_update
from fedvc.merge.registry import strategy_from_spec


def least_squares_client(
    rng: np.random.Generator, rows: int, shift: float
) -> tuple[Update, np.ndarray, np.ndarray]:
    """A linear layer fitted exactly to its own data, with that data's Gram."""
    x = rng.standard_normal((rows, 4)) + shift  # clients see different input regions
    y = x @ rng.standard_normal((4, 2)) + rng.standard_normal((rows, 2))
    weight, bias = least_squares(x, y)
    params = {"0.weight": weight, "0.bias": bias}
    return Update(params, weight=float(rows), client=f"c{shift}", grams={"0.weight": gram(x)}), x, y


def test_exact_layers_merge_into_the_regression_on_the_pooled_data() -> None:
    rng = np.random.default_rng(0)
    clients = [
        least_squares_client(rng, rows, shift) for rows, shift in ((30, -2), (50, 0), (20, 3))
    ]
    merged, _ = regmean(alpha=1.0).merge(None, [u for u, _, _ in clients], {})
    x = np.vstack([c[1] for c in clients])
    y = np.vstack([c[2] for c in clients])
    pooled_weight, pooled_bias = least_squares(x, y)
    np.testing.assert_allclose(merged["0.weight"], pooled_weight, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(merged["0.bias"], pooled_bias, rtol=1e-6, atol=1e-8)
    naive = np.mean([u.params["0.weight"] for u, _, _ in clients], axis=0)
    assert not np.allclose(merged["0.weight"], naive, atol=1e-3)  # not a plain average


def test_invariants_identity_order_and_spec_round_trip() -> None:
    rng = np.random.default_rng(1)
    one, _, _ = least_squares_client(rng, 40, 0.0)
    twins = [Update(one.params, 1.0, f"c{i}", grams=one.grams) for i in range(3)]
    same, _ = regmean().merge(None, twins, {})
    for name, value in one.params.items():
        np.testing.assert_allclose(same[name], value, rtol=1e-7, atol=1e-10)
    updates = [least_squares_client(rng, 25, s)[0] for s in (-1.0, 0.5, 2.0)]
    forward, _ = regmean().merge(None, updates, {})
    backward, _ = regmean().merge(None, updates[::-1], {})
    assert_bit_equal(forward, backward)
    rebuilt = strategy_from_spec(regmean(alpha=0.5).spec.to_json())
    assert rebuilt.spec == make("regmean", {"alpha": 0.5}).spec  # type: ignore[union-attr]


def test_tensors_without_a_gram_are_the_weighted_mean() -> None:
    rng = np.random.default_rng(2)
    a, _, _ = least_squares_client(rng, 30, 0.0)
    b, _, _ = least_squares_client(rng, 10, 1.0)
    extra = {"scale": np.array([1.0, 2.0])}, {"scale": np.array([5.0, 6.0])}
    updates = [
        Update({**u.params, **e}, u.weight, u.client, grams=u.grams)
        for u, e in zip((a, b), extra, strict=True)
    ]
    merged, _ = regmean().merge(None, updates, {})
    np.testing.assert_allclose(merged["scale"], [2.0, 3.0])  # (30 * 1 + 10 * 5) / 40, ...


@pytest.mark.parametrize(
    "grams, words",
    [
        (None, "carries no Gram matrices"),
        ({"0.weight": np.eye(4)}, "must be a floating 5x5 matrix"),
        ({"0.bias": np.eye(5)}, "not a 2-D floating weight"),
        ({"0.weight": np.full((5, 5), np.nan)}, "NaN or Inf"),
        ({}, "every client must cover the same layers"),
    ],
)
def test_bad_grams_are_refused(grams: dict[str, np.ndarray] | None, words: str) -> None:
    good, _, _ = least_squares_client(np.random.default_rng(3), 20, 0.0)
    bad = Update(good.params, 1.0, "bad", grams=grams)
    with pytest.raises(MergeError, match=words):
        regmean().merge(None, [good, bad], {})


def test_the_first_client_sets_the_layers_every_client_covers() -> None:
    """Even when it covers none: one client's Gram alone must not decide a layer."""
    good, _, _ = least_squares_client(np.random.default_rng(3), 20, 0.0)
    first = Update(good.params, 1.0, "a", grams={})  # "a" merges first (client order)
    with pytest.raises(MergeError, match="every client must cover the same layers"):
        regmean().merge(None, [first, Update(good.params, 1.0, "b", grams=good.grams)], {})


def test_alpha_must_be_in_the_unit_interval() -> None:
    with pytest.raises(MergeError, match=r"alpha=\.\.\.\) must be in \(0, 1\]"):
        regmean(alpha=1.5)


def test_alignment_permutes_a_grams_rows_and_columns_with_the_layers_inputs() -> None:
    rng = np.random.default_rng(4)
    params = {
        "0.weight": rng.standard_normal((6, 3)),
        "0.bias": rng.standard_normal(6),
        "2.weight": rng.standard_normal((2, 6)),
        "2.bias": rng.standard_normal(2),
    }
    x = rng.standard_normal((50, 3))
    hidden = with_ones(np.maximum(x @ params["0.weight"].T + params["0.bias"], 0))
    grams = {"0.weight": with_ones(x).T @ with_ones(x), "2.weight": hidden.T @ hidden}
    spec = infer_spec(params)
    perms = random_perms(spec, params, seed=0)
    moved = permute_update(spec, perms, Update(params, grams=grams))
    assert moved.grams is not None
    np.testing.assert_array_equal(moved.grams["0.weight"], grams["0.weight"])  # inputs: pixels
    permuted_hidden = with_ones(
        np.maximum(x @ moved.params["0.weight"].T + moved.params["0.bias"], 0)
    )
    np.testing.assert_allclose(moved.grams["2.weight"], permuted_hidden.T @ permuted_hidden)
