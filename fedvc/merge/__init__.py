"""Merge strategies: pure ``(init, merge)`` pairs, composable with ``chain``, named in a
registry (``fedvc.merge.registry``) that plug-ins extend through entry points."""

from fedvc.merge.base import (
    Accumulator,
    MergeError,
    MergeStrategy,
    State,
    StrategySpec,
    Update,
    UpdateTransform,
)
from fedvc.merge.compose import chain
from fedvc.merge.fedavg import fedadagrad, fedadam, fedavg, fedavgm, fedyogi
from fedvc.merge.registry import make, register, strategy_from_spec

__all__ = [
    "Accumulator",
    "MergeError",
    "MergeStrategy",
    "State",
    "StrategySpec",
    "Update",
    "UpdateTransform",
    "chain",
    "fedadagrad",
    "fedadam",
    "fedavg",
    "fedavgm",
    "fedyogi",
    "make",
    "register",
    "strategy_from_spec",
]
