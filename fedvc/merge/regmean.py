"""RegMean: each linear layer merged as the regression that best reproduces every client's.

Averaging weights treats every input direction of a layer alike. Jin et al. instead ask,
layer by layer, for the one weight ``W`` whose outputs on every client's own inputs come
closest to that client's layer: minimise ``Σᵢ ‖Xᵢ Wᵀ - Xᵢ Wᵢᵀ‖²``. The answer needs no
data at the server, only each client's Gram matrix ``Gᵢ = Xᵢᵀ Xᵢ`` of the layer's inputs::

    Wᵀ = (Σᵢ Gᵢ)⁻¹ Σᵢ Gᵢ Wᵢᵀ

With a column of ones appended to the inputs, the bias is solved for with the weight.
If every client's layer is the least-squares fit to its own targets, the merge is the
least-squares fit to all the clients' data pooled: what training on the union would give
that layer, from the Grams alone.

Choices made here:

- ``alpha`` scales each Gram's off-diagonal entries (the paper's alpha): 1 is the exact
  regression; below 1 pulls the solution toward a per-input-weighted mean, which the
  paper finds more robust when the layers were not fitted exactly. Default 0.9.
- Grams are sums over the client's examples, not means, so a client with more data
  counts more, as in the pooled regression; the update's ``weight`` is not used for
  the regressed layers.
- Every other tensor (a layer without a Gram, convolutions, norms, integer counters)
  is the example-weighted mean, as in ``fedavg``.
- A Gram is keyed by its layer's weight name (``"0.weight"``), of size ``in + 1`` when the
  layer has a bias (the ones column last) and ``in`` otherwise. ``align`` permutes it
  with the layer's input units. ``fedvc_client.regmean.layer_grams`` measures them.
- The solve adds ``1e-9 * mean(diagonal)`` to the diagonal, so inputs no client ever
  varied (a constant pixel) leave the system solvable instead of singular.

The merge streams: per regressed layer it keeps ``Σ G̃ᵢ`` and ``Σ G̃ᵢ [Wᵢ bᵢ]ᵀ``, so a
coordinator holds O(model + Grams) whatever the number of clients.

References:
    Jin, Ren, Preotiuc-Pietro, Cheng, "Dataless Knowledge Fusion by Merging Weights of
    Language Models", ICLR 2023.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedvc.merge.base import (
    MergeError,
    MergeStrategy,
    State,
    StrategySpec,
    Update,
    finite_number,
    stateless,
    streaming_strategy,
)
from fedvc.merge.fedavg import WeightedMean
from fedvc.tensors import ParamMap, dtype_name

NAME = "regmean"
RIDGE = 1e-9
"""Added to the merged Gram's diagonal, relative to its mean diagonal entry."""


def bias_of(weight: str, params: Mapping[str, object]) -> str | None:
    """The bias that goes with a layer's weight (``"0.weight"`` → ``"0.bias"``), if any."""
    if not weight.endswith("weight"):
        return None
    bias = weight[: -len("weight")] + "bias"
    return bias if bias in params else None


def gram_problem(
    name: str, model: Mapping[str, tuple[str, tuple[int, ...]]], dtype: str, shape: tuple[int, ...]
) -> str | None:
    """What is wrong with a Gram of ``dtype`` and ``shape`` for layer ``name`` of a model
    whose tensors are ``model`` (name → (dtype, shape)), or None: it must belong to a 2-D
    floating weight and be square over the layer's inputs, plus one for its bias."""
    weight = model.get(name)
    if weight is None or len(weight[1]) != 2 or not weight[0].startswith("float"):
        return f"a Gram is named {name!r}, which is not a 2-D floating weight of the model"
    side = weight[1][1] + (bias_of(name, model) is not None)
    if shape != (side, side) or not dtype.startswith("float"):
        return (
            f"the Gram of {name!r} must be a floating {side}x{side} matrix (inputs, plus one "
            f"for the bias), got {dtype}{list(shape)}"
        )
    return None


class RegMeanAccumulator:
    """Running ``Σ G̃ᵢ`` and ``Σ G̃ᵢ[Wᵢ bᵢ]ᵀ`` per layer, and the weighted mean of the rest.

    ``add`` checks the whole update before any sum changes, so a rejected update leaves
    the accumulator as it was.
    """

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.mean = WeightedMean(NAME)
        self.grams: dict[str, np.ndarray] = {}
        self.products: dict[str, np.ndarray] = {}
        self.covered: frozenset[str] | None = None
        """The layers the first update sent Grams for; every other must send the same."""

    def _check(self, update: Update) -> ParamMap:
        grams = update.grams
        if grams is None:
            raise MergeError(
                f"{NAME}: update {update.client!r} carries no Gram matrices; have every client "
                "send them (fedvc_client.regmean.layer_grams) or merge with fedavg"
            )
        if self.covered is not None and grams.keys() != self.covered:
            raise MergeError(
                f"{NAME}: update {update.client!r} has Grams for {sorted(grams)[:5]}, the first "
                f"update for {sorted(self.covered)[:5]}; every client must cover the same layers"
            )
        model = {name: (dtype_name(a.dtype), tuple(a.shape)) for name, a in update.params.items()}
        for name, gram in grams.items():
            problem = gram_problem(name, model, dtype_name(gram.dtype), tuple(gram.shape))
            if problem is None and not np.isfinite(gram).all():
                problem = f"the Gram of {name!r} holds NaN or Inf"
            if problem is not None:
                raise MergeError(f"{NAME}: update {update.client!r}: {problem}")
        return grams

    def add(self, update: Update) -> None:
        grams = self._check(update)
        self.mean.add(update)
        self.covered = frozenset(grams)
        for name, gram in grams.items():
            full = np.asarray(gram, dtype=np.float64)
            shrunk = self.alpha * full + (1 - self.alpha) * np.diag(np.diag(full))
            self.grams[name] = self.grams.get(name, 0) + shrunk
            self.products[name] = self.products.get(name, 0) + shrunk @ _stacked(
                name, update.params
            )

    def finish(self) -> tuple[dict[str, np.ndarray], State]:
        merged = self.mean.mean()
        for name, gram in self.grams.items():
            ridge = RIDGE * max(float(np.mean(np.diag(gram))), np.finfo(np.float64).tiny)
            solved = np.linalg.solve(gram + ridge * np.eye(len(gram)), self.products[name]).T
            inputs = merged[name].shape[1]
            merged[name] = solved[:, :inputs].astype(merged[name].dtype)
            bias = bias_of(name, merged)
            if bias is not None:
                merged[bias] = solved[:, inputs].astype(merged[bias].dtype)
        self.grams, self.products = {}, {}
        return merged, {}


def _stacked(name: str, params: ParamMap) -> np.ndarray:
    """``[W b]ᵀ``: the layer's weight transposed, its bias as one more row, in float64."""
    rows = [np.asarray(params[name], dtype=np.float64).T]
    bias = bias_of(name, params)
    if bias is not None:
        rows.append(np.asarray(params[bias], dtype=np.float64)[None, :])
    return np.vstack(rows)


def regmean(alpha: float = 0.9) -> MergeStrategy:
    """Merge each linear layer by regression on the clients' Grams (Jin et al. 2023).

    Every update must carry ``grams``: for each regressed layer, the Gram matrix of its
    inputs on the client's data. ``alpha`` in (0, 1] scales their off-diagonal entries.
    """
    alpha = finite_number(NAME, "alpha", alpha, positive=True)
    if alpha > 1:
        raise MergeError(f"{NAME}(alpha=...) must be in (0, 1], got {alpha}")
    spec = StrategySpec(NAME, {"alpha": alpha})

    def accumulate(base: ParamMap | None, state: State) -> RegMeanAccumulator:
        return RegMeanAccumulator(alpha)

    return streaming_strategy(spec, stateless, accumulate)
