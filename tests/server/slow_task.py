"""A task for process-level tests: numpy only (a client process starts fast), and slow
enough per round that a test can kill a process while a round is under way."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from fedvc.participant import TrainResult
from fedvc.tensors import ParamMap


class SlowShift:
    def __init__(self, delta: float, seconds: float) -> None:
        self.delta = delta
        self.seconds = seconds

    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult:
        time.sleep(self.seconds)
        moved = {name: (array + self.delta).astype(array.dtype) for name, array in params.items()}
        return TrainResult(moved, examples=10, metrics={"loss": 1.0 / config["round"]})


def task(delta: float = 0.1, seconds: float = 0.5) -> SlowShift:
    return SlowShift(delta, seconds)
