"""Tests for fedvc.torch_io: tensor ↔ numpy conversion and loading params into modules."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvc.tensor_files import load_params, save_params
from fedvc.tensors import DTYPES, TensorError, as_param_map
from fedvc.torch_io import (
    classification_loss,
    collect_activations,
    load_into_module,
    module_params,
    params_to_state_dict,
    state_dict_to_params,
    tensor_to_numpy,
)


def make_model(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8),
        torch.nn.BatchNorm1d(8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 2),
    )
    model.train()
    model(torch.randn(16, 4))  # moves running stats and num_batches_tracked off defaults
    return model


def assert_state_dicts_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), name


with warnings.catch_warnings():  # quantized tensors are deprecated but still exist
    warnings.simplefilter("ignore")
    quantized = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)


def all_dtype_params() -> dict[str, np.ndarray]:
    return {name: np.arange(6).astype(dtype).reshape(2, 3) for name, dtype in DTYPES.items()}


# --------------------------------------------------------------------------- tensor_to_numpy


def test_cpu_tensor_is_a_read_only_zero_copy_view() -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    array = tensor_to_numpy(t)
    assert np.shares_memory(array, t.numpy())
    assert not array.flags.writeable
    with pytest.raises(ValueError):
        array[0, 0] = 5.0
    assert array.tolist() == t.tolist()


def test_parameter_with_grad_converts_without_copy_and_stays_protected() -> None:
    layer = torch.nn.Linear(3, 2)
    array = tensor_to_numpy(layer.weight)
    assert layer.weight.requires_grad
    assert np.shares_memory(array, layer.weight.detach().numpy())
    assert not array.flags.writeable
    np.testing.assert_array_equal(array, layer.weight.detach().numpy())


def test_non_contiguous_and_negated_tensors_are_copied_correctly() -> None:
    t = torch.arange(12, dtype=torch.int64).reshape(3, 4).T
    array = tensor_to_numpy(t)
    assert array.flags.c_contiguous
    assert array.tolist() == t.tolist()
    negated = torch._neg_view(torch.arange(3, dtype=torch.float32))
    assert tensor_to_numpy(negated).tolist() == [-0.0, -1.0, -2.0]


def test_scalar_tensor() -> None:
    array = tensor_to_numpy(torch.tensor(3.5, dtype=torch.float64))
    assert array.shape == () and array.dtype == np.float64 and float(array) == 3.5


@pytest.mark.parametrize(
    ("tensor", "fragment"),
    [
        (torch.ones(2, dtype=torch.bfloat16), r"bfloat16.*\.float\(\) first"),
        (torch.ones(2, dtype=torch.float8_e4m3fn), "float8_e4m3fn"),
        (torch.ones(2, dtype=torch.complex64), "complex"),
        (torch.ones(2, dtype=torch.float8_e5m2), r"float8_e5m2.*\.float\(\)"),
        (quantized, "quantized"),
        (torch.ones(2, 2).to_sparse(), "to_dense"),
        (torch.ones(2, device="meta"), "meta"),
        (torch.Size([2, 3]), "expected a torch.Tensor"),
    ],
)
def test_unsupported_tensors(tensor: object, fragment: str) -> None:
    with pytest.raises(TensorError, match=fragment):
        tensor_to_numpy(tensor)


def test_errors_name_the_tensor() -> None:
    with pytest.raises(TensorError, match=r"'encoder\.w'.*bfloat16"):
        state_dict_to_params(
            {"ok": torch.ones(1), "encoder.w": torch.ones(2, dtype=torch.bfloat16)}
        )
    with pytest.raises(TensorError, match="mapping"):
        state_dict_to_params([torch.ones(1)])  # type: ignore[arg-type]


def test_as_param_map_accepts_torch_through_torch_io() -> None:
    params = as_param_map({"w": torch.ones(2, requires_grad=True)})
    assert params["w"].tolist() == [1.0, 1.0]
    with pytest.raises(TensorError, match="bfloat16"):
        as_param_map({"w": torch.ones(2, dtype=torch.bfloat16)})


# --------------------------------------------------------------------------- params_to_state_dict


def test_every_dtype_round_trips_exactly() -> None:
    params = all_dtype_params()
    tensors = params_to_state_dict(params)
    back = state_dict_to_params(tensors)
    for name, array in params.items():
        assert back[name].dtype == array.dtype, name
        assert back[name].tobytes() == array.tobytes(), name
        assert str(tensors[name].dtype) == f"torch.{name}", name


def test_read_only_arrays_are_copied_silently_and_writable_ones_shared() -> None:
    writable = np.arange(4, dtype=np.float32)
    read_only = np.arange(4, dtype=np.float32)
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensors = params_to_state_dict({"w": writable, "r": read_only})
    assert np.shares_memory(tensors["w"].numpy(), writable)
    assert not np.shares_memory(tensors["r"].numpy(), read_only)
    tensors["r"][0] = 42.0  # must not write through to the read-only source
    assert read_only[0] == 0.0


def test_big_endian_and_device() -> None:
    params = {"be": np.arange(3, dtype=">i4")}
    for device in ("cpu", torch.device("cpu")):
        tensor = params_to_state_dict(params, device=device)["be"]
        assert tensor.dtype == torch.int32 and tensor.tolist() == [0, 1, 2]
        assert tensor.device.type == "cpu"


# --------------------------------------------------------------------------- modules


def test_sequential_round_trip_through_safetensors_is_bit_exact(tmp_path: Path) -> None:
    source = make_model(0)
    params = module_params(source)
    assert params["1.num_batches_tracked"].dtype == np.int64
    assert int(params["1.num_batches_tracked"]) == 1
    path = tmp_path / "model.safetensors"
    save_params(params, path)
    target = make_model(1)
    assert not torch.equal(target.state_dict()["0.weight"], source.state_dict()["0.weight"])
    load_into_module(target, load_params(path))
    assert_state_dicts_equal(target.state_dict(), source.state_dict())
    target.eval(), source.eval()
    x = torch.randn(5, 4)
    assert torch.equal(target(x), source(x))


def test_params_to_state_dict_loads_with_torch_itself() -> None:
    source = make_model(0)
    target = make_model(1)
    target.load_state_dict(params_to_state_dict(module_params(source)))
    assert_state_dicts_equal(target.state_dict(), source.state_dict())


def test_strict_loading_lists_missing_and_unexpected() -> None:
    model = make_model(0)
    params = dict(module_params(model))
    del params["0.weight"], params["1.running_mean"]
    params["extra.bias"] = np.zeros(2, np.float32)
    with pytest.raises(TensorError) as info:
        load_into_module(model, params)
    message = str(info.value)
    assert "'0.weight'" in message and "'1.running_mean'" in message
    assert "'extra.bias'" in message and "strict=False" in message


def test_non_strict_loads_only_common_names() -> None:
    model = make_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new_bias = np.full(2, 7.0, np.float32)
    load_into_module(model, {"3.bias": new_bias, "unknown": np.ones(1)}, strict=False)
    after = model.state_dict()
    assert after["3.bias"].tolist() == [7.0, 7.0]
    assert torch.equal(after["3.weight"], before["3.weight"])


def test_shape_and_dtype_mismatches_load_nothing() -> None:
    model = make_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {k: np.array(v, copy=True) for k, v in module_params(model).items()}
    params["0.bias"] = np.zeros(8, np.float32)
    params["3.weight"] = np.zeros((3, 8), np.float32)
    params["1.num_batches_tracked"] = np.array(5, np.int32)
    with pytest.raises(TensorError) as info:
        load_into_module(model, params)
    message = str(info.value)
    assert "'3.weight' params [3, 8] vs module [2, 8]" in message
    assert "'1.num_batches_tracked' params int32 vs module torch.int64" in message
    assert_state_dicts_equal(model.state_dict(), before)  # 0.bias was not loaded either
    with pytest.raises(TensorError, match="shape/dtype"):
        load_into_module(model, {"3.weight": np.zeros((3, 8), np.float32)}, strict=False)


def test_module_params_alias_the_module() -> None:
    model = make_model(0)
    params = module_params(model)
    bias = model.state_dict()["3.bias"]  # shares storage with the parameter
    bias.add_(1.0)
    np.testing.assert_array_equal(params["3.bias"], bias.numpy())


def test_classification_loss_checks_first_and_restores_training_mode() -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3))
    params = {k: v.copy() for k, v in module_params(module).items()}
    x = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    y = np.arange(10) % 3
    module.train()
    loss = classification_loss(module, params, x, y, batch_size=3)
    assert module.training and np.isfinite(loss) and loss > 0
    with torch.no_grad():
        logits = module(torch.from_numpy(x))
    expected = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    assert loss == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(TensorError, match="inputs are float64"):
        classification_loss(module, params, x.astype(np.float64), y)


def test_integer_inputs_reach_an_embedding_model() -> None:
    module = torch.nn.Sequential(
        torch.nn.Embedding(8, 5), torch.nn.Flatten(), torch.nn.Linear(10, 2)
    )
    tokens = np.random.default_rng(1).integers(0, 8, size=(6, 2))
    out = collect_activations(module, tokens, {"P_out": "2"})
    assert out["P_out"].shape == (6, 2)
