"""The Gram matrices a client sends for ``regmean``: what each linear layer saw as input.

For every ``torch.nn.Linear`` in the model, ``Xᵀ X`` over the client's examples, where
``X`` holds the layer's inputs with a column of ones appended when the layer has a bias.
The server solves each layer's merge from these alone (``fedvc.merge.regmean``); the data
never leaves the client. A Gram is ``(in + 1)²`` numbers, small beside the layer it
describes when the layer is wide.

References:
    Jin, Ren, Preotiuc-Pietro, Cheng, "Dataless Knowledge Fusion by Merging Weights of
    Language Models", ICLR 2023.
"""

from __future__ import annotations

import numpy as np
import torch

from fedvc.torch_io import eval_mode, input_batch


def layer_grams(
    module: torch.nn.Module, inputs: np.ndarray, *, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """``{"<layer>.weight": Gram}`` for every Linear layer of ``module`` on ``inputs``.

    Sums (not means) over the examples, in float64, so a client with more data counts
    more, as in a regression on the pooled data. Inputs with extra leading axes (a
    sequence) count every position as an example. The module runs in eval mode without
    gradients; its training flags are restored.
    """
    layers = {
        name: layer for name, layer in module.named_modules() if isinstance(layer, torch.nn.Linear)
    }
    totals: dict[str, torch.Tensor] = {}

    def recorder(name: str, layer: torch.nn.Linear):  # type: ignore[no-untyped-def]
        def hook(_: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen = args[0].detach().reshape(-1, layer.in_features).to(torch.float64)
            if layer.bias is not None:
                seen = torch.cat([seen, seen.new_ones(len(seen), 1)], dim=1)
            gram = seen.T @ seen
            totals[name] = totals[name] + gram if name in totals else gram

        return hook

    handles = [
        layer.register_forward_pre_hook(recorder(name, layer)) for name, layer in layers.items()
    ]
    try:
        with eval_mode(module), torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                module(input_batch(module, inputs[start : start + batch_size]))
    finally:
        for handle in handles:
            handle.remove()
    return {f"{name}.weight" if name else "weight": totals[name].cpu().numpy() for name in totals}
