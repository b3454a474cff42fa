"""Fisher-weighted merging: each coordinate averaged by how much each client's data pins it.

Plain averaging treats every coordinate of every client as equally trustworthy. Matena and
Raffel read each client's model as a Laplace approximation of its posterior, a Gaussian
centred on θᵢ whose precision is the diagonal Fisher information Fᵢ; the model that
maximises the weighted product of these posteriors is, coordinate by coordinate::

    θ* = Σᵢ λᵢ Fᵢ θᵢ / Σᵢ λᵢ Fᵢ

A coordinate that one client's data constrains tightly (large Fᵢ) and the others barely
touch keeps that client's value, where FedAvg would dilute it.

Choices made here:

- λᵢ, the paper's per-model scalar, is the update's ``weight`` normalised to sum to one
  (usually the client's number of examples), so the example count multiplies the Fisher:
  a client with twice the data counts twice as much at the same Fisher. The normalisation
  cancels in the ratio; it only fixes the scale on which ``epsilon`` acts.
- ``epsilon`` is added to every client's Fisher, an isotropic prior of precision ε. After
  normalising the weights this puts ε in the denominator, ``Σ λᵢ Fᵢ + ε``, and ε times the
  plain weighted mean in the numerator, so where ``Σ λᵢ Fᵢ`` is ~0 (a tensor no client's
  loss depends on, a BatchNorm running statistic, whose Fisher ``estimate_fisher``
  reports as zero) the merge falls back smoothly to the weighted mean instead of 0/0, and
  is exactly that mean, up to rounding, where every Fisher is zero. It needs no third
  running sum, and where the Fisher is large ε is below rounding and changes nothing.
- Integer and bool tensors (counters, masks) have no meaningful Fisher: they take the
  weighted mean, rounded, as in ``fedavg``. Their Fisher entries must still be present,
  so that a missing tensor in a Fisher map is always caught.

The merge streams: the accumulator keeps two running sums per floating tensor, ``Σ wᵢ
(Fᵢ+ε) θᵢ`` and ``Σ wᵢ (Fᵢ+ε)``, added chunk by chunk so the temporaries stay in cache.

References:
    Matena, Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS 2022.
"""

from __future__ import annotations

import numpy as np

from fedvc.merge.base import (
    MergeError,
    MergeStrategy,
    State,
    StrategySpec,
    Update,
    check_same_structure,
    finite_number,
    require_weight,
    stateless,
    streaming_strategy,
)
from fedvc.merge.fedavg import CHUNK, _accumulator_dtype, _add_scaled
from fedvc.tensors import ParamMap, name_mismatch

NAME = "fisher"


def _check_fisher(update: Update) -> ParamMap:
    """The update's Fisher map, after checking it names and shapes exactly its params."""
    fisher = update.fisher
    if fisher is None:
        raise MergeError(
            f"{NAME}: update {update.client!r} carries no Fisher information; have every "
            "client send its diagonal Fisher (fedvc_client.fisher.estimate_fisher) or merge with "
            "fedavg instead"
        )
    if names := name_mismatch(update.params, fisher):
        raise MergeError(
            f"{NAME}: update {update.client!r} has a Fisher map that does not name its "
            f"tensors ({names}); the Fisher needs one entry per tensor of the model, zeros "
            "for buffers"
        )
    for key, array in update.params.items():
        if fisher[key].shape != array.shape:
            raise MergeError(
                f"{NAME}: update {update.client!r} tensor {key!r} has shape {array.shape} "
                f"but its Fisher has shape {fisher[key].shape}; they must match"
            )
    return fisher


def _check_range(fisher: np.ndarray, where: str) -> None:
    """Every Fisher entry finite and ≥ 0, checked chunk by chunk (no model-sized mask)."""
    flat = fisher.reshape(-1)
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start : start + CHUNK]
        low, high = chunk.min(), chunk.max()
        if not (low >= 0 and high < np.inf):  # also false for NaN
            raise MergeError(
                f"{NAME}: {where} has a Fisher entry of {low if not low >= 0 else high}; "
                "Fisher information is a mean of squares, finite and ≥ 0"
            )


def _add_fisher_weighted(
    numerator: np.ndarray,
    denominator: np.ndarray,
    values: np.ndarray,
    fisher: np.ndarray,
    weight: float,
    epsilon: float,
    scratch: np.ndarray,
) -> None:
    """``denominator += w(F+ε)`` and ``numerator += w(F+ε)θ``, chunk by chunk."""
    flat_num, flat_den = numerator.reshape(-1), denominator.reshape(-1)
    flat_values, flat_fisher = values.reshape(-1), fisher.reshape(-1)
    for start in range(0, flat_num.size, CHUNK):
        stop = min(start + CHUNK, flat_num.size)
        part = scratch[: stop - start]
        np.add(flat_fisher[start:stop], epsilon, out=part, casting="unsafe")
        np.multiply(part, weight, out=part)
        np.add(flat_den[start:stop], part, out=flat_den[start:stop])
        np.multiply(part, flat_values[start:stop], out=part, casting="unsafe")
        np.add(flat_num[start:stop], part, out=flat_num[start:stop])


class FisherAccumulator:
    """Running ``Σ wᵢ(Fᵢ+ε)θᵢ`` and ``Σ wᵢ(Fᵢ+ε)`` over updates added one at a time.

    ``add`` is all or nothing: a rejected update (wrong tensors or shapes, a missing or
    out-of-range Fisher) is refused before any sum changes, so the caller can drop it and
    go on adding the other clients' updates.
    """

    def __init__(self, epsilon: float) -> None:
        self.epsilon = epsilon
        self.numerators: dict[str, np.ndarray] = {}
        self.denominators: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.total = 0.0
        self.count = 0
        self._scratch: dict[np.dtype, np.ndarray] = {}

    def _check(self, update: Update) -> ParamMap:
        """The update's Fisher map, after checking everything ``add`` relies on."""
        fisher = _check_fisher(update)
        if self.dtypes:
            check_same_structure(self.numerators, [update], strategy=NAME)
        for key, array in update.params.items():
            if np.issubdtype(self.dtypes.get(key, array.dtype), np.floating):
                _check_range(np.asarray(fisher[key]), f"update {update.client!r} tensor {key!r}")
        return fisher

    def add(self, update: Update) -> None:
        fisher = self._check(update)
        if not self.dtypes:
            for key, array in update.params.items():
                dtype = _accumulator_dtype(array.dtype)
                self.dtypes[key] = array.dtype
                self.numerators[key] = np.zeros(array.shape, dtype)
                if np.issubdtype(array.dtype, np.floating):
                    self.denominators[key] = np.zeros(array.shape, dtype)
        for key, array in update.params.items():
            numerator = self.numerators[key]
            scratch = self._scratch.setdefault(numerator.dtype, np.empty(CHUNK, numerator.dtype))
            values = np.asarray(array)
            if key in self.denominators:
                _add_fisher_weighted(
                    numerator,
                    self.denominators[key],
                    values,
                    np.asarray(fisher[key]),
                    update.weight,
                    self.epsilon,
                    scratch,
                )
            else:
                _add_scaled(numerator, values, update.weight, scratch)
        self.total += update.weight
        self.count += 1

    def finish(self) -> tuple[dict[str, np.ndarray], State]:
        require_weight(NAME, self.count, self.total)
        result = {}
        for key, numerator in self.numerators.items():
            dtype = self.dtypes[key]
            if key in self.denominators:
                numerator /= self.denominators[key]
            else:
                numerator /= self.total
                np.rint(numerator, out=numerator)
            result[key] = numerator.astype(dtype, copy=False)
        self.numerators, self.denominators = {}, {}
        return result, {}


def fisher(epsilon: float = 1e-8) -> MergeStrategy:
    """Fisher-weighted average of the clients' models (Matena & Raffel 2022).

    Every update must carry a diagonal Fisher with exactly its params' names and shapes.
    ``epsilon`` (> 0) is the Fisher floor that makes coordinates no client's Fisher covers
    fall back to the example-weighted mean; see the module docstring.
    """
    epsilon = finite_number(NAME, "epsilon", epsilon, positive=True)
    spec = StrategySpec(NAME, {"epsilon": epsilon})

    def accumulate(base: ParamMap | None, state: State) -> FisherAccumulator:
        return FisherAccumulator(epsilon)

    return streaming_strategy(spec, stateless, accumulate)
