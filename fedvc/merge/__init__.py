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
from fedvc.merge.fisher import fisher
from fedvc.merge.matched import align, matched, matched_fisher
from fedvc.merge.registry import make, register, strategy_from_spec
from fedvc.merge.regmean import regmean
from fedvc.merge.robust import clip_by_norm, krum, median, multikrum, trimmed_mean
from fedvc.merge.task import dare, slerp, task_arithmetic, ties

__all__ = [
    "Accumulator",
    "MergeError",
    "MergeStrategy",
    "State",
    "StrategySpec",
    "Update",
    "UpdateTransform",
    "align",
    "chain",
    "clip_by_norm",
    "dare",
    "fedadagrad",
    "fedadam",
    "fedavg",
    "fedavgm",
    "fedyogi",
    "fisher",
    "krum",
    "make",
    "matched",
    "matched_fisher",
    "median",
    "multikrum",
    "register",
    "regmean",
    "slerp",
    "strategy_from_spec",
    "task_arithmetic",
    "ties",
    "trimmed_mean",
]
