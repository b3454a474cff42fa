"""Diagonal Fisher information of a classifier, for Fisher-weighted merging.

A client estimates its own Fisher on its own data and sends it with its update; the
``fisher`` and ``matched_fisher`` strategies then weigh every coordinate by how much the
client's data constrains it.
"""

from __future__ import annotations

import numpy as np
import torch

from fedvc.tensors import TensorError
from fedvc.torch_io import eval_mode, input_batch


def estimate_fisher(
    module: torch.nn.Module,
    inputs: np.ndarray,
    targets: np.ndarray | None = None,
    *,
    batch_size: int = 64,
    samples: int | None = None,
    empirical: bool = False,
    draws: int = 1,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The diagonal Fisher information of a classifier, keyed exactly like its ``state_dict``.

    For each parameter, the mean over examples of the squared gradient of ``log p(y|x)``,
    where ``module(x)`` returns logits of shape ``(batch, classes)``, or ``(batch, ...,
    classes)`` for a model that classifies every position of a sequence (a language
    model's next tokens): an example's log-likelihood is then the sum over its positions,
    one label per position. This is what the ``fisher`` merge strategy weighs each
    client's coordinates by (Matena & Raffel 2022).

    ``y`` is drawn from the model's own predictive distribution (the true Fisher, seeded
    by ``seed``) unless ``empirical`` is set, in which case it is ``targets`` (integer
    class labels, shaped like the logits without their last axis): the empirical Fisher
    is cheaper to reason about but is a different quantity and is biased where the model
    is wrong. ``samples`` caps the examples used (a seeded random subset; all of them when
    there are fewer). ``draws`` labels are drawn per example for the true Fisher: a
    confident model nearly always samples its predicted label, and the rare other labels
    carry most of the information, so a few draws make the estimate far less noisy (the
    empirical Fisher has one label per example and ignores it). Gradients are computed
    per example, vectorised with ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``)
    when the module allows it, else one example at a time; both give the same numbers.

    Buffers (BatchNorm running statistics, counters) have no gradient: they get float32
    zeros of their shape, so the map has exactly the ``state_dict``'s keys, as the merge
    requires, and the merge falls back to the plain mean for them. Tied parameters appear
    under every name the ``state_dict`` gives them. The module runs in eval mode (no
    dropout, running BatchNorm statistics) and gets its train/eval flags back afterwards;
    its parameters and their ``.grad`` are not touched. Results are float32 arrays.

    References:
        Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS
        2017 (the diagonal Fisher as each parameter's importance).
        Matena, Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS 2022.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of examples, got {batch_size}")
    if samples is not None and samples < 1:
        raise ValueError(f"samples must be a positive number of examples or None, got {samples}")
    if draws < 1:
        raise ValueError(f"draws must be a positive number of labels per example, got {draws}")
    if empirical and targets is None:
        raise ValueError("the empirical Fisher needs the true labels: pass targets=...")
    count = len(inputs)
    if count == 0:
        raise TensorError("estimating a Fisher needs at least one input example, got none")
    if targets is not None and len(targets) != count:
        raise TensorError(f"inputs hold {count} examples but targets hold {len(targets)}")
    if empirical and targets is not None and not np.issubdtype(targets.dtype, np.integer):
        raise TensorError(f"targets must be integer class labels, got dtype {targets.dtype}")
    rng = np.random.default_rng(seed)
    chosen = np.arange(count)
    if samples is not None and samples < count:
        chosen = np.sort(rng.choice(count, size=samples, replace=False))
    if not empirical and draws > 1:
        chosen = np.repeat(chosen, draws)
    params = {name: p.detach() for name, p in module.named_parameters()}
    buffers = {name: b.detach() for name, b in module.named_buffers()}
    totals = {
        name: torch.zeros(p.shape, dtype=torch.float64, device=p.device)
        for name, p in params.items()
    }
    generator = torch.Generator().manual_seed(seed)
    vectorised = True
    with eval_mode(module):
        for start in range(0, len(chosen), batch_size):
            rows = chosen[start : start + batch_size]
            batch = input_batch(module, inputs[rows])
            picked = None if targets is None else np.asarray(targets)[rows]
            onehot = _fisher_labels(module, batch, picked, empirical, generator)
            if vectorised:
                try:
                    squares = _squared_grads_vmap(module, params, buffers, batch, onehot)
                except Exception:  # any failure to vectorise: the loop below reports real errors
                    vectorised = False
            if not vectorised:
                squares = _squared_grads_loop(module, params, buffers, batch, onehot)
            for name, square in squares.items():
                totals[name] += square
    canonical = {id(p): name for name, p in module.named_parameters()}
    aliases = {
        name: canonical[id(p)] for name, p in module.named_parameters(remove_duplicate=False)
    }
    result: dict[str, np.ndarray] = {}
    for key, value in module.state_dict().items():
        if key in aliases:
            result[key] = (totals[aliases[key]] / len(chosen)).float().cpu().numpy()
        elif isinstance(value, torch.Tensor):
            result[key] = np.zeros(tuple(value.shape), np.float32)
    return result


def _fisher_labels(
    module: torch.nn.Module,
    batch: torch.Tensor,
    targets: np.ndarray | None,
    empirical: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """One-hot labels for a batch, one per position: the targets, or draws from the
    model's prediction."""
    with torch.no_grad():
        logits = module(batch)
    if not isinstance(logits, torch.Tensor) or logits.ndim < 2 or len(logits) != len(batch):
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TensorError(
            f"estimate_fisher needs a classifier whose output is logits of shape (batch, "
            f"classes) or (batch, ..., classes) for a batch of {len(batch)}, got {shape}"
        )
    classes = logits.shape[-1]
    if empirical:
        assert targets is not None  # checked by the caller
        if targets.shape != tuple(logits.shape[:-1]):
            raise TensorError(
                f"targets must hold one class label per position the model predicts: shape "
                f"{[len(targets), *logits.shape[1:-1]]} for logits of shape "
                f"{list(logits.shape)}, got {[len(targets), *targets.shape[1:]]}"
            )
        if targets.size and (targets.min() < 0 or targets.max() >= classes):
            raise TensorError(
                f"targets must be class indices in [0, {classes}), got values from "
                f"{targets.min()} to {targets.max()}"
            )
        labels = torch.from_numpy(targets.astype(np.int64))
    else:
        probs = torch.softmax(logits.detach().double(), dim=-1).cpu().reshape(-1, classes)
        drawn = torch.multinomial(probs, 1, generator=generator)
        labels = drawn.reshape(logits.shape[:-1])
    onehot = torch.nn.functional.one_hot(labels, classes).to(logits.dtype)
    return onehot.to(logits.device)


def _log_likelihood(
    module: torch.nn.Module,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    example: torch.Tensor,
    onehot: torch.Tensor,
) -> torch.Tensor:
    """``log p(y|x)`` for one example (summed over its positions), as a function of
    ``params``."""
    logits = torch.func.functional_call(module, (params, buffers), (example.unsqueeze(0),))
    return (torch.log_softmax(logits, dim=-1)[0] * onehot).sum()


def _squared_grads_vmap(
    module: torch.nn.Module,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    batch: torch.Tensor,
    onehot: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Per-example gradients in one vectorised call; their squares summed over the batch."""

    def log_likelihood(
        p: dict[str, torch.Tensor], example: torch.Tensor, label: torch.Tensor
    ) -> torch.Tensor:
        return _log_likelihood(module, p, buffers, example, label)

    per_example = torch.func.vmap(torch.func.grad(log_likelihood), in_dims=(None, 0, 0))(
        params, batch, onehot
    )
    return {name: g.double().square().sum(0) for name, g in per_example.items()}


def _squared_grads_loop(
    module: torch.nn.Module,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    batch: torch.Tensor,
    onehot: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The same as ``_squared_grads_vmap``, one example at a time with ``autograd.grad``."""
    leaves = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    squares = {
        name: torch.zeros(p.shape, dtype=torch.float64, device=p.device)
        for name, p in params.items()
    }
    for example, label in zip(batch, onehot, strict=True):
        value = _log_likelihood(module, leaves, buffers, example, label)
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        for name, g in zip(leaves, grads, strict=True):
            if g is not None:
                squares[name] += g.double().square()
    return squares
