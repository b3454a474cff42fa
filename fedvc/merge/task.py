"""Task arithmetic and its descendants: merging task vectors ``τᵢ = θᵢ - base``.

A task vector is what a client's training added to the base. Task arithmetic adds the
clients' task vectors (rather than averaging their models), which keeps each client's
full step; TIES and DARE first thin the task vectors so that they interfere less when
added. All three need the round's base. ``slerp`` interpolates between two whole models
along the arc between them and does not need one.

Weights: task arithmetic, DARE and TIES honour ``Update.weight`` (an example count).
Task arithmetic and DARE rescale the weights to average 1, so weights redistribute the sum
among clients without changing its overall size: equal weights give exactly ``Σ τᵢ``, and
``scale = 1/n`` then gives the (example-weighted) mean, i.e. FedAvg. TIES uses the weights
in its sign election and in its disjoint mean. ``slerp`` has no use for them.

Integer and bool tensors (BatchNorm's ``num_batches_tracked``) are counters, not task
material: adding counters would claim n clients' worth of training. They take the
example-weighted mean of the clients' values, rounded half to even, as FedAvg gives them.

Task arithmetic and DARE stream: each update adds into one running sum, in the dtype
FedAvg accumulates in (float32 for float16/float32 models). TIES elects a sign per
coordinate from every client at once, so it goes tensor by tensor with O(clients · tensor)
memory.

References:
    Ilharco, Ribeiro, Wortsman, Gururangan, Schmidt, Hajishirzi, Farhadi, "Editing Models
    with Task Arithmetic", ICLR 2023.
    Yadav, Tam, Choshen, Raffel, Bansal, "TIES-Merging: Resolving Interference When
    Merging Models", NeurIPS 2023.
    Yu, Yu, Yu, Huang, Li, "Language Models are Super Mario: Absorbing Abilities from
    Homologous Models as a Free Lunch", ICML 2024 (DARE).
    Shoemake, "Animating Rotation with Quaternion Curves", SIGGRAPH 1985 (slerp).
    Goddard et al., "Arcee's MergeKit: A Toolkit for Merging Large Language Models", 2024
    (slerp, TIES and DARE as used for model merging).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence

import numpy as np

from fedvc.merge.base import (
    MergeError,
    MergeStrategy,
    State,
    StrategySpec,
    Update,
    check_same_structure,
    finite_number,
    ordered,
    require_updates,
    require_weight,
    stateless,
    streaming_strategy,
    top_k_count,
)
from fedvc.merge.fedavg import _accumulator_dtype
from fedvc.merge.robust import _cast, _floating
from fedvc.tensors import ParamMap

COLINEAR = 0.9995
"""|cos| above which slerp falls back to linear interpolation (mergekit's threshold)."""


def _need_base(name: str, base: ParamMap | None) -> ParamMap:
    if base is None:
        raise MergeError(
            f"{name} merges task vectors θᵢ - base, so it needs the round's base model; give "
            "one (or use fedavg, which does not)"
        )
    return base


def _check_number(name: str, label: str, value: object, low: float, high: float) -> float:
    """``value`` as a float in (low, high], or a MergeError saying so."""
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not low < value <= high
    ):
        raise MergeError(f"{name}({label}=...) must be a number in ({low}, {high}], got {value!r}")
    return float(value)


Drop = Callable[[Update, str, np.ndarray], None]
"""Rewrites one update's task vector for one tensor in place (DARE's random drop)."""


class _TaskSum:
    """Running ``Σ wᵢ τᵢ`` (counters: ``Σ wᵢ θᵢ``) over updates added one at a time."""

    def __init__(self, name: str, base: ParamMap, scale: float, drop: Drop | None) -> None:
        self.name, self.base, self.scale, self.drop = name, base, scale, drop
        self.sums = {key: np.zeros(a.shape, _accumulator_dtype(a.dtype)) for key, a in base.items()}
        self.total = 0.0
        self.count = 0

    def add(self, update: Update) -> None:
        check_same_structure(self.base, [update])
        for key, origin in self.base.items():
            total = self.sums[key]
            values = np.asarray(update.params[key]).astype(total.dtype)
            if _floating(origin.dtype):
                values -= origin
                if self.drop is not None:
                    self.drop(update, key, values)
            values *= update.weight
            total += values
        self.total += update.weight
        self.count += 1

    def finish(self) -> tuple[dict[str, np.ndarray], State]:
        require_weight(self.name, self.count, self.total)
        factor = self.scale * self.count / self.total  # weights rescaled to average 1
        result: dict[str, np.ndarray] = {}
        for key, origin in self.base.items():
            total = self.sums[key]
            if _floating(origin.dtype):
                total *= total.dtype.type(factor)
                total += origin
                result[key] = total.astype(origin.dtype)
            else:
                result[key] = _cast(total / self.total, origin.dtype)
        self.sums = {}
        return result, {}


def _task_sum(spec: StrategySpec, scale: float, drop: Drop | None) -> MergeStrategy:
    def accumulate(base: ParamMap | None, state: State) -> _TaskSum:
        return _TaskSum(spec.name, _need_base(spec.name, base), scale, drop)

    return streaming_strategy(spec, stateless, accumulate)


def task_arithmetic(scale: float = 1.0) -> MergeStrategy:
    """``base + scale · Σᵢ (n·wᵢ / Σⱼ wⱼ) τᵢ`` (Ilharco et al. 2023).

    With equal weights this is ``base + scale · Σ τᵢ``, the paper's sum of task vectors;
    ``scale = 1/n`` makes it the weighted mean of the models (FedAvg, up to rounding).
    """
    finite_number("task_arithmetic", "scale", scale)
    return _task_sum(StrategySpec("task_arithmetic", {"scale": float(scale)}), scale, None)


def _generator(seed: int, client: str, key: str) -> np.random.Generator:
    """A generator seeded by (seed, client, tensor name) alone, never by arrival order."""
    digest = hashlib.sha256(json.dumps([seed, client, key]).encode()).digest()
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(int.from_bytes(digest, "little")))
    )


def dare(density: float = 0.5, scale: float = 1.0, seed: int = 0) -> MergeStrategy:
    """Drop And REscale, then task arithmetic (Yu et al. 2024).

    Each entry of each task vector survives with probability ``density`` and survivors
    are divided by ``density``, which keeps the task vector's expectation; the results
    are summed as ``task_arithmetic(scale)`` sums them. ``density = 1`` is exactly task
    arithmetic. The random drop of update u in tensor k depends only on (``seed``,
    ``u.client``, k), so the same inputs give the same bits in any arrival order (with
    the same numpy, whose generator streams may change between versions).
    """
    keep = _check_number("dare", "density", density, 0.0, 1.0)
    finite_number("dare", "scale", scale)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise MergeError(f"dare(seed=...) must be an integer, got {seed!r}")

    def drop(update: Update, key: str, tau: np.ndarray) -> None:
        if keep == 1.0:
            return
        dropped = _generator(seed, update.client, key).random(tau.shape) >= keep
        tau[dropped] = 0
        tau /= tau.dtype.type(keep)

    spec = StrategySpec("dare", {"density": keep, "scale": float(scale), "seed": seed})
    return _task_sum(spec, scale, drop)


def _weighted_mean(clients: Sequence[Update], key: str, weights: np.ndarray) -> np.ndarray:
    values = np.stack([np.asarray(u.params[key]) for u in clients], dtype=np.float64)
    mean: np.ndarray = np.tensordot(weights, values, axes=1) / weights.sum()
    return mean


def _trim(taus: np.ndarray, density: float) -> None:
    """Zero all but each row's top-``density`` magnitudes, in place (ties all kept)."""
    size = taus.shape[1]
    kept = top_k_count(density, size)
    if kept >= size:
        return
    magnitudes = np.abs(taus)
    threshold = np.partition(magnitudes, size - kept, axis=1)[:, size - kept]
    taus[magnitudes < threshold[:, None]] = 0


def ties(density: float = 0.2, scale: float = 1.0) -> MergeStrategy:
    """TIES-Merging: trim, elect sign, disjoint merge (Yadav et al. 2023).

    1. Trim: each task vector keeps its top ``density`` fraction of entries by magnitude
       (⌈density · size⌉ per tensor, ties at the threshold kept) and zeroes the rest.
       Trimming is per tensor, as in mergekit, rather than over the whole flattened model
       as in the paper's code: every layer keeps the same density, and memory stays
       O(clients · tensor).
    2. Elect: each coordinate's sign is that of the weighted sum of the trimmed vectors.
    3. Disjoint merge: each coordinate is the weighted mean of the trimmed entries that
       are non-zero and carry the elected sign (0 when there are none).

    The result is ``base + scale · merged``. With equal weights this is the paper's rule.
    """
    keep = _check_number("ties", "density", density, 0.0, 1.0)
    finite_number("ties", "scale", scale)
    spec = StrategySpec("ties", {"density": keep, "scale": float(scale)})

    def merge(
        base: ParamMap | None, updates: Sequence[Update], state: State
    ) -> tuple[dict[str, np.ndarray], State]:
        origin_map = _need_base("ties", base)
        require_updates(updates, "ties")
        clients = ordered(updates)
        check_same_structure(origin_map, clients)
        weights = np.array([update.weight for update in clients])
        require_weight("ties", len(clients), float(weights.sum()))
        result: dict[str, np.ndarray] = {}
        for key in sorted(origin_map):
            origin = origin_map[key]
            if not _floating(origin.dtype):
                result[key] = _cast(_weighted_mean(clients, key, weights), origin.dtype)
                continue
            start = np.asarray(origin, dtype=np.float64).reshape(-1)
            flats = [np.asarray(u.params[key]).reshape(-1) for u in clients]
            taus = np.stack(flats, dtype=np.float64)
            taus -= start
            _trim(taus, keep)
            weighted = taus * weights[:, None]
            elected = np.sign(weighted.sum(axis=0))
            agree = (np.sign(taus) == elected) & (taus != 0)
            numerator = np.where(agree, weighted, 0.0).sum(axis=0)
            denominator = np.where(agree, weights[:, None], 0.0).sum(axis=0)
            merged = np.divide(
                numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0
            )
            result[key] = (start + scale * merged).astype(origin.dtype).reshape(origin.shape)
        return result, {}

    return MergeStrategy(spec, stateless, merge)


def _slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation of two flat float64 vectors, linear when they are (nearly)
    colinear or one is zero, where the arc between them is undefined or unstable."""
    length_a, length_b = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cosine = float(np.dot(a, b)) / (length_a * length_b) if length_a and length_b else 1.0
    mixed: np.ndarray
    if not math.isfinite(cosine) or abs(cosine) > COLINEAR:
        mixed = a + t * (b - a)
    else:
        angle = math.acos(max(-1.0, min(1.0, cosine)))
        sine = math.sin(angle)
        mixed = (math.sin((1 - t) * angle) / sine) * a + (math.sin(t * angle) / sine) * b
    return mixed


def slerp(t: float = 0.5) -> MergeStrategy:
    """Spherical linear interpolation between exactly two models (Shoemake 1985), per
    tensor on the flattened full parameters, as mergekit merges models.

    ``t = 0`` gives the update whose client id sorts first, ``t = 1`` the other; between
    them each tensor follows the great-circle arc, so two equal-norm tensors keep their
    norm where a linear mix would shrink it. Nearly colinear tensors (|cos| > ``COLINEAR``)
    and zero tensors fall back to linear interpolation; so do antipodal ones, whose arc is
    not unique. The base is optional and only checked against the two models: slerp
    interpolates models, not task vectors. Weights are ignored (``t`` sets the mix).
    Integer tensors interpolate linearly and round half to even.
    """
    if (
        not isinstance(t, (int, float))
        or isinstance(t, bool)
        or not math.isfinite(t)
        or not 0 <= t <= 1
    ):
        raise MergeError(f"slerp(t=...) must be a number in [0, 1], got {t!r}")
    spec = StrategySpec("slerp", {"t": float(t)})

    def merge(
        base: ParamMap | None, updates: Sequence[Update], state: State
    ) -> tuple[dict[str, np.ndarray], State]:
        if len(updates) != 2:
            raise MergeError(
                f"slerp interpolates between exactly two models, got {len(updates)} updates; "
                "use fedavg or task_arithmetic for more"
            )
        first, second = ordered(updates)
        check_same_structure(base, [first, second])
        reference = base if base is not None else first.params
        result: dict[str, np.ndarray] = {}
        for key in sorted(reference):
            dtype = reference[key].dtype
            if t in (0, 1):  # an endpoint exactly, with no float64 round trip
                endpoint = first if t == 0 else second
                result[key] = np.array(endpoint.params[key], dtype=dtype)
                continue
            a = np.asarray(first.params[key], dtype=np.float64).reshape(-1)
            b = np.asarray(second.params[key], dtype=np.float64).reshape(-1)
            mixed = _slerp(a, b, t) if _floating(dtype) else a + t * (b - a)
            result[key] = _cast(mixed, dtype).reshape(reference[key].shape)
        return result, {}

    return MergeStrategy(spec, stateless, merge)
