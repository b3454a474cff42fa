"""``chain``: update transforms followed by one strategy, working as one strategy.

``chain(clip_by_norm(5.0), align(spec), fisher())`` clips each update, aligns it, then
merges with the Fisher-weighted mean. When every transform treats updates one at a time
and the final strategy streams, the chain streams too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedvc.merge.base import (
    Accumulator,
    MergeError,
    MergeStrategy,
    State,
    StrategySpec,
    Update,
    UpdateTransform,
    ordered,
)
from fedvc.tensors import ParamMap


class _TransformingAccumulator:
    def __init__(
        self,
        inner: Accumulator,
        base: ParamMap | None,
        steps: Sequence[Callable[[ParamMap | None, Update], Update]],
    ) -> None:
        self._inner, self._base, self._steps = inner, base, steps

    def add(self, update: Update) -> None:
        for step in self._steps:
            update = step(self._base, update)
        self._inner.add(update)

    def finish(self) -> tuple[dict[str, np.ndarray], State]:
        return self._inner.finish()


def _describe(part: object) -> str:
    """What was given, for an error: a function's name rather than its repr's address."""
    name = getattr(part, "__qualname__", None)
    if callable(part) and isinstance(name, str):
        return f"{name} (not called)"
    return repr(part)


def chain(*parts: UpdateTransform | MergeStrategy) -> MergeStrategy:
    """Transforms in order, then the strategy given last."""
    if not parts or not isinstance(parts[-1], MergeStrategy):
        given = _describe(parts[-1]) if parts else "nothing"
        raise MergeError(
            f"chain(...) ends with a merge strategy, e.g. chain(clip_by_norm(5.0), fedavg()), "
            f"but got {given} last"
        )
    *transforms, last = parts
    final: MergeStrategy = last  # type: ignore[assignment]  # checked just above
    for part in transforms:
        if isinstance(part, MergeStrategy):
            raise MergeError(
                f"chain(...): only the last part may be a merge strategy, but {part.spec.name} "
                "comes earlier"
            )
        if not isinstance(part, UpdateTransform):
            # Typically a factory passed uncalled: chain(clip_by_norm, fedavg()).
            raise MergeError(
                f"chain(...): every part before the last must be an update transform such as "
                f"clip_by_norm(5.0), got {_describe(part)}; call the factory to build it"
            )
    steps = [t for t in transforms if isinstance(t, UpdateTransform)]
    spec = StrategySpec("chain", {}, tuple(part.spec for part in parts))

    def merge(
        base: ParamMap | None, updates: Sequence[Update], state: State
    ) -> tuple[dict[str, np.ndarray], State]:
        current = ordered(updates)
        for transform in steps:
            current = ordered(transform.apply(base, current))
        return final.merge(base, current, state)

    accumulate = None
    one_at_a_time = [t.apply_one for t in steps]
    if final.accumulate is not None and all(step is not None for step in one_at_a_time):
        inner_accumulate = final.accumulate
        callables = [step for step in one_at_a_time if step is not None]

        def accumulate_chain(base: ParamMap | None, state: State) -> Accumulator:
            return _TransformingAccumulator(inner_accumulate(base, state), base, callables)

        accumulate = accumulate_chain
    return MergeStrategy(spec, final.init, merge, accumulate)
