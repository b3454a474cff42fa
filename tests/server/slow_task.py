"""A task for process-level tests: numpy only (a client process starts fast), and slow
enough per round that a test can kill a process while a round is under way. With
``marks``, it creates ``marks/<name>-round-<n>`` as it starts training round n, so a test
knows when that is instead of guessing with a sleep."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedvc.participant import TrainResult
from fedvc.tensors import ParamMap


class SlowShift:
    def __init__(self, delta: float, seconds: float, marks: str, name: str) -> None:
        self.delta = delta
        self.seconds = seconds
        self.marks = Path(marks) if marks else None
        self.name = name

    def train(self, params: ParamMap, config: Mapping[str, Any]) -> TrainResult:
        if self.marks is not None:
            (self.marks / f"{self.name}-round-{config['round']}").touch()
        time.sleep(self.seconds)
        moved = {name: (array + self.delta).astype(array.dtype) for name, array in params.items()}
        return TrainResult(moved, examples=10, metrics={"loss": 1.0 / config["round"]})


def task(delta: float = 0.1, seconds: float = 0.5, marks: str = "", name: str = "") -> SlowShift:
    return SlowShift(delta, seconds, marks, name)
