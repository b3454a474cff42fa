"""The interference report: cosines, TIES sign conflicts, top-k overlap, norms, score."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import fedvc.interference as interference_module
from fedvc.interference import InterferenceError, interference_report
from fedvc.merge import Update


def base_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a.weight": rng.standard_normal((6, 5)).astype(np.float32),
        "b.bias": rng.standard_normal(10).astype(np.float32),
        "bn.num_batches_tracked": np.array(3, np.int64),
    }


def moved(base: dict[str, np.ndarray], deltas: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        name: (array + deltas[name]).astype(array.dtype) if name in deltas else array
        for name, array in base.items()
    }


def random_delta(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a.weight": rng.standard_normal((6, 5)).astype(np.float32),
        "b.bias": rng.standard_normal(10).astype(np.float32),
    }


def dumps(value: object) -> str:
    return json.dumps(value, allow_nan=False)


def test_identical_deltas_agree_completely() -> None:
    base = base_model()
    update = moved(base, random_delta(1))
    report = interference_report(base, [update, update, update])
    for figures in [report.model, *report.layers.values()]:
        assert figures.mean_cosine == pytest.approx(1.0)
        assert figures.min_cosine == pytest.approx(1.0)
        assert figures.sign_conflict == 0.0
        assert figures.overlap == 1.0
        assert figures.norm_ratio == pytest.approx(1.0)
        assert figures.relative_norms == pytest.approx((1.0, 1.0, 1.0))
        assert figures.score == pytest.approx(0.0, abs=1e-12)
    assert report.top_layers == ()
    assert set(report.layers) == {"a.weight", "b.bias"}  # integer tensors are skipped


def test_opposite_deltas_conflict_completely() -> None:
    base = {"w": np.zeros(20)}
    delta = np.random.default_rng(1).standard_normal(20)
    report = interference_report(base, [{"w": delta}, {"w": -delta}])
    model = report.model
    assert model.mean_cosine == pytest.approx(-1.0) and model.min_cosine == pytest.approx(-1.0)
    assert model.sign_conflict == 1.0 and model.contested == 20
    assert model.overlap == 1.0
    assert model.score == pytest.approx(1.0)


def test_orthogonal_disjoint_deltas() -> None:
    base = {"w": np.ones(10, np.float32)}
    first, second = np.zeros(10, np.float32), np.zeros(10, np.float32)
    first[:5], second[5:] = np.arange(1, 6), -np.arange(1, 6)
    report = interference_report(base, [{"w": base["w"] + first}, {"w": base["w"] + second}])
    model = report.model
    assert model.mean_cosine == 0.0 and model.overlap == 0.0
    assert model.contested == 0 and model.sign_conflict == 0.0  # nothing shared, nothing contested
    assert model.score == pytest.approx(0.25)


def test_sign_conflicts_count_only_contested_coordinates() -> None:
    base = {"w": np.zeros(4)}
    a = np.array([1.0, 1.0, 1.0, 0.0])
    b = np.array([1.0, -1.0, 0.0, 0.0])
    c = np.array([2.0, 0.0, 0.0, 5.0])
    report = interference_report(base, [{"w": a}, {"w": b}, {"w": c}])
    # contested: coordinates 0 (three clients) and 1 (two); only coordinate 1 conflicts
    assert report.model.contested == 2 and report.model.sign_conflict == 0.5


def test_top_k_masks_and_overlap() -> None:
    base = {"w": np.zeros(10)}
    a = np.arange(10.0)  # top 20 %: coordinates 8, 9
    b = np.arange(10.0)[::-1].copy()  # top 20 %: coordinates 0, 1
    c = np.zeros(10)
    c[[1, 9]] = 100.0  # top 20 %: 1, 9
    report = interference_report(base, [{"w": a}, {"w": b}, {"w": c}], clients=["a", "b", "c"])
    # Jaccard: a-b 0, a-c 1/3, b-c 1/3
    assert report.model.overlap == pytest.approx((0 + 1 / 3 + 1 / 3) / 3)
    half = interference_report(base, [{"w": a}, {"w": b}], density=0.5)
    assert half.model.overlap == 0.0
    everything = interference_report(base, [{"w": a}, {"w": b}], density=1.0)
    assert everything.model.overlap == pytest.approx(8 / 10)  # zeros never enter a mask


def test_norms() -> None:
    base = {"w": np.zeros(3)}
    report = interference_report(
        base,
        [{"w": np.array([3.0, 4.0, 0.0])}, {"w": np.array([0.0, 0.0, 15.0])}],
        clients=["x", "y"],
    )
    assert report.model.norms == (5.0, 15.0)
    assert report.model.norm_ratio == 3.0
    assert report.model.relative_norms == (0.5, 1.5)


def test_whole_model_figures_are_those_of_the_concatenated_delta() -> None:
    base = base_model()
    updates = [moved(base, random_delta(seed)) for seed in (1, 2, 3)]
    report = interference_report(base, updates)
    flat = [
        np.concatenate(
            [(u[n] - base[n]).astype(np.float64).ravel() for n in ("a.weight", "b.bias")]
        )
        for u in updates
    ]
    cosines = [
        float(flat[i] @ flat[j] / np.linalg.norm(flat[i]) / np.linalg.norm(flat[j]))
        for i in range(3)
        for j in range(i + 1, 3)
    ]
    assert report.model.mean_cosine == pytest.approx(np.mean(cosines))
    assert report.model.min_cosine == pytest.approx(min(cosines))
    signs = np.sign(np.stack(flat))
    conflict = np.mean((signs > 0).any(0) & (signs < 0).any(0))
    assert report.model.sign_conflict == pytest.approx(conflict)
    assert report.model.norms == pytest.approx(tuple(np.linalg.norm(f) for f in flat))
    assert report.model.numel == 40


def test_blocks_do_not_change_the_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    base = base_model()
    updates = [moved(base, random_delta(seed)) for seed in (1, 2, 3)]
    whole = interference_report(base, updates)
    monkeypatch.setattr(interference_module, "BLOCK_ELEMENTS", 7)
    blocked = interference_report(base, updates)
    assert blocked.model.sign_conflict == whole.model.sign_conflict
    assert blocked.model.overlap == whole.model.overlap
    assert blocked.model.mean_cosine == pytest.approx(whole.model.mean_cosine)


def test_top_layers_rank_the_most_conflicting() -> None:
    rng = np.random.default_rng(5)
    base = {f"layer{i}": np.zeros(50) for i in range(7)}
    one = {name: rng.standard_normal(50) for name in base}
    # in layerN client two flips the first 7N of client one's coordinates: conflict grows with N
    flipped = np.arange(50)
    two = {
        name: np.where(flipped < 7 * i, -one[name], one[name])
        for i, name in enumerate(sorted(base))
    }
    report = interference_report(base, [one, two])
    scores = {name: report.layers[name].score for name in base}
    assert scores["layer0"] == 0.0
    assert report.top_layers == ("layer6", "layer5", "layer4", "layer3", "layer2")
    assert [d["name"] for d in report.summary()["top_layers"]] == list(report.top_layers)
    assert all(
        scores[a] > scores[b]
        for a, b in zip(report.top_layers[:-1], report.top_layers[1:], strict=True)
    )


def test_single_update() -> None:
    base = base_model()
    report = interference_report(base, [Update(moved(base, random_delta(1)), client="only")])
    assert report.clients == ("only",)
    model = report.model
    assert model.mean_cosine is None and model.min_cosine is None and model.overlap is None
    assert model.sign_conflict == 0.0 and model.score == 0.0
    assert model.norm_ratio == 1.0 and model.relative_norms == (1.0,)
    dumps(report.to_json())


def test_json_is_strict_and_undefined_numbers_are_none() -> None:
    base = base_model()
    zero = dict(base)
    updates = [moved(base, random_delta(1)), zero, moved(base, random_delta(2))]
    report = interference_report(base, updates, clients=["c1", "c0", "c2"])
    text = dumps(report.to_json())
    data = json.loads(text)
    assert data["clients"] == ["c0", "c1", "c2"]
    assert data["model"]["norm_ratio"] is None  # c0 did not move
    assert data["model"]["relative_norms"][0] == 0.0
    assert len(dumps(report.summary())) < 1000
    nan = {
        name: np.full_like(array, np.nan)
        for name, array in base.items()
        if name != "bn.num_batches_tracked"
    }
    poisoned = interference_report(base, [moved(base, random_delta(1)), moved(base, nan)])
    dumps(poisoned.to_json())
    assert poisoned.model.mean_cosine is None and poisoned.model.norms[1] is None


def test_client_order_does_not_change_the_report() -> None:
    base = base_model()
    updates = [Update(moved(base, random_delta(i)), client=f"c{i}") for i in range(5)]
    shuffled = updates[:]
    random.Random(2).shuffle(shuffled)
    first, second = interference_report(base, updates), interference_report(base, shuffled)
    assert first.summary() == second.summary()
    assert dumps(first.to_json()) == dumps(second.to_json())
    # without names, positions name the clients: the figures still agree
    plain = [u.params for u in updates]
    again = interference_report(base, plain[::-1]).summary()
    assert again["score"] == pytest.approx(first.summary()["score"])
    assert again["top_layers"] == first.summary()["top_layers"]


def test_errors() -> None:
    base = base_model()
    with pytest.raises(InterferenceError, match="at least one update"):
        interference_report(base, [])
    with pytest.raises(InterferenceError, match="density"):
        interference_report(base, [base], density=0.0)
    with pytest.raises(InterferenceError, match=r"missing \['b.bias'\]"):
        interference_report(base, [{k: v for k, v in base.items() if k != "b.bias"}])
    with pytest.raises(InterferenceError, match=r"'a.weight' has shape \(5, 6\)"):
        interference_report(base, [{**base, "a.weight": np.zeros((5, 6), np.float32)}])
    with pytest.raises(InterferenceError, match="name each of the 2 updates once"):
        interference_report(base, [base, base], clients=["x", "x"])
