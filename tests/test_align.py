"""Tests for fedvc.align: permutation specs, inference, weight/activation matching, MergeMany.

Every alignment test checks the property that matters to a merge: the permuted model
computes the same function (real torch forward passes), and matching undoes a permutation
exactly, bit for bit, not merely "closer".
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping

import numpy as np
import pytest
import torch
from bitwise import assert_bit_equal

from fedvc.align import (
    AlignError,
    PermutationSpec,
    activation_matching,
    apply_permutation,
    dense_axes,
    identity_perms,
    infer_spec,
    invert_perms,
    l2_distance,
    merge_many,
    norm_axes,
    random_perms,
    weight_matching,
)
from fedvc.tensors import TensorError
from fedvc.torch_io import collect_activations, load_into_module, module_params

nn = torch.nn


def make_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    ).eval()


def make_cnn(seed: int = 0) -> nn.Sequential:
    """Conv-BN-ReLU-Conv-BN-ReLU-flatten-Linear on 3x8x8 inputs, BN stats off defaults."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 8, 8) * 2 + 1)  # train mode: moves the running stats
    return model.eval()


class Block(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class ResMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.blocks = nn.ModuleList([Block(32, 48), Block(32, 48)])
        self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.out(h)


def res_spec() -> PermutationSpec:
    """The residual stream P_res is one permutation tied across every block."""
    parts = [dense_axes("inp", None, "P_res"), dense_axes("out", "P_res", None)]
    for i in range(2):
        parts += [
            norm_axes(f"blocks.{i}.norm", "P_res"),
            dense_axes(f"blocks.{i}.fc1", "P_res", f"P_b{i}"),
            dense_axes(f"blocks.{i}.fc2", f"P_b{i}", "P_res"),
        ]
    return PermutationSpec.from_axes(*parts)


def make_res(seed: int = 0) -> ResMLP:
    torch.manual_seed(seed)
    model = ResMLP().eval()
    with torch.no_grad():  # LayerNorm starts at ones/zeros: give it per-unit values
        for block in model.blocks:
            block.norm.weight.uniform_(0.5, 1.5)
            block.norm.bias.normal_()
    return model


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        result: torch.Tensor = model(x)
    return result


def loaded(model: nn.Module, params: dict[str, np.ndarray]) -> nn.Module:
    twin = copy.deepcopy(model)
    load_into_module(twin, params)
    return twin


# --------------------------------------------------------------------------- infer_spec


def test_infer_spec_of_sequential_mlp() -> None:
    spec = infer_spec(module_params(make_mlp()))
    assert dict(spec.axes_to_perm) == {
        "0.weight": ("P_0", None),
        "0.bias": ("P_0",),
        "2.weight": ("P_2", "P_0"),
        "2.bias": ("P_2",),
        "4.weight": (None, "P_2"),
        "4.bias": (None,),
    }
    assert dict(spec.perm_to_axes) == {
        "P_0": (("0.weight", 0), ("0.bias", 0), ("2.weight", 1)),
        "P_2": (("2.weight", 0), ("2.bias", 0), ("4.weight", 1)),
    }
    assert not spec.views and spec.check(module_params(make_mlp())) == {"P_0": 32, "P_2": 32}


def test_infer_spec_of_cnn_with_batchnorm_and_flatten() -> None:
    params = module_params(make_cnn())
    spec = infer_spec(params)
    bn0 = {f"1.{leaf}": ("P_0",) for leaf in ("weight", "bias", "running_mean", "running_var")}
    bn3 = {f"4.{leaf}": ("P_3",) for leaf in ("weight", "bias", "running_mean", "running_var")}
    assert dict(spec.axes_to_perm) == {
        "0.weight": ("P_0", None, None, None),
        "0.bias": ("P_0",),
        **bn0,
        "3.weight": ("P_3", "P_0", None, None),
        "3.bias": ("P_3",),
        **bn3,
        "7.weight": (None, "P_3", None),  # 16 channels x 16 positions, channel-major
        "7.bias": (None,),
    }
    assert dict(spec.views) == {"7.weight": (10, 16, 16)}
    assert "1.num_batches_tracked" in params and "1.num_batches_tracked" not in spec.axes_to_perm
    assert spec.check(params) == {"P_0": 8, "P_3": 16}


def test_infer_spec_names_permutations_after_modules() -> None:
    rng = np.random.default_rng(0)
    params = {
        "features.0.weight": rng.standard_normal((4, 2, 3, 3)),
        "features.0.bias": rng.standard_normal(4),
        "fc1.weight": rng.standard_normal((5, 4)),  # global pooling: one feature per channel
        "fc2.weight": rng.standard_normal((3, 5)),
        "fc2.bias": rng.standard_normal(3),
    }
    spec = infer_spec(params)
    assert spec.perm_names == ("P_features.0", "P_fc1")
    assert spec.axes_to_perm["fc1.weight"] == ("P_fc1", "P_features.0")
    assert spec.axes_to_perm["fc2.weight"] == (None, "P_fc1")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"layer1.0.downsample.0.weight": np.ones((4, 4, 1, 1))}, "residual"),
        ({"0.weight": np.ones((8, 4)), "1.weight": np.ones((3, 6))}, "expects 6 input"),
        ({"0.weight_g": np.ones((8, 1)), "0.weight_v": np.ones((8, 4))}, "not a Linear"),
        ({"0.weight": np.ones((8, 3, 3, 3)), "2.weight": np.ones((2, 20))}, "whole number"),
        ({"0.weight": np.ones((8, 4)), "1.weight": np.ones(5)}, "has 5 features"),
        (
            {"0.weight": np.ones((8, 4)), "1.weight": np.ones((8, 8)), "0.bias": np.ones(8)},
            "comes back",
        ),
        ({"bn.weight": np.ones(3), "bn.bias": np.ones(3)}, "no Linear or Conv"),
        ({"scale": np.ones(3)}, "not a Linear, Conv or per-feature"),
    ],
)
def test_infer_spec_refuses_what_it_cannot_see(
    params: dict[str, np.ndarray], expected: str
) -> None:
    with pytest.raises(AlignError, match=expected) as info:
        infer_spec(params)
    assert "explicitly" in str(info.value)


# --------------------------------------------------------------------------- spec data


def test_spec_json_round_trip_keeps_order_ties_and_views() -> None:
    spec = PermutationSpec.from_axes(
        res_spec().axes_to_perm,
        {"head.weight": (None, "P_res", None)},
        views={"head.weight": [3, 32, 2]},
    )
    text = spec.to_json()
    again = PermutationSpec.from_json(text)
    assert again == spec and list(again.axes_to_perm) == list(spec.axes_to_perm)
    assert again.perm_to_axes == spec.perm_to_axes and again.views["head.weight"] == (3, 32, 2)
    # inp (weight, bias), out, 2 x (norm weight and bias, fc1 input, fc2 weight and bias), head
    assert len(spec.perm_to_axes["P_res"]) == 3 + 2 * 5 + 1
    assert json.loads(text)["format"] == "fedvc-permutation-spec"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1]", "JSON object"),
        ("{not json", "not valid JSON"),
        ('{"axes_to_perm": {}, "extra": 1}', "unknown field"),
        ('{"version": 2, "axes_to_perm": {}}', "version 2"),
        ('{"axes_to_perm": {"w": "P"}}', "must be a list"),
        ('{"axes_to_perm": {"w": [""]}}', "non-empty string"),
        ('{"axes_to_perm": {"w": ["P"]}, "views": {"v": [2]}}', "does not list"),
    ],
)
def test_spec_json_errors(text: str, expected: str) -> None:
    with pytest.raises(AlignError, match=expected):
        PermutationSpec.from_json(text)


def test_check_reports_missing_tensors_sizes_and_axes() -> None:
    params = module_params(make_mlp())
    spec = infer_spec(params)
    with pytest.raises(AlignError, match=r"missing from the params: '4\.bias'"):
        spec.check({k: v for k, v in params.items() if k != "4.bias"})
    tied_wrong = PermutationSpec.from_axes(dense_axes("0", None, "P"), dense_axes("4", "P", None))
    with pytest.raises(AlignError, match=r"'P' must have one size.*'4\.weight' axis 1 has 7"):
        tied_wrong.check({**params, "4.weight": np.ones((10, 7))})
    with pytest.raises(AlignError, match="has 2 axes"):
        PermutationSpec({"0.weight": ("P",)}).check(params)
    with pytest.raises(AlignError, match="cannot be viewed"):
        PermutationSpec({"0.weight": ("P", None, None)}, {"0.weight": (32, 4, 4)}).check(params)
    with pytest.raises(AlignError, match="listed twice"):
        PermutationSpec.from_axes(dense_axes("0", None, "P"), {"0.bias": ("Q",)})


def test_apply_permutation_checks_perms_and_permutes_partial_maps() -> None:
    params = module_params(make_cnn())
    spec = infer_spec(params)
    perms = random_perms(spec, params, seed=3)
    with pytest.raises(AlignError, match="not a permutation"):
        apply_permutation(spec, {**perms, "P_0": np.zeros(8, dtype=np.int64)}, params)
    with pytest.raises(AlignError, match="size 16"):
        apply_permutation(spec, {**perms, "P_3": np.arange(8)}, params)
    with pytest.raises(AlignError, match="not in the spec"):
        apply_permutation(spec, {**perms, "P_9": np.arange(2)}, params)
    permuted = apply_permutation(spec, perms, params)
    assert permuted["1.num_batches_tracked"] is params["1.num_batches_tracked"]
    # optimizer moments: only parameters, no running stats; they permute like the model
    moments = {k: v * 2 for k, v in params.items() if "running" not in k and "num_" not in k}
    with pytest.raises(AlignError, match="missing"):
        apply_permutation(spec, perms, moments)
    permuted_moments = apply_permutation(spec, perms, moments, strict=False)
    for name, value in permuted_moments.items():
        assert np.array_equal(value, permuted[name] * 2), name


# --------------------------------------------------------------------------- weight matching


@pytest.mark.parametrize("make", [make_mlp, make_cnn], ids=["mlp", "cnn"])
def test_weight_matching_undoes_a_random_permutation_exactly(make: Callable[[], nn.Module]) -> None:
    model = make()
    x = torch.randn(20, 64) if make is make_mlp else torch.randn(20, 3, 8, 8)
    params = module_params(model)
    spec = infer_spec(params)
    perms = random_perms(spec, params, seed=7)
    permuted = apply_permutation(spec, perms, params)
    assert l2_distance(params, permuted) > 1.0
    torch.testing.assert_close(outputs(loaded(model, permuted), x), outputs(model, x))

    found = weight_matching(spec, params, permuted, seed=1)
    expected = invert_perms(perms)
    assert set(found) == set(expected)
    for p in expected:
        assert np.array_equal(found[p], expected[p]), p
    aligned = apply_permutation(spec, found, permuted)
    assert_bit_equal(aligned, params)
    torch.testing.assert_close(
        outputs(loaded(model, aligned), x), outputs(model, x), rtol=0, atol=0
    )


def test_residual_network_needs_and_honours_a_tied_spec() -> None:
    model = make_res()
    x = torch.randn(20, 16)
    params = module_params(model)
    spec = res_spec()
    perms = random_perms(spec, params, seed=5)
    permuted = apply_permutation(spec, perms, params)
    torch.testing.assert_close(outputs(loaded(model, permuted), x), outputs(model, x))
    found = weight_matching(spec, params, permuted, seed=2)
    for p, inverse in invert_perms(perms).items():
        assert np.array_equal(found[p], inverse), p
    aligned = apply_permutation(spec, found, permuted)
    assert_bit_equal(aligned, params)
    torch.testing.assert_close(
        outputs(loaded(model, aligned), x), outputs(model, x), rtol=0, atol=0
    )

    # the state_dict looks like a chain: an inferred spec unties the stream and breaks the model
    chain = infer_spec(params)
    broken = apply_permutation(chain, random_perms(chain, params, seed=5), params)
    assert not torch.allclose(outputs(loaded(model, broken), x), outputs(model, x), atol=1e-3)


def train_mlp(seed: int, x: torch.Tensor, y: torch.Tensor) -> nn.Sequential:
    model = make_mlp(seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return model.eval()


def test_weight_matching_brings_independently_trained_models_closer() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=generator)
    y = (x[:, :10] + 0.3 * torch.randn(256, 10, generator=generator)).argmax(dim=1)
    a, b = train_mlp(1, x, y), train_mlp(2, x, y)
    pa, pb = module_params(a), module_params(b)
    spec = infer_spec(pa)
    perms = weight_matching(spec, pa, pb, seed=0)
    aligned = apply_permutation(spec, perms, pb)
    assert l2_distance(pa, aligned) < l2_distance(pa, pb) * 0.95
    again = weight_matching(spec, pa, pb, seed=0)
    assert all(np.array_equal(perms[p], again[p]) for p in perms)
    torch.testing.assert_close(outputs(loaded(b, aligned), x), outputs(b, x))
    # init: starting from the answer, nothing improves, so nothing moves
    settled = weight_matching(spec, pa, pb, seed=4, init=perms)
    assert all(np.array_equal(perms[p], settled[p]) for p in perms)


def test_weight_matching_rejects_mismatched_models() -> None:
    params = module_params(make_mlp())
    spec = infer_spec(params)
    with pytest.raises(AlignError, match=r"'0.weight' has shape \[32, 64\]"):
        weight_matching(spec, params, {**params, "0.weight": np.ones((32, 65), np.float32)})
    with pytest.raises(AlignError, match="max_iter"):
        weight_matching(spec, params, params, max_iter=0)


def test_weight_matching_refuses_nan_and_inf_weights_by_name() -> None:
    params = module_params(make_mlp())
    spec = infer_spec(params)
    broken = {**params, "2.weight": params["2.weight"].copy()}
    broken["2.weight"][3, 4] = np.nan
    with pytest.raises(AlignError, match=r"'2.weight' of the other model has 1 NaN or infinite"):
        weight_matching(spec, params, broken)
    broken["2.weight"][3, 4] = -np.inf
    with pytest.raises(AlignError, match=r"'2.weight' of the reference has 1 NaN"):
        weight_matching(spec, broken, params)


def test_weight_matching_reports_a_cost_matrix_that_overflows() -> None:
    # finite float32 weights whose products exceed float32's range (about 3.4e38)
    params = {k: np.full_like(v, 1e20) for k, v in module_params(make_mlp()).items()}
    spec = infer_spec(params)
    with pytest.raises(AlignError, match=r"cost matrix of permutation .* overflow float32"):
        weight_matching(spec, params, params)


# --------------------------------------------------------------------------- activations


@pytest.mark.parametrize("make", [make_mlp, make_cnn], ids=["mlp", "cnn"])
def test_activation_matching_recovers_a_permutation(make: Callable[[], nn.Module]) -> None:
    model = make()
    params = module_params(model)
    spec = infer_spec(params)
    perms = random_perms(spec, params, seed=11)
    other = loaded(model, apply_permutation(spec, perms, params))
    rng = np.random.default_rng(0)
    if make is make_mlp:
        inputs, layers = rng.standard_normal((128, 64)), {"P_0": "0", "P_2": "2"}
    else:
        inputs, layers = rng.standard_normal((16, 3, 8, 8)), {"P_0": "1", "P_3": "4"}
    inputs = inputs.astype(np.float32)
    ours = collect_activations(model, inputs, layers)
    theirs = collect_activations(other, inputs, layers)
    widths = spec.check(params)
    for p, acts in ours.items():
        assert acts.shape[1] == widths[p] and acts.shape[0] >= 128
    found = activation_matching(ours, theirs)
    for p, inverse in invert_perms(perms).items():
        assert np.array_equal(found[p], inverse), p
    assert not model.training and not other.training  # modes restored, not flipped


def test_collect_activations_errors_and_mode() -> None:
    model = make_cnn().train()
    inputs = np.zeros((2, 3, 8, 8), np.float32)
    stats = model[1].running_mean.clone()
    collect_activations(model, inputs, {"P_0": "1"})
    assert model.training and torch.equal(model[1].running_mean, stats)
    with pytest.raises(TensorError, match="no submodule 'nine'"):
        collect_activations(model, inputs, {"P_0": "nine"})
    with pytest.raises(TensorError, match=r"float64.*astype"):
        collect_activations(model, inputs.astype(np.float64), {"P_0": "1"})
    with pytest.raises(AlignError, match="different permutations"):
        activation_matching({"P": np.ones((4, 2))}, {"Q": np.ones((4, 2))})


@pytest.mark.parametrize("method", ["correlation", "inner"])
def test_activation_matching_refuses_nan_and_inf_activations(method: str) -> None:
    acts = np.random.default_rng(0).standard_normal((8, 3))
    broken = acts.copy()
    broken[2, 1] = np.nan
    with pytest.raises(AlignError, match=r"other model's activations for 'P' have 1 NaN"):
        activation_matching({"P": acts}, {"P": broken}, method=method)  # type: ignore[arg-type]
    broken[2, 1] = np.inf
    with pytest.raises(AlignError, match=r"reference model's activations for 'P' have 1 NaN"):
        activation_matching({"P": broken}, {"P": acts}, method=method)  # type: ignore[arg-type]


def test_activation_matching_reports_overflowing_inner_products() -> None:
    acts = np.full((4, 3), 1e200)
    with pytest.raises(AlignError, match="overflow float64; use method='correlation'"):
        activation_matching({"P": acts}, {"P": acts}, method="inner")
    assert activation_matching({"P": acts}, {"P": acts})["P"].shape == (3,)


# --------------------------------------------------------------------------- merge_many


def test_merge_many_puts_permuted_noisy_copies_into_one_basis() -> None:
    params = module_params(make_cnn())
    spec = infer_spec(params)
    rng = np.random.default_rng(0)
    noise = 1e-3
    models = []
    for seed in (1, 2, 3):
        noisy = {
            k: (v + rng.normal(0, noise, v.shape).astype(v.dtype)) if v.dtype.kind == "f" else v
            for k, v in params.items()
        }
        models.append(apply_permutation(spec, random_perms(spec, params, seed=seed), noisy))
    result = merge_many(spec, models, seed=0)
    assert result.converged
    floats = sum(v.size for v in params.values() if v.dtype.kind == "f")
    pair_noise = noise * np.sqrt(2 * floats)
    for i in range(3):
        assert result.models[i].keys() == models[i].keys()
        assert_bit_equal(result.models[i], apply_permutation(spec, result.perms[i], models[i]))
        for j in range(i):
            assert l2_distance(models[i], models[j]) > 50 * pair_noise
            assert l2_distance(result.models[i], result.models[j]) < 1.5 * pair_noise


def test_merge_many_edge_cases() -> None:
    params = module_params(make_mlp())
    spec = infer_spec(params)
    single = merge_many(spec, [params])
    assert single.converged and single.sweeps == 0
    assert_bit_equal(single.models[0], params)
    assert all(
        np.array_equal(v, identity_perms(spec.check(params))[p]) for p, v in single.perms[0].items()
    )
    with pytest.raises(AlignError, match="at least one"):
        merge_many(spec, [])
    with pytest.raises(AlignError, match="one weight per model"):
        merge_many(spec, [params, params], weights=[1.0])
    with pytest.raises(AlignError, match="two positive"):
        merge_many(spec, [params, params], weights=[1.0, 0.0])
    with pytest.raises(AlignError, match="inner_iter"):
        merge_many(spec, [params, params], inner_iter=0)


def test_merge_many_refuses_nan_weights_by_model_and_tensor() -> None:
    params = module_params(make_mlp())
    spec = infer_spec(params)
    broken = {**params, "0.bias": params["0.bias"].copy()}
    broken["0.bias"][0] = np.nan
    with pytest.raises(AlignError, match=r"'0.bias' of model 2 has 1 NaN"):
        merge_many(spec, [params, params, broken])


def test_merge_many_matches_each_model_to_the_mean_of_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The mean of the others comes from a running total updated as permutations change;
    # every inner matching must still see the weighted mean of the others, as aligned then,
    # and run at most inner_iter sweeps.
    import fedvc.align.matching as matching

    models = [module_params(make_mlp(seed)) for seed in range(4)]
    spec = infer_spec(models[0])
    weights = [1.0, 3.0, 0.0, 2.5]
    current = [identity_perms(spec.check(models[0])) for _ in models]
    calls: list[int] = []
    descend = matching._descend

    def spy(
        spec: PermutationSpec,
        sizes: Mapping[str, int],
        mean: Mapping[str, np.ndarray],
        own: Mapping[str, np.ndarray],
        init: Mapping[str, np.ndarray],
        seed: int,
        inner: int,
    ) -> dict[str, np.ndarray]:
        i = next(k for k, m in enumerate(models) if np.array_equal(m["0.weight"], own["0.weight"]))
        assert inner == 7
        others = sum(w for k, w in enumerate(weights) if k != i)
        for name, value in mean.items():
            want = (
                sum(
                    weights[k]
                    * apply_permutation(spec, current[k], models[k])[name].astype(np.float64)
                    for k in range(len(models))
                    if k != i
                )
                / others
            )
            np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6)
        found = descend(spec, sizes, mean, own, init, seed, inner)
        current[i] = found
        calls.append(i)
        return found

    monkeypatch.setattr(matching, "_descend", spy)
    result = merge_many(spec, models, weights=weights, inner_iter=7, seed=1)
    assert len(calls) == 4 * result.sweeps and result.sweeps > 1
