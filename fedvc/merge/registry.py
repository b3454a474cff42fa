"""Strategy names → factories: the built-ins, plus plug-ins from the ``fedvc.strategies``
entry-point group.

A third-party package registers a strategy in its ``pyproject.toml``::

    [project.entry-points."fedvc.strategies"]
    my_median = "my_package.strategies:my_median"

and ``my_median`` then works by name wherever fedvc takes a strategy (the CLI, configs,
``strategy_from_spec``). Built-in names cannot be overridden by a plug-in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from fedvc.merge.base import MergeError, MergeStrategy, StrategySpec, UpdateTransform
from fedvc.merge.compose import chain
from fedvc.merge.fedavg import fedadagrad, fedadam, fedavg, fedavgm, fedyogi
from fedvc.merge.fisher import fisher
from fedvc.merge.matched import align, matched, matched_fisher
from fedvc.merge.regmean import regmean
from fedvc.merge.robust import clip_by_norm, krum, median, multikrum, trimmed_mean
from fedvc.merge.task import dare, slerp, task_arithmetic, ties

Factory = Callable[..., MergeStrategy | UpdateTransform]
ENTRY_POINT_GROUP = "fedvc.strategies"

BUILTIN: dict[str, Factory] = {
    "fedavg": fedavg,
    "fedavgm": fedavgm,
    "fedadam": fedadam,
    "fedyogi": fedyogi,
    "fedadagrad": fedadagrad,
    "fisher": fisher,
    "align": align,
    "matched": matched,
    "matched_fisher": matched_fisher,
    "regmean": regmean,
    "median": median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multikrum": multikrum,
    "clip_by_norm": clip_by_norm,
    "task_arithmetic": task_arithmetic,
    "ties": ties,
    "dare": dare,
    "slerp": slerp,
}
_registered: dict[str, Factory] = {}


def register(name: str, factory: Factory) -> None:
    """Register a strategy factory in this process (plug-in packages use entry points)."""
    if name in BUILTIN or name == "chain":
        raise MergeError(f"strategy name {name!r} is built in; choose another name")
    _registered[name] = factory


def _plugins() -> dict[str, Factory]:
    found: dict[str, Factory] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in BUILTIN:
            continue
        try:
            found[entry.name] = entry.load()
        except Exception as exc:  # a broken plug-in must not hide the built-ins
            raise MergeError(
                f"strategy plug-in {entry.name!r} ({entry.value}) failed to load: {exc}"
            ) from exc
    return found


def available() -> dict[str, Factory]:
    """Every strategy name this process can build: built-ins, plug-ins, registered."""
    return {**_plugins(), **_registered, **BUILTIN}


def make(name: str, params: Mapping[str, Any] | None = None) -> MergeStrategy | UpdateTransform:
    """Build the strategy (or update transform) called ``name`` with ``params``."""
    factories = BUILTIN if name in BUILTIN else available()
    if name not in factories:
        raise MergeError(
            f"unknown strategy {name!r}; available: {', '.join(sorted(available()))} "
            f"(plug-ins register through the {ENTRY_POINT_GROUP!r} entry-point group)"
        )
    try:
        return factories[name](**dict(params or {}))
    except TypeError as exc:
        raise MergeError(f"strategy {name!r}: bad parameters {dict(params or {})}: {exc}") from exc


def strategy_from_spec(spec: StrategySpec | Mapping[str, Any]) -> MergeStrategy:
    """Rebuild a strategy from the spec recorded in a merge commit."""
    if not isinstance(spec, StrategySpec):
        spec = StrategySpec.from_json(spec)
    if spec.name == "chain":
        return chain(*(_part(child) for child in spec.children))
    built = make(spec.name, spec.params)
    if not isinstance(built, MergeStrategy):
        raise MergeError(f"{spec.name!r} is an update transform; use it inside chain(...)")
    return built


def _part(spec: StrategySpec) -> MergeStrategy | UpdateTransform:
    return strategy_from_spec(spec) if spec.name == "chain" else make(spec.name, spec.params)
