"""Loss barriers: how much worse the models on the straight line between two models are.

Whether two models can be averaged is a question about the path between them: if every
point ``θ(t) = (1-t)·a + t·b`` is about as good as the endpoints, their average is too;
if the loss rises in between, the average lands on that ridge. The loss barrier measures
the ridge's height above the straight line joining the endpoint losses::

    barrier = max_t [ L(θ(t)) - ((1-t)·L(a) + t·L(b)) ]

the definition of Ainsworth et al. (2023), which is Frankle et al.'s (2020) instability
measured on a loss rather than an error, against the linearly interpolated endpoint loss
rather than the endpoints' mean. Both endpoints give 0, so the barrier is never negative.
The midpoint barrier ``L(θ(½)) - (L(a)+L(b))/2`` is reported too, because an average of
two models is exactly the midpoint, which makes it the figure a merge cares about.

Two independently trained networks typically show a high barrier, and after their hidden
units are aligned (``fedvc.align.weight_matching``) a barrier near zero: the models were
in one basin all along, up to a permutation. This module only walks the path; the caller
supplies ``evaluate`` (a loss on a data set, with whatever framework runs the model), so
it needs numpy alone.

References:
    Frankle, Dziugaite, Roy, Carbin, "Linear Mode Connectivity and the Lottery Ticket
    Hypothesis", ICML 2020.
    Ainsworth, Hayase, Srinivasa, "Git Re-Basin: Merging Models modulo Permutation
    Symmetries", ICLR 2023.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedvc.errors import FedvcError
from fedvc.tensors import ParamMap, name_mismatch


class BarrierError(FedvcError, ValueError):
    """The two models cannot be interpolated, or a loss along the path is unusable."""


def interpolate(a: ParamMap, b: ParamMap, t: float) -> dict[str, np.ndarray]:
    """The model ``(1-t)·a + t·b``, tensor by tensor, in each tensor of ``a``'s dtype.

    ``t = 0`` gives ``a`` and ``t = 1`` gives ``b`` exactly; values outside [0, 1]
    extrapolate. Integer and bool tensors (BatchNorm's ``num_batches_tracked``, masks)
    have no points in between: they are copied from ``a``. Both models must name the same
    tensors with the same shapes and dtypes.
    """
    _check_t(t)
    return _mix(_path(a, b), t)


def _check_t(t: object) -> None:
    # bool is an int to Python, but interpolate(a, b, True) is far likelier a mistake than
    # a request for b; anything non-numeric would otherwise fail inside numpy, unexplained.
    if isinstance(t, bool | np.bool_) or not isinstance(t, numbers.Real) or not math.isfinite(t):
        raise BarrierError(
            f"t must be a finite real number (0 gives a, 1 gives b), got {t!r} of type "
            f"{type(t).__name__}"
        )


_Path = list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]]
"""Per tensor: its name, ``a``'s tensor as given, ``a``'s in float64 (None when it is not
floating point, so is copied rather than interpolated), and ``b``'s in float64 (as given
when ``a``'s is None). The float64 arrays are only read, never handed out."""


def _path(a: ParamMap, b: ParamMap) -> _Path:
    """Check that ``a`` and ``b`` can be interpolated, and convert them to float64 once.

    ``loss_barrier`` calls this once for all its points, so the checks and the float64
    conversions are not repeated at every t (at the cost of holding both conversions).
    """
    if names := name_mismatch(a, b):
        raise BarrierError(
            f"the two models name different tensors: b has {names}; interpolate only models "
            "of one architecture"
        )
    path: _Path = []
    for name, left in a.items():
        x, y = np.asarray(left), np.asarray(b[name])
        if x.shape != y.shape or x.dtype != y.dtype:
            raise BarrierError(
                f"tensor {name!r} is {x.dtype}{list(x.shape)} in a but {y.dtype}"
                f"{list(y.shape)} in b; interpolate only models of one architecture and dtype"
            )
        if np.issubdtype(x.dtype, np.floating):
            path.append(
                (name, x, x.astype(np.float64, copy=False), y.astype(np.float64, copy=False))
            )
        else:
            path.append((name, x, None, y))
    return path


def _mix(path: _Path, t: float) -> dict[str, np.ndarray]:
    """The point ``t`` of a path from ``_path``; every tensor is a fresh array."""
    result: dict[str, np.ndarray] = {}
    for name, x, x64, y64 in path:
        if x64 is None:
            result[name] = x.copy()
            continue
        mixed = (1.0 - t) * x64 + t * y64
        result[name] = mixed.astype(x.dtype)
    return result


@dataclass(frozen=True)
class BarrierResult:
    """Losses along the linear path from ``a`` (t = 0) to ``b`` (t = 1), and the barriers.

    ``ts`` are increasing and include 0, ½ and 1; ``losses[i]`` is the loss at ``ts[i]``.
    ``barrier`` is the largest excess over the straight line between the endpoint losses,
    reached at ``t_max``; ``midpoint`` is that excess at t = ½.
    """

    ts: tuple[float, ...]
    losses: tuple[float, ...]
    barrier: float
    midpoint: float
    t_max: float

    @property
    def excess(self) -> tuple[float, ...]:
        """Each loss minus the linear interpolation of the endpoint losses."""
        return _excess(self.ts, self.losses)

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": list(self.ts),
            "losses": list(self.losses),
            "barrier": self.barrier,
            "midpoint": self.midpoint,
            "t_max": self.t_max,
        }


def _excess(ts: tuple[float, ...], losses: tuple[float, ...]) -> tuple[float, ...]:
    """Each loss minus the line joining the endpoint losses (``BarrierResult.excess``)."""
    first, last = losses[0], losses[-1]
    return tuple(loss - ((1 - t) * first + t * last) for t, loss in zip(ts, losses, strict=True))


def loss_barrier(
    a: ParamMap,
    b: ParamMap,
    evaluate: Callable[[ParamMap], float],
    *,
    steps: int = 11,
) -> BarrierResult:
    """Evaluate the loss at ``steps`` evenly spaced points from ``a`` to ``b``, and ½.

    ``evaluate`` maps a model to its loss (a mean cross-entropy over a fixed data set, say)
    and is called once per point, in increasing ``t``; the midpoint is added to the grid
    when ``steps`` is even, so the midpoint barrier is always a real evaluation and the
    barrier is never below it. Every loss must be a finite number: a diverged model has
    no meaningful barrier, and an ``inf`` would hide the rest of the curve.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise BarrierError(f"steps must be an integer ≥ 2 (the two endpoints), got {steps!r}")
    grid = np.linspace(0.0, 1.0, steps)
    ts = tuple(float(t) for t in np.union1d(grid, [0.5]))
    path = _path(a, b)
    losses = []
    for t in ts:
        value = evaluate(_mix(path, t))
        try:
            loss = float(value)
        except (TypeError, ValueError):
            raise BarrierError(
                f"evaluate must return a number (the loss), got {type(value).__name__} at t={t:g}"
            ) from None
        if not math.isfinite(loss):
            raise BarrierError(
                f"the loss at t={t:g} is {loss}: the model there diverges, so no barrier can "
                "be measured; check the endpoints and the evaluation"
            )
        losses.append(loss)
    excess = _excess(ts, tuple(losses))
    # excess[0] is exactly 0.0 (L(a) - (1·L(a) + 0·L(b))), so the peak is never negative
    peak = int(np.argmax(excess))
    return BarrierResult(
        ts=ts,
        losses=tuple(losses),
        barrier=excess[peak],
        midpoint=excess[ts.index(0.5)],
        t_max=ts[peak],
    )
