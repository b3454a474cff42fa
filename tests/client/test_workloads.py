"""The bundled workloads: digits, the standard library's text, any torch Dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fedvc_client.reference import digits_initial, digits_task
from fedvc_client.workloads import (
    TorchDatasetWorkload,
    digits,
    load_digits,
    mlp,
    stdlib_chars,
    stdlib_packages,
    torch_threads,
    windows,
)

from fedvc.participant import TaskError, TrainResult
from fedvc.simulation.workload import Workload, WorkloadSpec, check_workload


def test_digits_split_is_stratified_and_the_initial_model_seeded() -> None:
    workload = digits(hidden=(16,))
    assert isinstance(workload, Workload)
    labels = workload.labels()
    assert len(labels) + len(workload.y_test) == 1797
    assert np.abs(np.bincount(labels) / len(labels) - 0.1).max() < 0.01
    first, again, other = (workload.initial_params(s) for s in (0, 0, 1))
    assert [v.shape for v in first.values()] == [(16, 64), (16,), (10, 16), (10,)]
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["0.weight"], other["0.weight"])


def test_digits_are_read_as_scikit_learn_loads_them_without_importing_it() -> None:
    import subprocess
    import sys

    from sklearn.datasets import load_digits as sklearn_digits

    x, y = load_digits()
    expected_x, expected_y = sklearn_digits(return_X_y=True)
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, (expected_x / 16.0).astype(np.float32))
    np.testing.assert_array_equal(y, expected_y)
    probe = (
        "import sys; from fedvc_client.workloads import digits; digits(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_a_digits_task_trains_repeatably_with_fedprox_and_fisher() -> None:
    workload = digits(hidden=(16,))
    base = workload.initial_params(0)
    task = workload.client_task(np.arange(300))
    config = {"epochs": 2, "lr": 0.1, "seed": 5, "fisher": True, "fisher_samples": 32}
    result = task.train(base, config)
    assert isinstance(result, TrainResult) and result.examples == 300
    assert result.fisher is not None and set(result.fisher) == set(base)
    again = task.train(base, config)
    assert all(np.array_equal(result.params[k], again.params[k]) for k in base)
    near = task.train(base, {**config, "mu": 10.0})

    def distance(params: dict[str, np.ndarray]) -> float:
        return sum(float(np.sum((params[k] - base[k]) ** 2)) for k in base)

    assert distance(dict(near.params)) < distance(dict(result.params))
    assert workload.evaluate(result.params)["accuracy"] > workload.evaluate(base)["accuracy"]


def test_stdlib_chars_groups_are_packages_and_the_loss_decreases() -> None:
    workload = stdlib_chars(packages=["json", "email", "logging"], bytes_per_package=3000)
    assert workload.group_names() == ["json", "email", "logging"]
    groups = workload.groups()
    assert groups is not None and set(np.unique(groups)) == {0, 1, 2}
    assert len(groups) == len(workload.labels()) and workload.labels().max() < 128
    base = workload.initial_params(0)
    before = workload.evaluate(base)["loss"]
    task = workload.client_task(np.flatnonzero(groups == 0))
    result = task.train(base, {"epochs": 2, "lr": 0.1, "batch_size": 64})
    assert workload.evaluate(result.params)["loss"] < before - 0.5
    assert "test" not in stdlib_packages() and "json" in stdlib_packages()
    with pytest.raises(ValueError, match="not a package of the standard library"):
        stdlib_chars(packages=["no_such_package"])


def test_windows_predict_the_next_symbol() -> None:
    x, y = windows(np.arange(6, dtype=np.uint8), 3)
    assert x.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]] and y.tolist() == [3, 4, 5]


def test_any_torch_dataset_with_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(120, 4, generator=generator)
    labels = (inputs[:, 0] > 0).long()
    train = torch.utils.data.TensorDataset(inputs[:100], labels[:100])
    test = torch.utils.data.TensorDataset(inputs[100:], labels[100:])
    workload = check_workload(TorchDatasetWorkload(lambda: mlp([4, 8, 2]), train, test))
    assert workload.labels().tolist() == labels[:100].tolist()
    base = workload.initial_params(0)
    result = workload.client_task(np.arange(50)).train(base, {"epochs": 5, "lr": 0.1})
    assert result.examples == 50 and set(workload.evaluate(result.params)) == {"accuracy", "loss"}


def test_the_reference_task_and_aliases() -> None:
    task = digits_task(client=1, clients=3, alpha=0.5, seed=0, hidden=(8,))
    result = task.train(digits_initial(0, hidden=(8,)), {"epochs": 1})
    assert 0 < result.examples < 1347
    with pytest.raises(TaskError, match="client must be an index"):
        digits_task(client=3, clients=3)
    assert set(WorkloadSpec("stdlib-chars").target.split(":")) == {
        "fedvc_client.workloads",
        "stdlib_chars",
    }


def test_training_threads_are_restored() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
