"""A numpy-only workload: fast enough for fleets of thousands, no torch needed.

Each example is a number drawn around its label; the "model" is one mean, trained by
moving it towards the client's examples. ``tasks_built`` counts ``client_task`` calls, so
a test can tell whether a simulation built tasks for clients that did not take part.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedvc.participant import TrainResult
from fedvc.tensors import ParamMap


class MeanTask:
    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult:
        mean = params["mean"].astype(np.float64)
        lr = float(config.get("lr", 0.5))
        for _ in range(int(config.get("epochs", 1))):
            mean = mean + lr * (self.values.mean() - mean)
        loss = float(((self.values - mean) ** 2).mean())
        fisher = (
            {"mean": np.full(1, len(self.values), np.float32)} if config.get("fisher") else None
        )
        return TrainResult(
            {"mean": mean.astype(np.float32)}, len(self.values), {"loss": loss}, fisher
        )


class MeanWorkload:
    def __init__(self, examples: int = 2000, classes: int = 5, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.y = rng.integers(0, classes, examples)
        self.x = self.y + rng.normal(0, 1, examples)
        self.test = self.y[:200] + rng.normal(0, 1, 200)
        self.tasks_built = 0

    def labels(self) -> np.ndarray:
        return self.y

    def groups(self) -> np.ndarray | None:
        return None

    def initial_params(self, seed: int) -> ParamMap:
        return {"mean": np.full(1, -3.0, np.float32)}

    def client_task(self, indices: np.ndarray) -> MeanTask:
        self.tasks_built += 1
        return MeanTask(self.x[indices])

    def evaluate(self, params: ParamMap) -> dict[str, float]:
        loss = float(((self.test - params["mean"][0]) ** 2).mean())
        return {"accuracy": 1.0 / (1.0 + loss), "loss": loss}


def mean_workload(examples: int = 2000) -> MeanWorkload:
    return MeanWorkload(examples)
