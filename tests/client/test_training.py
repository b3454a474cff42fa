"""The reference training loop and FedProx's proximal term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fedvc_client.training import TrainConfig, evaluate, train
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


@pytest.mark.parametrize(
    ("momentum", "weight_decay", "mu"), [(0.9, 0.0, 0.0), (0.0, 1e-3, 0.0), (0.9, 1e-3, 0.5)]
)
def test_training_matches_torch_sgd_with_an_autograd_proximal_term(
    momentum: float, weight_decay: float, mu: float
) -> None:
    """The hand-written step is torch.optim.SGD's, plus FedProx's gradient in closed form."""
    x, y = digits()
    x, y = x[:300], y[:300]
    config = TrainConfig(epochs=2, lr=0.05, momentum=momentum, weight_decay=weight_decay, mu=mu)
    base = {n: v + 0.01 for n, v in module_params(model(1)).items()}
    ours = model()
    train(ours, x, y, config, base=base)

    reference = model()
    anchor = {n: torch.from_numpy(v) for n, v in base.items()}
    optimizer = torch.optim.SGD(
        reference.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    inputs, targets = torch.from_numpy(x), torch.as_tensor(y, dtype=torch.long)
    for _ in range(config.epochs):
        for batch in torch.split(torch.randperm(len(x), generator=generator), config.batch_size):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(reference(inputs[batch]), targets[batch])
            proximal = sum(((p - anchor[n]) ** 2).sum() for n, p in reference.named_parameters())
            (loss + 0.5 * mu * proximal).backward()
            optimizer.step()
    for name, value in module_params(reference).items():
        np.testing.assert_allclose(module_params(ours)[name], value, rtol=1e-4, atol=1e-5)
    assert not np.allclose(module_params(ours)["0.weight"], module_params(model())["0.weight"])


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
