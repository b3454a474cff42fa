"""Parameter maps and the canonical byte encoding of one tensor.

A model is a ``ParamMap``: tensor name → numpy array. A tensor's canonical bytes are its
elements in C (row-major) order, little-endian, with no header: dtype and shape live in the
snapshot that names the tensor, so two tensors with equal bytes share one blob whatever
they are called. Encoding is zero-copy for arrays that are already C-contiguous and
little-endian (the common case), and decoding is always zero-copy: the returned array is a
read-only view over the stored bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np

from fedvc.errors import FedvcError

ParamMap: TypeAlias = Mapping[str, np.ndarray]
"""Tensor name → array. Functions accept any mapping and return plain dicts."""

DTYPES: dict[str, np.dtype[Any]] = {
    "bool": np.dtype("?"),
    "uint8": np.dtype("u1"),
    "int8": np.dtype("i1"),
    "uint16": np.dtype("<u2"),
    "int16": np.dtype("<i2"),
    "uint32": np.dtype("<u4"),
    "int32": np.dtype("<i4"),
    "uint64": np.dtype("<u8"),
    "int64": np.dtype("<i8"),
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
}
"""Canonical dtype names and their little-endian numpy dtypes."""

MAX_NAME_LENGTH = 1024
MAX_NDIM = 64


class TensorError(FedvcError):
    """A tensor, its name, dtype, shape or bytes cannot be represented or do not agree."""


def dtype_name(dtype: np.dtype[Any]) -> str:
    """Return the canonical name of ``dtype``, whatever its byte order."""
    little = dtype.newbyteorder("<") if dtype.byteorder not in ("=", "|", "<") else dtype
    for name, known in DTYPES.items():
        if little == known:
            return name
    raise TensorError(
        f"unsupported dtype {dtype}: fedvc stores {', '.join(DTYPES)}; "
        "convert the tensor (for example to float32) before committing it"
    )


def numpy_dtype(name: str) -> np.dtype[Any]:
    """Return the little-endian numpy dtype for a canonical dtype name."""
    try:
        return DTYPES[name]
    except (KeyError, TypeError):
        raise TensorError(
            f"unknown dtype name {name!r}: expected one of {', '.join(DTYPES)}"
        ) from None


def validate_name(name: object) -> str:
    """Return ``name`` if it can name a tensor: a non-empty string without control characters."""
    if not isinstance(name, str) or not name:
        raise TensorError(f"tensor names must be non-empty strings, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise TensorError(
            f"tensor name of {len(name)} characters is longer than {MAX_NAME_LENGTH}: {name[:40]!r}..."
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise TensorError(f"tensor name {name!r} contains control characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise TensorError(f"tensor name {name!r} is not valid Unicode text") from None
    return name


def validate_shape(shape: object) -> tuple[int, ...]:
    """Return ``shape`` as a tuple of non-negative ints, or raise ``TensorError``."""
    if not isinstance(shape, (tuple, list)) or len(shape) > MAX_NDIM:
        raise TensorError(f"a shape must be a list of at most {MAX_NDIM} sizes, got {shape!r}")
    for size in shape:
        if type(size) is not int or size < 0:
            raise TensorError(f"shape {list(shape)!r} has {size!r}: expected non-negative integers")
    return tuple(shape)


def byte_length(dtype: str, shape: tuple[int, ...]) -> int:
    """Number of canonical bytes of a tensor of ``dtype`` and ``shape``."""
    return numpy_dtype(dtype).itemsize * math.prod(shape)


def canonical_array(array: np.ndarray) -> np.ndarray:
    """Return ``array`` as a C-contiguous little-endian array, copying only when needed."""
    dtype = numpy_dtype(dtype_name(array.dtype))
    if array.dtype == dtype and array.flags.c_contiguous:
        return array
    return np.ascontiguousarray(array, dtype=dtype)


def tensor_bytes(array: np.ndarray) -> memoryview:
    """The canonical bytes of ``array`` as a flat byte view (zero-copy when possible)."""
    canonical = canonical_array(array)
    if canonical.ndim == 0 or canonical.size == 0:
        return memoryview(canonical.tobytes())
    return canonical.data.cast("B")


def tensor_from_bytes(data: bytes | memoryview, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only array over ``data`` (no copy), after checking that the length fits."""
    expected = byte_length(dtype, shape)
    if len(data) != expected:
        raise TensorError(
            f"tensor of dtype {dtype} and shape {list(shape)} needs {expected} bytes, got {len(data)}"
        )
    array = np.frombuffer(data, dtype=numpy_dtype(dtype)).reshape(shape)
    array.flags.writeable = False
    return array


def to_numpy(value: object, name: str = "tensor") -> np.ndarray:
    """Convert one tensor-like value (numpy array, torch tensor, nested lists) to numpy."""
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch"):
        from fedvc import torch_io  # torch stays out of the core unless a tensor needs it

        return torch_io.tensor_to_numpy(value, name)
    try:
        return np.asarray(value)
    except Exception as exc:  # numpy raises many types for odd inputs
        raise TensorError(
            f"{name}: cannot convert {type(value).__name__} to an array: {exc}"
        ) from exc


def name_mismatch(expected: Mapping[str, object], got: Mapping[str, object]) -> str:
    """How ``got``'s tensor names differ from ``expected``'s, for an error message
    (``"missing ['a'], unexpected ['b']"``, at most five of each), or ``""`` if they agree."""
    if expected.keys() == got.keys():
        return ""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    return f"missing {missing[:5]}, unexpected {unexpected[:5]}"


def as_param_map(params: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Validate a state_dict-like mapping and return it as a ``ParamMap`` of numpy arrays.

    Accepts numpy arrays, torch tensors (CPU or not, with or without grad) and array-likes.
    Every name and dtype is checked here, at the door, so later code can trust the map.
    """
    if not isinstance(params, Mapping):
        raise TensorError(
            f"expected a mapping of tensor name to tensor (a state_dict), got {type(params).__name__}"
        )
    result: dict[str, np.ndarray] = {}
    for name, value in params.items():
        validate_name(name)
        array = to_numpy(value, name)
        try:
            dtype_name(array.dtype)
        except TensorError as exc:
            raise TensorError(f"tensor {name!r}: {exc}") from None
        result[name] = array
    return result
