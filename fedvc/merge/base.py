"""What a merge strategy is: a pure ``(init, merge)`` pair with a serializable spec.

In the style of optax, behaviour is small pure functions built by factories
(``fedavg()``, ``trimmed_mean(beta=0.1)``) and composed with ``chain``:

- ``init(base) -> state``: the server state before the first round (``{}`` for most).
- ``merge(base, updates, state) -> (params, state)``: one round's new model.

State is a flat ``ParamMap`` (``"m/fc1.weight"`` → array), so the round engine can store it
as an ordinary snapshot next to the merge commit and replay any merge later.

Strategies that can take updates one at a time also offer ``accumulate(base, state)``,
an ``Accumulator`` that holds O(model) memory however many clients report; their
``merge`` is built from it, so both paths give the same bits. ``UpdateTransform``s
(clipping, alignment) rewrite updates before a strategy sees them.

Every strategy carries a ``StrategySpec`` (name + JSON parameters + children for
``chain``), recorded in every merge commit; ``fedvc.merge.registry`` turns a spec back
into the strategy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from fedvc.errors import FedvcError
from fedvc.tensors import ParamMap, name_mismatch

State = dict[str, np.ndarray]
"""Server state between rounds: a flat parameter map (empty for stateless strategies)."""


class MergeError(FedvcError):
    """A merge cannot be computed from these inputs (no updates, mismatched models...)."""


@dataclass(frozen=True)
class StrategySpec:
    """A strategy's name and parameters: enough to rebuild it from the registry."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    children: tuple[StrategySpec, ...] = ()

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {"name": self.name, "params": dict(self.params)}
        if self.children:
            value["children"] = [child.to_json() for child in self.children]
        return value

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> StrategySpec:
        if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
            raise MergeError(
                f"a strategy spec is {{'name': str, 'params': {{...}}}}, got {value!r}"
            )
        params = value.get("params", {})
        if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
            raise MergeError(
                f"strategy {value['name']!r}: 'params' must be an object with string keys, "
                f"got {params!r}"
            )
        children = value.get("children", [])
        # A spec comes from a commit's metadata, i.e. from JSON: children are a list of
        # objects. Anything else is a corrupt or hand-written spec, not a strategy.
        if not isinstance(children, (list, tuple)) or not all(
            isinstance(child, Mapping) for child in children
        ):
            raise MergeError(
                f"strategy {value['name']!r}: 'children' must be a list of strategy specs "
                f"({{'name': str, 'params': {{...}}}}), got {children!r}; fix or drop it"
            )
        return cls(value["name"], dict(params), tuple(cls.from_json(c) for c in children))

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        inner = ", ".join(str(child) for child in self.children)
        return f"{self.name}({', '.join(filter(None, [inner, args]))})"


@dataclass(frozen=True)
class Update:
    """One client's contribution to a round.

    ``params`` is the client's whole model after local training (strategies that need a
    delta compute ``params - base``); ``weight`` is how much it counts (usually its number
    of training examples); ``fisher`` is its diagonal Fisher information when the client
    sent one; ``grams`` the Gram matrix of each linear layer's inputs on the client's data,
    keyed by the layer's weight name (for ``regmean``); ``extras`` holds anything else
    attached to it (optimizer moments). An alignment permutes all of them together with
    ``params``. ``client`` is a stable id (the update's
    commit id), distinct within a round: updates are merged in ``client`` order, so the
    same inputs give the same bits whatever order they arrived in.
    """

    params: ParamMap
    weight: float = 1.0
    client: str = ""
    fisher: ParamMap | None = None
    grams: ParamMap | None = None
    extras: Mapping[str, ParamMap] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.weight) or self.weight < 0:
            raise MergeError(
                f"update {self.client!r}: weight must be finite and ≥ 0, got {self.weight}"
            )

    def with_params(self, params: ParamMap, **changes: Any) -> Update:
        return replace(self, params=params, **changes)


class Accumulator(Protocol):
    """Takes updates one at a time and holds O(model) memory.

    Floating-point sums depend on the order of their terms, and an accumulator sums in
    the order ``add`` is called. For bit-identical results, whatever order the updates
    arrived in, add them in client-id order (``ordered(updates)``), as the batch
    ``merge`` of a streaming strategy does; adding them as they arrive gives the same
    result up to rounding only.
    """

    def add(self, update: Update) -> None: ...

    def finish(self) -> tuple[dict[str, np.ndarray], State]: ...


InitFn = Callable[[ParamMap | None], State]
MergeFn = Callable[[ParamMap | None, Sequence[Update], State], tuple[dict[str, np.ndarray], State]]
AccumulateFn = Callable[[ParamMap | None, State], Accumulator]


@dataclass(frozen=True)
class MergeStrategy:
    """A merge strategy: ``init`` and ``merge``, plus ``accumulate`` when it can stream."""

    spec: StrategySpec
    init: InitFn
    merge: MergeFn
    accumulate: AccumulateFn | None = None

    @property
    def streams(self) -> bool:
        return self.accumulate is not None


def streaming_strategy(spec: StrategySpec, init: InitFn, accumulate: AccumulateFn) -> MergeStrategy:
    """A strategy whose batch ``merge`` feeds its accumulator, so both paths agree bit for bit."""

    def merge(
        base: ParamMap | None, updates: Sequence[Update], state: State
    ) -> tuple[dict[str, np.ndarray], State]:
        accumulator = accumulate(base, state)
        add_all = getattr(accumulator, "add_all", None)  # a faster batch path, same bits
        if add_all is not None:
            add_all(ordered(updates))
        else:
            for update in ordered(updates):
                accumulator.add(update)
        return accumulator.finish()

    return MergeStrategy(spec, init, merge, accumulate)


def stateless(_: ParamMap | None) -> State:
    return {}


@dataclass(frozen=True)
class UpdateTransform:
    """Rewrites a round's updates before a strategy merges them (clip, align, sparsify).

    ``apply_one`` is given when the transform treats each update on its own, which lets a
    chain of such transforms and a streaming strategy stream as a whole.
    """

    spec: StrategySpec
    apply: Callable[[ParamMap | None, Sequence[Update]], list[Update]]
    apply_one: Callable[[ParamMap | None, Update], Update] | None = None


def per_update(
    spec: StrategySpec, transform: Callable[[ParamMap | None, Update], Update]
) -> UpdateTransform:
    """An ``UpdateTransform`` that rewrites every update independently."""

    def apply(base: ParamMap | None, updates: Sequence[Update]) -> list[Update]:
        return [transform(base, update) for update in updates]

    return UpdateTransform(spec, apply, transform)


def ordered(updates: Iterable[Update]) -> list[Update]:
    """Updates in canonical order (by client id), so merges do not depend on arrival order.

    The order is canonical only when client ids are distinct: two updates with one id
    (such as the default ``""``) would fall back to arrival order, and DARE would draw
    the same random mask for both. So a shared id is refused rather than merged.
    """
    result = sorted(updates, key=lambda update: update.client)
    for previous, update in itertools.pairwise(result):
        if previous.client == update.client:
            raise MergeError(
                f"two updates have the same client id {update.client!r}; merges order "
                "updates by client id to be reproducible, so give each update a distinct "
                "`client` (e.g. its commit id)"
            )
    return result


def top_k_count(density: float, size: int) -> int:
    """How many of ``size`` entries a top-``density`` selection keeps: ⌈density·size⌉.

    TIES's trim and the interference report's overlap masks must agree on this count
    (the overlap measures what the trim keeps). The slack absorbs float error in the
    product (0.07 · 100 is 7.000000000000001, which must keep 7, not 8), and at least
    one entry is kept so that a tiny density still selects something.
    """
    return min(size, max(1, math.ceil(density * size - _TOP_K_SLACK)))


_TOP_K_SLACK = 1e-9
"""Float error tolerated in ``density · size`` before rounding it up."""


def require_updates(updates: Sequence[Update], name: str) -> None:
    if not updates:
        raise MergeError(f"{name}: a merge needs at least one update, got none")


def finite_number(name: str, label: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a float, or a MergeError naming the parameter.

    Strategy parameters come from Python calls and from JSON specs alike, so a string or
    a bool (which Python counts as an int) must be refused here rather than fail, or
    silently mean 1, deep inside a merge.
    """
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or (positive and value <= 0)
    ):
        kind = "a finite number > 0" if positive else "a finite number"
        raise MergeError(f"{name}({label}=...) must be {kind}, got {value!r}")
    return float(value)


def require_weight(name: str, count: int, total: float) -> None:
    """A weighted merge needs updates whose weights add up to something positive."""
    if count == 0:
        raise MergeError(f"{name}: a merge needs at least one update, got none")
    if total <= 0:
        raise MergeError(f"{name}: the updates' weights sum to {total}; give positive weights")


def check_same_structure(
    base: ParamMap | None, updates: Sequence[Update], *, strategy: str = ""
) -> None:
    """All updates name the same tensors with the same shapes as the base (or, without
    one, as the first update); errors start with ``strategy`` when it is given."""
    reference = base if base is not None else updates[0].params
    prefix = f"{strategy}: " if strategy else ""
    for update in updates:
        if names := name_mismatch(reference, update.params):
            raise MergeError(f"{prefix}update {update.client!r} has different tensors: {names}")
        for name, array in update.params.items():
            if array.shape != reference[name].shape:
                raise MergeError(
                    f"{prefix}update {update.client!r}: tensor {name!r} has shape "
                    f"{array.shape}, expected {reference[name].shape}"
                )


FISHER_STRATEGIES = frozenset({"fisher", "matched_fisher"})
"""Strategies that merge with each client's diagonal Fisher: their rounds ask clients for
one and reject updates that come without it."""
GRAMS_STRATEGIES = frozenset({"regmean"})
"""Strategies that merge with each client's layer input Grams."""


def uses_fisher(spec: StrategySpec) -> bool:
    """True when ``spec`` or any strategy it chains merges with Fisher information."""
    return _uses(spec, FISHER_STRATEGIES)


def uses_grams(spec: StrategySpec) -> bool:
    """True when ``spec`` or any strategy it chains merges with the layers' input Grams."""
    return _uses(spec, GRAMS_STRATEGIES)


def _uses(spec: StrategySpec, names: frozenset[str]) -> bool:
    return spec.name in names or any(_uses(child, names) for child in spec.children)
