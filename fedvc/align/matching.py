"""Finding the permutations that align one model with another, or many with each other.

Weight matching (Ainsworth et al. 2023, Algorithm 1) looks for the permutations ``π`` of
``other`` that maximise ``Σ_tensors ⟨W_ref, π(W_other)⟩``, i.e. that minimise the L2
distance between ``reference`` and the permuted ``other``. Jointly that is NP-hard, but
with every permutation but one held fixed the objective is linear in the remaining one,
a linear assignment problem solved exactly by ``scipy.optimize.linear_sum_assignment``.
Coordinate descent over the permutations, in a seeded random order, never decreases the
objective (where one permutation acts on two axes of a tensor, as on a residual stream's
square matrices, each step maximises the linearisation, as in the paper) and stops when a
whole sweep improves nothing by more than rounding. A permutation whose cost matrix cannot
have changed since it was last solved (none of the permutations it depends on moved) is
not solved again: the answer would be the same, so a one-permutation problem costs one
assignment, not two, and each cached product is recomputed only when its input moved.

The cost matrix of permutation ``p`` is ``Σ R_t O_tᵀ`` over the axes ``t`` it acts on,
with ``R_t`` the reference tensor's axis moved to the front and the rest flattened, and
``O_t`` the same for ``other`` with its *other* axes already permuted. Terms whose other
axes carry no permutation (first-layer weights, biases, norms) are constant and computed
once. Products run in the models' precision (float32 for float32 and float16 models, which
hold no more than that, float64 otherwise) and sum into float64 cost matrices.

Activation matching (§3.1 of the same paper) needs data but no spec: it correlates each
hidden unit's activations in the two models over the same inputs and assigns units one to
one, the matching FedMA (Wang et al. 2020) also builds on. ``merge_many`` is Git
Re-Basin's MergeMany: align each of many models to the mean of the others, repeatedly,
which puts models with no common ancestor into one shared basis before averaging.

References:
    Ainsworth, Hayase, Srinivasa. "Git Re-Basin: Merging Models modulo Permutation
    Symmetries", ICLR 2023 (weight matching, activation matching, MergeMany).
    Wang, Yurochkin, Sun, Papailiopoulos, Khazaeni. "Federated Learning with Matched
    Averaging" (FedMA), ICLR 2020.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedvc.align.spec import (
    AlignError,
    PermutationSpec,
    apply_permutation,
    check_perms,
    identity_perms,
    permute_tensor,
)
from fedvc.diff import distance
from fedvc.tensors import ParamMap

_GAIN_ROUNDING = 4.0
"""A new assignment must beat the old by more than this many units of rounding (machine
epsilon * √(row length) * the Cauchy-Schwarz bound ``Σ‖R_t‖‖O_t‖`` of the objective):
rounding noise in the cost matrix must not count as progress, or exact ties (identical
units) could swap back and forth until ``max_iter``."""


def _assign(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact maximum-weight assignment of ``scores`` (rows to columns).

    scipy is imported on first use, not with this module: the merge registry imports
    alignment, and a process that never aligns (a simulation worker, a fleet client)
    should not pay scipy's import.
    """
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(scores, maximize=True)
    return rows, cols


@dataclass(frozen=True)
class _Term:
    """One axis a permutation acts on: ``tensor``'s ``axis``, moved to the front.

    ``others`` lists the permuted axes that remain, as (axis in the moved layout, name).
    """

    tensor: str
    axis: int
    others: tuple[tuple[int, str], ...]


def _terms(spec: PermutationSpec) -> dict[str, list[_Term]]:
    terms: dict[str, list[_Term]] = {}
    for perm, uses in spec.perm_to_axes.items():
        for tensor, axis in uses:
            axes = spec.axes_to_perm[tensor]
            rest = [a for a in range(len(axes)) if a != axis]
            others = tuple((k + 1, q) for k, a in enumerate(rest) if (q := axes[a]) is not None)
            terms.setdefault(perm, []).append(_Term(tensor, axis, others))
    return terms


def _compute_dtype(spec: PermutationSpec, models: Sequence[ParamMap]) -> type[np.floating[Any]]:
    """float32 when every permuted tensor is float32 or float16, float64 otherwise."""
    narrow = all(
        np.asarray(model[name]).dtype in (np.float16, np.float32)
        for model in models
        for name, axes in spec.axes_to_perm.items()
        if any(p is not None for p in axes)
    )
    return np.float32 if narrow else np.float64


def _float_views(
    spec: PermutationSpec, params: ParamMap, dtype: type[np.floating[Any]]
) -> dict[str, np.ndarray]:
    """Every permuted tensor of ``params`` in ``dtype``, reshaped to its spec view."""
    views: dict[str, np.ndarray] = {}
    for name, axes in spec.axes_to_perm.items():
        if any(p is not None for p in axes):
            array = np.asarray(params[name], dtype=dtype)
            views[name] = array.reshape(spec.view_shape(name, array.shape))
    return views


def _check_finite(views: Mapping[str, np.ndarray], what: str) -> None:
    """Refuse NaN and infinite weights up front, where the tensor can still be named.

    scipy's assignment solver rejects such a cost matrix with a bare ValueError that says
    neither which model nor which tensor is at fault; one pass over the inputs here does.
    """
    for name, view in views.items():
        bad = np.count_nonzero(~np.isfinite(view))
        if bad:
            raise AlignError(
                f"tensor {name!r} of {what} has {bad} NaN or infinite entries out of "
                f"{view.size} (in {view.dtype}): weights must be finite to be matched; "
                "check how the model was trained or loaded, or leave it out"
            )


def _check_pair(spec: PermutationSpec, a: ParamMap, b: ParamMap, what: str) -> dict[str, int]:
    sizes = spec.check(a)
    spec.check(b)
    for name in spec.axes_to_perm:
        if np.shape(a[name]) != np.shape(b[name]):
            raise AlignError(
                f"tensor {name!r} has shape {list(np.shape(a[name]))} in the reference but "
                f"{list(np.shape(b[name]))} in {what}: only models of one architecture align"
            )
    return sizes


class _CostMatrices:
    """The cost matrix of each permutation, rebuilt from cached per-axis products.

    Each term's product ``R_t O_tᵀ`` depends only on the permutations of its other axes,
    so it is cached under their change counters and recomputed only when one moved.
    A 2-D term keeps ``O_tᵀ`` contiguous, so permuting its other axis is a fast row gather.
    """

    def __init__(
        self,
        spec: PermutationSpec,
        sizes: Mapping[str, int],
        ref: Mapping[str, np.ndarray],
        other: Mapping[str, np.ndarray],
    ) -> None:
        self.sizes = sizes
        self.terms = _terms(spec)
        self.left: dict[_Term, np.ndarray] = {}
        self.right: dict[_Term, np.ndarray] = {}
        self.cache: dict[_Term, tuple[tuple[int, ...], np.ndarray]] = {}
        self.noise: dict[str, float] = {}
        for p, terms in self.terms.items():
            for t in terms:
                self.left[t] = np.moveaxis(ref[t.tensor], t.axis, 0).reshape(sizes[p], -1)
                moved = np.moveaxis(other[t.tensor], t.axis, 0)
                if len(t.others) == 1 and moved.ndim == 2:
                    moved = np.ascontiguousarray(moved.T)
                self.right[t] = moved

    def rounding(self, p: str) -> float:
        """How much rounding alone can move the objective of permutation ``p``."""
        if p in self.noise:
            return self.noise[p]
        terms = self.terms[p]
        eps = max(float(np.finfo(self.left[t].dtype).eps) for t in terms)
        length = max(self.left[t].shape[1] for t in terms)
        bound = sum(
            float(np.linalg.norm(self.left[t])) * float(np.linalg.norm(self.right[t]))
            for t in terms
        )
        self.noise[p] = _GAIN_ROUNDING * eps * float(np.sqrt(length)) * bound
        return self.noise[p]

    def deps(self, p: str) -> list[str]:
        return sorted({q for t in self.terms[p] for _, q in t.others})

    def __call__(
        self, p: str, perm: Mapping[str, np.ndarray], stamp: Mapping[str, int]
    ) -> np.ndarray:
        n = self.sizes[p]
        matrix = np.zeros((n, n))
        for t in self.terms[p]:
            key = tuple(stamp[q] for _, q in t.others)
            cached = self.cache.get(t)
            if cached is None or cached[0] != key:
                cached = (key, self._product(t, n, perm))
                self.cache[t] = cached
            matrix += cached[1]
        return matrix

    def _product(self, t: _Term, n: int, perm: Mapping[str, np.ndarray]) -> np.ndarray:
        left, right = self.left[t], self.right[t]
        if len(t.others) == 1 and right.ndim == 2:  # contiguous transposed 2-D tensor
            product: np.ndarray = left @ right[perm[t.others[0][1]]]
            return product
        for axis, q in t.others:
            right = np.take(right, perm[q], axis=axis)
        product = left @ right.reshape(n, -1).T
        return product


def _descend(
    spec: PermutationSpec,
    sizes: Mapping[str, int],
    ref: Mapping[str, np.ndarray],
    other: Mapping[str, np.ndarray],
    init: Mapping[str, np.ndarray],
    seed: int,
    max_iter: int,
) -> dict[str, np.ndarray]:
    """Coordinate descent of weight matching over float views (see the module docs)."""
    cost = _CostMatrices(spec, sizes, ref, other)
    deps = {p: cost.deps(p) for p in sizes}
    perm = {p: np.asarray(init[p], dtype=np.intp) for p in sizes}
    stamp = dict.fromkeys(sizes, 0)  # bumped whenever a permutation changes
    solved: dict[str, tuple[int, ...]] = {}  # dependency stamps at the last solve
    rng = np.random.default_rng(seed)
    names = list(sizes)
    for _ in range(max_iter):
        progress = False
        for index in rng.permutation(len(names)):
            p = names[index]
            key = tuple(stamp[q] for q in deps[p])
            if solved.get(p) == key:
                continue  # same cost matrix as last time: same answer
            solved[p] = key
            with np.errstate(over="ignore", invalid="ignore"):  # reported just below
                matrix = cost(p, perm, stamp)
            if not np.isfinite(matrix).all():
                # the inputs were checked finite, so only the products can have overflowed
                dtype = cost.left[cost.terms[p][0]].dtype
                raise AlignError(
                    f"the cost matrix of permutation {p!r} (tensors "
                    f"{sorted({t.tensor for t in cost.terms[p]})}) has NaN or infinite entries "
                    f"although the weights are finite: their products overflow {dtype}; "
                    "scale the models down, or pass them as float64, and align again"
                )
            rows, cols = _assign(matrix)
            old, new = matrix[rows, perm[p]], matrix[rows, cols]
            if new.sum() - old.sum() > cost.rounding(p):
                perm[p] = cols.astype(np.intp)
                stamp[p] += 1
                progress = True
        if not progress:
            break
    return perm


def weight_matching(
    spec: PermutationSpec,
    reference: ParamMap,
    other: ParamMap,
    *,
    max_iter: int = 100,
    seed: int = 0,
    init: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Permutations that bring ``other`` into ``reference``'s basis (Git Re-Basin, Alg. 1).

    Apply them with ``apply_permutation(spec, perms, other)``. The result is a local
    optimum of the weight-space inner product, deterministic for a given ``seed`` (which
    orders the coordinate-descent sweeps); ``init`` starts from given permutations
    instead of the identity. At most ``max_iter`` sweeps are run.
    """
    if max_iter < 1:
        raise AlignError(f"max_iter must be at least 1, got {max_iter}")
    sizes = _check_pair(spec, reference, other, "the other model")
    start = identity_perms(sizes) if init is None else check_perms(spec, init, sizes)
    dtype = _compute_dtype(spec, [reference, other])
    ref, oth = _float_views(spec, reference, dtype), _float_views(spec, other, dtype)
    _check_finite(ref, "the reference")
    _check_finite(oth, "the other model")
    return _descend(spec, sizes, ref, oth, start, seed, max_iter)


def activation_matching(
    reference_acts: Mapping[str, np.ndarray],
    other_acts: Mapping[str, np.ndarray],
    *,
    method: Literal["correlation", "inner"] = "correlation",
) -> dict[str, np.ndarray]:
    """Per permutation, match ``other``'s units to ``reference``'s by their activations.

    Both maps hold, per permutation name, the ``(n_samples, width)`` activations of the
    two models on the same inputs (``fedvc.torch_io.collect_activations``). Units are
    paired by Pearson correlation (``method="correlation"``, insensitive to each unit's
    scale and offset) or by raw inner product, then assigned one to one. Units that are
    constant over the inputs (dead ReLUs) correlate with nothing and pair arbitrarily.

    References: Ainsworth et al. 2023, §3.1; Wang et al. 2020 (FedMA) match neurons of
    client models for averaging in the same spirit.
    """
    if set(reference_acts) != set(other_acts):
        raise AlignError(
            f"activations were given for different permutations: reference has "
            f"{sorted(reference_acts)}, other has {sorted(other_acts)}; record the same layers"
        )
    if method not in ("correlation", "inner"):
        raise AlignError(f"method must be 'correlation' or 'inner', got {method!r}")
    perms: dict[str, np.ndarray] = {}
    for name in reference_acts:
        a = np.asarray(reference_acts[name], dtype=np.float64)
        b = np.asarray(other_acts[name], dtype=np.float64)
        if a.ndim != 2 or a.shape != b.shape or a.shape[0] < 2:
            raise AlignError(
                f"activations for {name!r} must be two (n_samples, width) arrays of one "
                f"shape with at least 2 samples, got {list(a.shape)} and {list(b.shape)}"
            )
        for which, acts in (("reference", a), ("other", b)):
            if not np.isfinite(acts).all():
                raise AlignError(
                    f"the {which} model's activations for {name!r} have "
                    f"{np.count_nonzero(~np.isfinite(acts))} NaN or infinite entries: units "
                    "cannot be matched by them; check the model and the inputs they were "
                    "recorded on"
                )
        if method == "correlation":
            a, b = _standardize(a), _standardize(b)
        with np.errstate(over="ignore", invalid="ignore"):  # reported just below
            similarity = a.T @ b / a.shape[0]
        if not np.isfinite(similarity).all():
            raise AlignError(
                f"the inner products of the activations for {name!r} overflow float64; "
                "use method='correlation', which standardises them, or scale them down"
            )
        _, cols = _assign(similarity)
        perms[name] = cols.astype(np.intp)
    return perms


def _standardize(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0)
    std = centred.std(axis=0)
    scaled: np.ndarray = np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)
    return scaled


@dataclass(frozen=True)
class MergeManyResult:
    """Models put into one common basis, and the permutations that did it.

    ``models[i]`` is ``apply_permutation(spec, perms[i], input_models[i])``; apply
    ``perms[i]`` the same way to anything attached to model ``i`` (its diagonal Fisher,
    its optimizer moments). ``sweeps`` counts passes over all models; ``converged`` is
    False when ``max_iter`` ran out before a pass changed nothing.
    """

    models: list[dict[str, np.ndarray]]
    perms: list[dict[str, np.ndarray]]
    sweeps: int
    converged: bool


def merge_many(
    spec: PermutationSpec,
    models: Sequence[ParamMap],
    *,
    max_iter: int = 20,
    seed: int = 0,
    weights: Sequence[float] | None = None,
    inner_iter: int = 100,
) -> MergeManyResult:
    """Align models with no common base into one basis (Git Re-Basin's MergeMany).

    Repeatedly, for each model in a seeded random order, weight-match it (from its
    current permutation) to the ``weights``-weighted mean of all the others as currently
    aligned, until a whole pass changes no permutation or ``max_iter`` passes ran. The
    common basis is not any one input's; each output is a pure permutation of its input,
    so averaging the outputs (FedAvg, Fisher merging) is the merge itself.

    ``max_iter`` bounds those passes; ``inner_iter`` bounds the coordinate-descent sweeps
    of each single weight matching inside a pass (``weight_matching``'s ``max_iter``), a
    separate limit because one pass over many models runs many matchings. The weighted
    mean of the others is the weighted total of all aligned models, kept in float64 and
    updated when a model's permutation changes, less the model's own share, so a pass
    costs O(models) model-sized operations rather than O(models²).
    """
    count = len(models)
    if count == 0:
        raise AlignError("merge_many needs at least one model, got none")
    if max_iter < 1:
        raise AlignError(f"max_iter must be at least 1, got {max_iter}")
    if inner_iter < 1:
        raise AlignError(f"inner_iter must be at least 1, got {inner_iter}")
    w = _merge_weights(weights, count)
    sizes = spec.check(models[0])
    for i, model in enumerate(models[1:], start=1):
        _check_pair(spec, models[0], model, f"model {i}")
    dtype = _compute_dtype(spec, models)
    views = [_float_views(spec, model, dtype) for model in models]
    for i, view in enumerate(views):
        _check_finite(view, f"model {i}")
    perms = [identity_perms(sizes) for _ in models]
    aligned = list(views)  # each model as currently permuted, in the compute dtype
    total = {name: np.zeros(v.shape, np.float64) for name, v in views[0].items()}
    for j, model in enumerate(aligned):
        _add_share(total, model, w[j])
    rng = np.random.default_rng(seed)
    sweeps, converged = 0, count == 1
    while not converged and sweeps < max_iter:
        sweeps += 1
        converged = True
        for i in rng.permutation(count):
            others = sum(w[j] for j in range(count) if j != i)
            mean = _mean_of_others(total, aligned[i], w[i], others, dtype)
            inner_seed = int(rng.integers(2**63))
            found = _descend(spec, sizes, mean, views[i], perms[i], inner_seed, inner_iter)
            if any(not np.array_equal(found[p], perms[i][p]) for p in sizes):
                converged = False
                perms[i] = found
                _add_share(total, aligned[i], -w[i])
                aligned[i] = {
                    name: permute_tensor(v, spec.axes_to_perm[name], found, None)
                    for name, v in views[i].items()
                }
                _add_share(total, aligned[i], w[i])
    out = [apply_permutation(spec, p, model) for p, model in zip(perms, models, strict=True)]
    return MergeManyResult(models=out, perms=perms, sweeps=sweeps, converged=converged)


def _add_share(total: dict[str, np.ndarray], model: Mapping[str, np.ndarray], w: float) -> None:
    """``total += w · model`` in float64, so a narrow model's product is not rounded first."""
    if w:
        for name, value in total.items():
            value += np.multiply(model[name], w, dtype=np.float64)


def _mean_of_others(
    total: Mapping[str, np.ndarray],
    own: Mapping[str, np.ndarray],
    w: float,
    others: float,
    dtype: type[np.floating[Any]],
) -> dict[str, np.ndarray]:
    """``(total - w · own) / others`` in ``dtype``: the weighted mean of the other models."""
    mean: dict[str, np.ndarray] = {}
    for name, value in total.items():
        rest = value - np.multiply(own[name], w, dtype=np.float64) if w else value.copy()
        rest /= others
        mean[name] = rest.astype(dtype, copy=False)
    return mean


def _merge_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    w = [float(x) for x in weights]
    if len(w) != count:
        raise AlignError(f"got {len(w)} weights for {count} models: give one weight per model")
    if not all(np.isfinite(x) and x >= 0 for x in w) or (count > 1 and sum(x > 0 for x in w) < 2):
        raise AlignError(
            f"weights must be finite and non-negative with at least two positive (each model "
            f"is matched to the weighted mean of the others), got {w}"
        )
    return w


def l2_distance(a: ParamMap, b: ParamMap) -> float:
    """‖a - b‖ over the floating tensors (``fedvc.diff.distance``), e.g. before and after
    alignment, once every tensor of ``a`` has a counterpart of its shape in ``b``."""
    for name, x in a.items():
        if name not in b or np.shape(b[name]) != np.shape(x):
            raise AlignError(
                f"tensor {name!r} of shape {list(np.shape(x))} has no counterpart of the same "
                "shape in the other model: compare models of one architecture"
            )
    return distance(a, {name: b[name] for name in a})
