"""The reference training loop and FedProx's proximal term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fedvc_client.training import TrainConfig, evaluate, proximal_term, train
from sklearn.datasets import load_digits

from fedvc.torch_io import module_params


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def test_training_learns_digits_and_is_repeatable() -> None:
    x, y = digits()
    first, second = model(), model()
    result = train(first, x[:1200], y[:1200], TrainConfig(epochs=5, seed=3))
    train(second, x[:1200], y[:1200], TrainConfig(epochs=5, seed=3))
    accuracy, loss = evaluate(first, x[1200:], y[1200:])
    assert accuracy > 0.9 and loss < 0.5
    assert result.examples == 1200 and result.steps == 5 * 38
    for name, value in module_params(first).items():
        np.testing.assert_array_equal(value, module_params(second)[name])


def test_proximal_term_is_the_squared_distance() -> None:
    net = model()
    anchor = {n: p.detach() + 1.0 for n, p in net.named_parameters()}
    count = sum(p.numel() for p in net.parameters())
    assert float(proximal_term(net, anchor, mu=0.5).detach()) == pytest.approx(
        0.25 * count, rel=1e-5
    )


def test_fedprox_keeps_the_client_near_its_base() -> None:
    x, y = digits()
    skewed = y < 3  # a client that only sees three classes
    start = {n: v.copy() for n, v in module_params(model()).items()}

    def drift(mu: float) -> float:
        net = model()
        train(net, x[skewed], y[skewed], TrainConfig(epochs=5, mu=mu), base=start)
        after = module_params(net)
        return float(np.sqrt(sum(((after[n] - start[n]) ** 2).sum() for n in start)))

    assert drift(1.0) < 0.7 * drift(0.0)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="as many targets"):
        train(model(), np.zeros((3, 64), np.float32), np.zeros(2))
