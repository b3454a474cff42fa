"""fedvc.torch_io: inputs reach a module on its terms, and a module is left as it was found."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedvc.tensors import TensorError
from fedvc.torch_io import classification_loss, collect_activations, module_params


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
