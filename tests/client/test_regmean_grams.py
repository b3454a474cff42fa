"""fedvc_client.regmean.layer_grams: what each Linear layer saw, as the merge expects it."""

from __future__ import annotations

import numpy as np
import torch
from fedvc_client.regmean import layer_grams
from regression import gram, least_squares

from fedvc.merge import Update, fedavg, regmean
from fedvc.torch_io import load_into_module, module_params


def test_the_grams_are_the_layers_inputs_with_a_ones_column() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3, bias=False)
    ).train()
    x = np.random.default_rng(0).standard_normal((23, 5)).astype(np.float32)
    grams = layer_grams(model, x, batch_size=4)
    assert model.training and set(grams) == {"0.weight", "2.weight"}
    np.testing.assert_allclose(grams["0.weight"], gram(x), rtol=1e-6)
    with torch.no_grad():
        hidden = torch.relu(model[0](torch.from_numpy(x))).double().numpy()
    np.testing.assert_allclose(grams["2.weight"], hidden.T @ hidden, rtol=1e-6)  # no bias


def test_two_clients_models_merge_from_their_grams_alone() -> None:
    """What layer_grams returns is what regmean takes (names, shapes, the bias column):
    two layers fitted to their own noisy data merge into the fit to the pooled data."""
    rng = np.random.default_rng(1)
    truth = rng.standard_normal((2, 3))
    updates, xs, ys = [], [], []
    for i, shift in enumerate((-3.0, 3.0)):
        x = (rng.standard_normal((200, 3)) + shift).astype(np.float32)
        y = x @ truth.T + rng.standard_normal((200, 2))  # noise: every fit differs
        layer = torch.nn.Linear(3, 2)
        weight, bias = least_squares(x, y)
        load_into_module(
            layer, {"weight": weight.astype(np.float32), "bias": bias.astype(np.float32)}
        )
        params = {k: v.copy() for k, v in module_params(layer).items()}
        updates.append(Update(params, 200.0, f"c{i}", grams=layer_grams(layer, x)))
        xs.append(x)
        ys.append(y)
    merged, _ = regmean(alpha=1.0).merge(None, updates, {})
    pooled_weight, pooled_bias = least_squares(np.vstack(xs), np.vstack(ys))
    np.testing.assert_allclose(merged["weight"], pooled_weight, atol=1e-4)
    np.testing.assert_allclose(merged["bias"], pooled_bias, atol=1e-4)
    averaged, _ = fedavg().merge(None, updates, {})
    assert not np.allclose(averaged["weight"], pooled_weight, atol=1e-2)  # not a plain mean
