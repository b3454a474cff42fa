"""Structural diffs and arithmetic deltas between two parameter maps.

``diff_params`` is what ``fedvc diff A B`` reports. Each tensor gets a status (unchanged,
changed, added, removed, retyped) and, when it can be compared, four raw numbers, because
each one answers a different question about a federated update:

* ``l2`` (‖b - a‖) is the size of the step, in the layer's own units;
* ``relative`` (‖b - a‖ / ‖a‖) makes steps comparable across layers, so a client that
  moved one layer far more than the others stands out;
* ``changed_fraction`` (share of entries whose stored value differs) tells a dense update
  from a sparse or top-k one, and spots frozen layers;
* ``cosine`` (cos(a, b)) spots sign flips and re-initialisations that a norm can hide:
  ``b = -a`` has a modest relative change of 2 but a cosine of -1.

Every number is accumulated in float64 over chunks of ``CHUNK_ELEMENTS`` entries, so a
multi-gigabyte tensor never needs a full-size float64 copy. A number that would be NaN or
infinite (a NaN on one side, an overflow) is reported as ``None``, so JSON output stays
strict. "Unchanged" means bit-identical (NaN at the same place stays unchanged, but
``-0.0`` vs ``0.0`` is a change of l2 0), which is exactly what equal content hashes mean;
that is why ``known_equal`` can skip the comparison without changing the answer.

``delta`` and ``apply_delta`` are the arithmetic that merging needs: ``new - base`` and
``base + scale * delta``, with the dtype rules documented on each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np

from fedvc.errors import FedvcError
from fedvc.tensors import ParamMap, TensorError, dtype_name, name_mismatch, numpy_dtype

TensorStatus = Literal["unchanged", "changed", "added", "removed", "retyped"]
STATUSES: tuple[TensorStatus, ...] = get_args(TensorStatus)

CHUNK_ELEMENTS = 1 << 20
"""Entries processed at a time: 8 MiB per float64 buffer, about 35 MiB peak in all."""


class DiffError(FedvcError):
    """Two parameter maps cannot be subtracted or added (names, shapes or dtypes disagree),
    or an argument such as ``chunk_elements`` or ``scale`` is out of range."""


@dataclass(frozen=True)
class TensorDiff:
    """How one tensor differs between ``a`` and ``b``; numbers are None when not applicable."""

    name: str
    status: TensorStatus
    old_dtype: str | None
    new_dtype: str | None
    old_shape: tuple[int, ...] | None
    new_shape: tuple[int, ...] | None
    numel: int
    l2: float | None = None
    relative: float | None = None
    cosine: float | None = None
    changed_fraction: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: shapes as lists, missing numbers as null (never NaN)."""
        data = asdict(self)
        for key in ("old_shape", "new_shape"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data


@dataclass(frozen=True)
class ParamDiff:
    """A whole-model diff: per-tensor entries sorted by name plus model-level totals.

    Totals cover the comparable tensors (status unchanged or changed); added, removed and
    retyped tensors have no element-wise counterpart and are only counted.
    """

    tensors: tuple[TensorDiff, ...]
    total_l2: float | None
    total_relative: float | None
    cosine: float | None
    changed_fraction: float | None
    compared_elements: int
    changed_elements: int

    @property
    def counts(self) -> dict[TensorStatus, int]:
        """Number of tensors per status, every status present (zero when absent)."""
        counts = dict.fromkeys(STATUSES, 0)
        for tensor in self.tensors:
            counts[tensor.status] += 1
        return counts

    @property
    def differences(self) -> tuple[TensorDiff, ...]:
        """The tensors that are not unchanged, in name order."""
        return tuple(t for t in self.tensors if t.status != "unchanged")

    @property
    def is_identical(self) -> bool:
        """True when both maps hold the same names with bit-identical contents."""
        return not self.differences

    def get(self, name: str) -> TensorDiff | None:
        """The entry for ``name``, or None if neither map has it."""
        return next((t for t in self.tensors if t.name == name), None)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with a ``summary`` and a ``tensors`` list (no NaN anywhere)."""
        summary: dict[str, Any] = {
            "counts": dict(self.counts),
            "total_l2": self.total_l2,
            "total_relative": self.total_relative,
            "cosine": self.cosine,
            "changed_fraction": self.changed_fraction,
            "compared_elements": self.compared_elements,
            "changed_elements": self.changed_elements,
        }
        return {"summary": summary, "tensors": [t.to_json() for t in self.tensors]}


@dataclass
class _Sums:
    """Running float64 sums for one pair of tensors (or for the whole model)."""

    diff_sq: float = 0.0
    a_sq: float = 0.0
    b_sq: float = 0.0
    dot: float = 0.0
    changed: int = 0
    elements: int = 0

    def add(self, other: _Sums) -> None:
        self.diff_sq += other.diff_sq
        self.a_sq += other.a_sq
        self.b_sq += other.b_sq
        self.dot += other.dot
        self.changed += other.changed
        self.elements += other.elements

    def metrics(self) -> tuple[float | None, float | None, float | None, float | None]:
        """(l2, relative, cosine, changed_fraction), None where undefined or non-finite."""
        l2 = _finite(math.sqrt(self.diff_sq)) if self.diff_sq >= 0 else None
        norm_a = _finite(math.sqrt(self.a_sq)) if self.a_sq >= 0 else None
        norm_b = _finite(math.sqrt(self.b_sq)) if self.b_sq >= 0 else None
        relative = l2 / norm_a if l2 is not None and norm_a else None
        cosine = None
        if norm_a and norm_b and _finite(self.dot) is not None:
            cosine = _finite(max(-1.0, min(1.0, self.dot / norm_a / norm_b)))
        fraction = self.changed / self.elements if self.elements else None
        return l2, relative, cosine, fraction


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _chunk_size(chunk_elements: int | None) -> int:
    size = CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    # a float or a bool would fail later inside range() or slicing, far from its cause
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise DiffError(
            f"chunk_elements must be a positive integer number of entries, got {size!r}; "
            f"leave it None for the default of {CHUNK_ELEMENTS}"
        )
    return int(size)


def _chunks(array: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Flat C-order pieces of ``array``: views when contiguous, small copies otherwise."""
    flat = array.reshape(-1) if array.flags.c_contiguous else None
    for start in range(0, array.size, size):
        stop = min(start + size, array.size)
        yield flat[start:stop] if flat is not None else np.asarray(array.flat[start:stop])


def _squares(array: np.ndarray, size: int) -> float:
    total = 0.0
    for chunk in _chunks(array, size):
        values = chunk.astype(np.float64, copy=False)
        total += float(np.dot(values, values))
    return total


def _compare(a: np.ndarray, b: np.ndarray, dtype: str, size: int) -> _Sums:
    """Element-wise sums for two tensors of the same canonical dtype and shape."""
    canonical = numpy_dtype(dtype)
    bits = np.dtype(f"<u{canonical.itemsize}")
    floating = canonical.kind == "f"
    sums = _Sums(elements=a.size)
    for raw_a, raw_b in zip(_chunks(a, size), _chunks(b, size), strict=True):
        ca = np.ascontiguousarray(raw_a, dtype=canonical)  # one byte order for the bit view
        cb = np.ascontiguousarray(raw_b, dtype=canonical)
        same = ca.view(bits) == cb.view(bits)
        sums.changed += int(same.size - np.count_nonzero(same))
        fa = ca.astype(np.float64, copy=False)
        fb = cb.astype(np.float64, copy=False)
        step = fb - fa
        # Entries stored identically, or NaN on both sides, did not move: subtracting them
        # would turn inf - inf or NaN - NaN into a NaN that poisons the whole norm.
        step[same | (np.isnan(fa) & np.isnan(fb)) if floating else same] = 0.0
        sums.diff_sq += float(np.dot(step, step))
        sums.a_sq += float(np.dot(fa, fa))
        sums.b_sq += float(np.dot(fb, fb))
        sums.dot += float(np.dot(fa, fb))
    return sums


def _float_range(dtype: np.dtype[Any]) -> tuple[float, float]:
    """The widest float64 interval whose values all convert into integer ``dtype``."""
    if dtype.kind == "b":
        return 0.0, 1.0
    info = np.iinfo(dtype)
    low, high = float(info.min), float(info.max)
    if high > info.max:  # int64/uint64 maxima round up to 2**63 / 2**64 as floats
        high = float(np.nextafter(high, 0.0))
    return low, high


def _dtype_of(name: str, array: np.ndarray, side: str) -> str:
    try:
        return dtype_name(array.dtype)
    except TensorError as exc:
        raise TensorError(f"tensor {name!r} in {side}: {exc}") from None


def diff_params(
    a: ParamMap,
    b: ParamMap,
    *,
    known_equal: Callable[[str], bool] | None = None,
    chunk_elements: int | None = None,
) -> ParamDiff:
    """Compare ``a`` (old) with ``b`` (new), tensor by tensor and as a whole model.

    ``known_equal(name)`` is asked only for names present in both maps with the same dtype
    and shape; when it returns True (say, both snapshots name the same blob hash) the
    element-wise comparison is skipped and the tensor is reported unchanged *without
    checking* — the caller vouches for it. ‖a‖ is still computed so model totals stay
    right. ``chunk_elements`` overrides ``CHUNK_ELEMENTS`` (mainly for tests).
    """
    size = _chunk_size(chunk_elements)
    total = _Sums()
    entries: list[TensorDiff] = []
    with np.errstate(invalid="ignore", over="ignore"):
        for name in sorted(set(a) | set(b)):
            entries.append(_diff_one(name, a, b, known_equal, size, total))
    total_l2, total_relative, cosine, fraction = total.metrics()
    return ParamDiff(
        tensors=tuple(entries),
        total_l2=total_l2,
        total_relative=total_relative,
        cosine=cosine,
        changed_fraction=fraction,
        compared_elements=total.elements,
        changed_elements=total.changed,
    )


def _diff_one(
    name: str,
    a: ParamMap,
    b: ParamMap,
    known_equal: Callable[[str], bool] | None,
    size: int,
    total: _Sums,
) -> TensorDiff:
    old = a.get(name)
    new = b.get(name)
    old_dtype = None if old is None else _dtype_of(name, old, "a")
    new_dtype = None if new is None else _dtype_of(name, new, "b")
    old_shape = None if old is None else tuple(old.shape)
    new_shape = None if new is None else tuple(new.shape)
    if old is None or new is None or old_dtype != new_dtype or old_shape != new_shape:
        status: TensorStatus = "added" if old is None else "removed" if new is None else "retyped"
        numel = new.size if new is not None else old.size if old is not None else 0
        return TensorDiff(name, status, old_dtype, new_dtype, old_shape, new_shape, int(numel))
    assert new_dtype is not None
    if known_equal is not None and known_equal(name):
        a_sq = _squares(old, size)
        sums = _Sums(a_sq=a_sq, b_sq=a_sq, dot=a_sq, elements=old.size)
    else:
        sums = _compare(old, new, new_dtype, size)
    total.add(sums)
    l2, relative, cosine, fraction = sums.metrics()
    status = "unchanged" if sums.changed == 0 else "changed"
    return TensorDiff(
        name,
        status,
        old_dtype,
        new_dtype,
        old_shape,
        new_shape,
        int(new.size),
        l2=l2,
        relative=relative,
        cosine=cosine,
        changed_fraction=fraction,
    )


def norm(params: ParamMap, *, chunk_elements: int | None = None) -> float:
    """Global L2 norm of all tensors, accumulated in float64 chunks (bools count as 0/1).

    Names are visited in sorted order so the same map always gives the same bits.
    """
    size = _chunk_size(chunk_elements)
    with np.errstate(invalid="ignore", over="ignore"):
        return math.sqrt(sum(_squares(params[name], size) for name in sorted(params)))


def distance(a: ParamMap, b: ParamMap, *, chunk_elements: int | None = None) -> float:
    """Global L2 distance between two models of one layout, over their floating tensors.

    Accumulated in float64 chunks in sorted name order, so a model of any size needs only
    chunk-sized temporaries and the same pair always gives the same bits.
    """
    size = _chunk_size(chunk_elements)
    total = 0.0
    with np.errstate(invalid="ignore", over="ignore"):  # NaN or inf: the result says so
        for name in sorted(a):
            if a[name].dtype.kind != "f":
                continue
            for left, right in zip(_chunks(a[name], size), _chunks(b[name], size), strict=True):
                step = right.astype(np.float64) - left
                total += float(np.dot(step, step))
    return math.sqrt(total)


def _check_pairs(base: ParamMap, other: ParamMap, other_label: str) -> None:
    """Raise DiffError unless both maps hold the same names with the same shapes."""
    if names := name_mismatch(base, other):
        raise DiffError(
            f"base and {other_label} must hold the same tensors; {other_label} has {names}. "
            "Compare snapshots of the same architecture, or drop the odd tensors first"
        )
    for name in sorted(base):
        if tuple(base[name].shape) != tuple(other[name].shape):
            raise DiffError(
                f"tensor {name!r}: base has shape {list(base[name].shape)}, "
                f"{other_label} has shape {list(other[name].shape)}; "
                "deltas need identical shapes (was the layer resized?)"
            )


def delta(base: ParamMap, new: ParamMap) -> dict[str, np.ndarray]:
    """``new - base`` per tensor, for shipping or averaging client updates.

    Names, shapes and dtypes must match exactly (else ``DiffError``). Floating tensors
    subtract in their own dtype, as a client would. Integer and bool tensors (BatchNorm's
    ``num_batches_tracked``, masks) give int64 deltas computed modulo 2**64, so
    ``apply_delta(base, delta(base, new))`` restores ``new`` exactly even for uint64 or
    values near the int64 limits; a bool delta is -1, 0 or +1.
    """
    _check_pairs(base, new, "new")
    result: dict[str, np.ndarray] = {}
    for name in sorted(base):
        old_dtype = _dtype_of(name, base[name], "base")
        new_dtype = _dtype_of(name, new[name], "new")
        if old_dtype != new_dtype:
            raise DiffError(
                f"tensor {name!r}: base is {old_dtype}, new is {new_dtype}; "
                "a delta needs one dtype on both sides: cast one snapshot first"
            )
        if numpy_dtype(old_dtype).kind == "f":
            result[name] = np.subtract(new[name], base[name])
        else:
            with np.errstate(over="ignore"):
                result[name] = new[name].astype(np.int64) - base[name].astype(np.int64)
    return result


def apply_delta(base: ParamMap, delta: ParamMap, scale: float = 1.0) -> dict[str, np.ndarray]:
    """``base + scale * delta`` per tensor, cast back to each base tensor's dtype.

    Names and shapes must match (else ``DiffError``); the delta may have any supported
    dtype (an averaged delta is often float64). Floating bases compute in the wider of the
    two dtypes, so ``scale=1`` inverts ``delta`` up to float rounding. Integer and bool
    bases compute in float64 (bools as 0/1), round half to even and clip to the dtype's
    range, which is exact for every value a dtype of 32 bits or less holds. The exception
    is a 64-bit integer base with an integer delta and a whole-number scale: it uses int64
    arithmetic modulo 2**64, mirroring ``delta``, so values beyond 2**53 survive exactly.
    """
    _check_pairs(base, delta, "delta")
    if not math.isfinite(scale):
        raise DiffError(f"scale must be a finite number, got {scale!r}")
    result: dict[str, np.ndarray] = {}
    for name in sorted(base):
        target = numpy_dtype(_dtype_of(name, base[name], "base"))
        step_dtype = numpy_dtype(_dtype_of(name, delta[name], "delta"))
        old, step = base[name], delta[name]
        if target.kind == "f":
            work = np.promote_types(target, step_dtype)  # a float, whatever the delta's dtype
            moved = old.astype(work) + step.astype(work) * work.type(scale)
            result[name] = moved.astype(target)
            continue
        whole = float(scale).is_integer() and abs(scale) < 2**63
        if target.kind != "b" and target.itemsize == 8 and step_dtype.kind != "f" and whole:
            with np.errstate(over="ignore"):
                moved = old.astype(np.int64) + step.astype(np.int64) * np.int64(int(scale))
        else:
            exact = np.rint(old.astype(np.float64) + step.astype(np.float64) * scale)
            if not np.isfinite(exact).all():
                raise DiffError(
                    f"tensor {name!r}: base is {dtype_name(target)} but base + scale * delta "
                    "has NaN or infinite entries, which no integer can hold; "
                    "check the delta for NaN before applying it"
                )
            moved = np.clip(exact, *_float_range(target))
        result[name] = moved.astype(target)
    return result
