"""How much a round's client updates pull against each other, layer by layer.

Averaging works when clients move the model in compatible directions. When their deltas
(``params - base``) point different ways, the merge cancels them out and the round makes
less progress than any one client did. ``interference_report`` measures this before or
after a merge, as plain data the round engine stores in the merge commit's metadata:

- ``mean_cosine`` / ``min_cosine``: pairwise cosine similarity of the clients' deltas. Near
  1 the clients agree; near 0 they move in unrelated directions (typical of unrelated
  tasks, Ilharco et al.); below 0 they undo each other.
- ``sign_conflict``: the TIES measure of interference: among the coordinates where at
  least two clients changed the value (non-zero delta), the fraction whose signs disagree
  (some clients push up, some down). With no such coordinate it is 0: nothing conflicts.
  For unrelated dense deltas it is about 1 - 2^(1-m) for m clients, so it grows with the
  number of clients: compare it between rounds of similar size.
- ``overlap``: mean pairwise Jaccard index of the clients' top-``density`` magnitude masks,
  the coordinates TIES's "trim" step keeps because they carry most of each update. High
  overlap means the clients' important coordinates collide, which is where their sign
  conflicts hurt; low overlap means they could be merged almost independently. A mask
  keeps every coordinate at least as large as the k-th largest magnitude (k =
  ⌈density·n⌉, ties included) and never a zero.
- ``norms``, ``relative_norms`` (each client's norm over the mean norm) and ``norm_ratio``
  (largest over smallest): one client dominating a layer is interference too.
- ``score`` in [0, 1]: ``½·(1 - mean_cosine)/2 + ½·sign_conflict``, the two measures of
  disagreement averaged; 0 when the clients agree, 1 when two clients exactly undo each
  other. An undefined cosine (one client, or zero deltas) counts as agreement.

The whole-model figures are those of the concatenated delta, computed without
concatenating anything: pairwise dot products (Gram matrices) and sign counts are summed
over tensors. The one exception is ``overlap``: each layer keeps its own top-``density``
fraction and the model's Jaccard pools the layers' intersection and union counts, so one
large-magnitude layer cannot take every slot, and no whole-model selection is needed.

Only floating tensors count (integer counters have no meaningful delta direction). With a
single update the cosines and the overlap are None, the conflict rate is 0. Undefined or
non-finite numbers are None, so ``to_json`` passes ``json.dumps(..., allow_nan=False)``.

Memory: one tensor at a time, in blocks of ``BLOCK_ELEMENTS`` float64 values across all
clients, plus one float64 copy of one client's tensor to find its top-k threshold.

References:
    Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023
    (sign conflicts; top-k trimming, whose masks the overlap compares).
    Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023 (cosine similarity
    between task vectors).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedvc.errors import FedvcError
from fedvc.merge.base import Update, top_k_count
from fedvc.tensors import ParamMap, name_mismatch

BLOCK_ELEMENTS = 1 << 20
"""float64 values per block (clients times coordinates): 8 MiB per temporary."""
TOP_LAYERS = 5
_SMALLEST = float(np.nextafter(0.0, 1.0))


class InterferenceError(FedvcError):
    """The updates cannot be compared: no updates, mismatched models, bad parameters."""


@dataclass(frozen=True)
class Figures:
    """Interference figures for one tensor or the whole model.

    Per-client tuples follow ``InterferenceReport.clients``. ``contested`` counts the
    coordinates where at least two clients have a non-zero delta.
    """

    numel: int
    norms: tuple[float | None, ...]
    relative_norms: tuple[float | None, ...]
    norm_ratio: float | None
    mean_cosine: float | None
    min_cosine: float | None
    sign_conflict: float
    contested: int
    overlap: float | None
    score: float

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["norms"], data["relative_norms"] = list(self.norms), list(self.relative_norms)
        return data


@dataclass(frozen=True)
class InterferenceReport:
    """The interference among one round's updates: per layer, whole model, and a score."""

    clients: tuple[str, ...]
    density: float
    model: Figures
    layers: Mapping[str, Figures]
    top_layers: tuple[str, ...]

    @property
    def score(self) -> float:
        return self.model.score

    def summary(self) -> dict[str, Any]:
        """A few numbers for a merge commit's metadata."""
        return {
            "clients": len(self.clients),
            "score": self.model.score,
            "mean_cosine": self.model.mean_cosine,
            "min_cosine": self.model.min_cosine,
            "sign_conflict": self.model.sign_conflict,
            "overlap": self.model.overlap,
            "norm_ratio": self.model.norm_ratio,
            "top_layers": [{"name": n, "score": self.layers[n].score} for n in self.top_layers],
        }

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-ready (None for undefined numbers, never NaN)."""
        return {
            "clients": list(self.clients),
            "density": self.density,
            "score": self.model.score,
            "model": self.model.to_json(),
            "layers": {name: figures.to_json() for name, figures in self.layers.items()},
            "top_layers": list(self.top_layers),
        }


class _Sums:
    """Running sums over coordinates from which every figure follows."""

    def __init__(self, clients: int) -> None:
        self.gram = np.zeros((clients, clients))
        self.shared = np.zeros((clients, clients))  # |mask_i ∩ mask_j|; diagonal |mask_i|
        self.contested = 0
        self.conflicting = 0
        self.numel = 0

    def add(self, other: _Sums) -> None:
        self.gram += other.gram
        self.shared += other.shared
        self.contested += other.contested
        self.conflicting += other.conflicting
        self.numel += other.numel

    def figures(self) -> Figures:
        count = len(self.gram)
        squares = np.diag(self.gram)
        norms = [_finite(math.sqrt(s)) if s >= 0 else None for s in squares]
        # every pair at once (a fleet of n clients has n(n-1)/2 pairs); fsum below keeps the
        # means exact and independent of summation order
        first, second = np.triu_indices(count, 1)
        lengths = np.array([math.nan if n is None else n for n in norms], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            pair_cosines = self.gram[first, second] / lengths[first] / lengths[second]
            alone = np.diag(self.shared)  # |mask_i|
            union = alone[first] + alone[second] - self.shared[first, second]
            pair_overlaps = self.shared[first, second][union > 0] / union[union > 0]
        cosines = np.clip(pair_cosines[np.isfinite(pair_cosines)], -1.0, 1.0).tolist()
        overlaps = pair_overlaps.tolist()
        mean_cosine = _finite(math.fsum(cosines) / len(cosines)) if cosines else None
        conflict = self.conflicting / self.contested if self.contested else 0.0
        known = [n for n in norms if n is not None]
        mean_norm = math.fsum(known) / len(known) if len(known) == count else None
        relative = tuple(n / mean_norm if mean_norm and n is not None else None for n in norms)
        ratio = max(known) / min(known) if len(known) == count and min(known) > 0 else None
        agreement = 1.0 if mean_cosine is None else mean_cosine
        return Figures(
            numel=self.numel,
            norms=tuple(norms),
            relative_norms=relative,
            norm_ratio=ratio,
            mean_cosine=mean_cosine,
            min_cosine=_finite(min(cosines)) if cosines else None,
            sign_conflict=conflict,
            contested=self.contested,
            overlap=math.fsum(overlaps) / len(overlaps) if overlaps else None,
            score=0.25 * (1.0 - agreement) + 0.5 * conflict,
        )


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _threshold(base: np.ndarray, new: np.ndarray, keep: int) -> float:
    """The k-th largest |new - base| (ties kept by ``>=``), never below the smallest > 0."""
    magnitudes = np.subtract(new.reshape(-1), base.reshape(-1), dtype=np.float64)
    np.abs(magnitudes, out=magnitudes)
    cut = magnitudes.size - keep
    magnitudes.partition(cut)
    value = float(magnitudes[cut])
    return value if value > _SMALLEST else _SMALLEST  # NaN deltas end up in no mask


def _tensor_sums(base: np.ndarray, arrays: Sequence[np.ndarray], density: float) -> _Sums:
    count, size = len(arrays), base.size
    sums = _Sums(count)
    sums.numel = size
    if size == 0:
        return sums
    keep = top_k_count(density, size)  # the count TIES's trim keeps, so overlap measures it
    thresholds = np.array([[_threshold(base, array, keep)] for array in arrays])
    flat_base = base.reshape(-1)
    flats = [array.reshape(-1) for array in arrays]
    step = max(1, BLOCK_ELEMENTS // count)
    for start in range(0, size, step):
        stop = min(start + step, size)
        block = np.empty((count, stop - start))
        for row, flat in zip(block, flats, strict=True):
            np.subtract(flat[start:stop], flat_base[start:stop], out=row, dtype=np.float64)
        sums.gram += block @ block.T
        up, down = (block > 0).any(axis=0), (block < 0).any(axis=0)
        sums.conflicting += int(np.count_nonzero(up & down))
        sums.contested += int(np.count_nonzero(np.count_nonzero(block, axis=0) >= 2))
        masks = (np.abs(block) >= thresholds).astype(np.float64)
        sums.shared += masks @ masks.T
    return sums


def _labels(updates: Sequence[ParamMap | Update], clients: Sequence[str] | None) -> list[str]:
    if clients is not None:
        labels = [str(client) for client in clients]
        if len(labels) != len(updates) or len(set(labels)) != len(labels) or "" in labels:
            raise InterferenceError(
                f"clients must name each of the {len(updates)} updates once, got {labels!r}"
            )
        return labels
    labels = [u.client if isinstance(u, Update) else "" for u in updates]
    if "" in labels or len(set(labels)) != len(labels):
        return [str(i) for i in range(len(updates))]
    return labels


def _check(base: ParamMap, label: str, params: ParamMap) -> None:
    if names := name_mismatch(base, params):
        raise InterferenceError(
            f"update {label!r} holds different tensors than the base: {names}; compare "
            "updates of the base's architecture"
        )
    for name, array in base.items():
        if params[name].shape != array.shape:
            raise InterferenceError(
                f"update {label!r}: tensor {name!r} has shape {params[name].shape}, "
                f"the base has {array.shape}; deltas need identical shapes"
            )


def interference_report(
    base: ParamMap,
    updates: Sequence[ParamMap] | Sequence[Update],
    *,
    clients: Sequence[str] | None = None,
    density: float = 0.2,
) -> InterferenceReport:
    """Measure how the updates' deltas from ``base`` interfere, per tensor and overall.

    ``updates`` are the clients' whole models (``Update``s or parameter maps); ``clients``
    names them (default: the updates' ``client`` ids, else their positions). Clients are
    reported in sorted order, so the report does not depend on the order of ``updates``.
    ``density`` (0 < density ≤ 1) is the fraction of each tensor in a top-k mask.
    """
    if not updates:
        raise InterferenceError("an interference report needs at least one update, got none")
    if not (math.isfinite(density) and 0 < density <= 1):
        raise InterferenceError(f"density must be in (0, 1], got {density!r}; the default is 0.2")
    labels = _labels(updates, clients)
    maps = [u.params if isinstance(u, Update) else u for u in updates]
    for label, params in zip(labels, maps, strict=True):
        _check(base, label, params)
    order = sorted(range(len(labels)), key=labels.__getitem__)
    labels, maps = [labels[i] for i in order], [maps[i] for i in order]
    total = _Sums(len(maps))
    layers: dict[str, Figures] = {}
    with np.errstate(invalid="ignore", over="ignore"):
        for name in sorted(base):
            origin = np.asarray(base[name])
            if not np.issubdtype(origin.dtype, np.floating):
                continue
            sums = _tensor_sums(origin, [np.asarray(params[name]) for params in maps], density)
            total.add(sums)
            layers[name] = sums.figures()
        model = total.figures()
    ranked = sorted(
        (name for name in layers if layers[name].score > 0), key=lambda n: (-layers[n].score, n)
    )
    return InterferenceReport(tuple(labels), density, model, layers, tuple(ranked[:TOP_LAYERS]))
