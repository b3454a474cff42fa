"""A reference local training loop for classifiers, with FedProx's proximal term.

Clients are free to train however they like; this loop is what the reference task, the
simulations and the benchmarks use. ``mu > 0`` adds FedProx's proximal term
``mu/2 · ‖w - w_base‖²``, which keeps a client from drifting far from the round's base on
skewed data. The base is the round's base commit, so the term belongs to the client, not
to the merge.

References:
    Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020 (FedProx).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedvc.tensors import ParamMap


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    mu: float = 0.0
    """FedProx proximal strength; 0 is plain local SGD (FedAvg's client update)."""
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    examples: int
    steps: int
    loss: float
    """Mean training loss over the last epoch (without the proximal term)."""


class MomentumSGD:
    """SGD with heavy-ball momentum, weight decay and FedProx's pull toward an anchor.

    The update of ``torch.optim.SGD(lr, momentum, weight_decay)`` (no dampening, no
    Nesterov), with the proximal term's gradient ``mu · (w - anchor)`` added in closed
    form instead of through autograd. Written out rather than taken from ``torch.optim``
    because the first ``torch.optim`` optimizer a process builds imports ``torch._dynamo``,
    about a second of start-up that every simulation worker and every fleet client would
    pay for four lines of arithmetic.
    """

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        config: TrainConfig,
        anchor: list[torch.Tensor] | None = None,
    ) -> None:
        self.params = params
        self.config = config
        self.anchor = anchor
        self.velocity: list[torch.Tensor | None] = [None] * len(params)
        for param in params:  # gradients left from before are not this training's
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        lr, momentum, decay = self.config.lr, self.config.momentum, self.config.weight_decay
        for i, param in enumerate(self.params):
            if param.grad is None:
                continue
            step = param.grad
            if decay:
                step = step.add(param, alpha=decay)
            if self.anchor is not None:  # built only when mu > 0
                step = step.add(param - self.anchor[i], alpha=self.config.mu)
            if momentum:
                velocity = self.velocity[i]
                if velocity is None:
                    velocity = self.velocity[i] = step.clone()
                else:
                    velocity.mul_(momentum).add_(step)
                step = velocity
            param.add_(step, alpha=-lr)
            param.grad = None


def train(
    module: torch.nn.Module,
    inputs: np.ndarray,
    targets: np.ndarray,
    config: TrainConfig = TrainConfig(),
    *,
    base: ParamMap | None = None,
) -> TrainResult:
    """Train ``module`` in place with SGD on ``(inputs, targets)``; seeded and repeatable.

    With ``config.mu > 0`` the proximal anchor is ``base`` (the round's base weights) or,
    when not given, the module's weights before training.
    """
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ValueError(
            f"need as many targets as inputs (and some), got {len(inputs)} and {len(targets)}"
        )
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.as_tensor(np.asarray(inputs))
    y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    named = [(name, param) for name, param in module.named_parameters() if param.requires_grad]
    anchor = None
    if config.mu > 0:
        anchor = [
            torch.as_tensor(np.array(base[name])) if base is not None else param.detach().clone()
            for name, param in named
        ]
    optimizer = MomentumSGD([param for _, param in named], config, anchor)
    module.train()
    steps, loss_sum, seen = 0, 0.0, 0
    for _ in range(config.epochs):
        loss_sum, seen = 0.0, 0
        for batch in torch.split(torch.randperm(len(x), generator=generator), config.batch_size):
            loss = torch.nn.functional.cross_entropy(module(x[batch]), y[batch])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            steps += 1
            loss_sum += float(loss.detach()) * len(batch)
            seen += len(batch)
    return TrainResult(examples=len(x), steps=steps, loss=loss_sum / max(seen, 1))


def evaluate(
    module: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray
) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``module`` on ``(inputs, targets)``."""
    module.eval()
    with torch.no_grad():
        logits = module(torch.as_tensor(np.asarray(inputs)))
        y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        accuracy = float((logits.argmax(1) == y).float().mean())
        loss = float(torch.nn.functional.cross_entropy(logits, y))
    return accuracy, loss
