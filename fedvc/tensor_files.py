"""Reading and writing model files (safetensors and npz) without ever unpickling.

Model files arrive from other participants, so they are treated as hostile input: a pickle
can run arbitrary code when loaded, which is why PyTorch ``.pt`` files are refused outright
and ``.npz`` archives are opened with ``allow_pickle=False``. The safetensors reader is our
own: it validates the whole header before touching the data, memory-maps the file and hands
back read-only zero-copy views, so a multi-gigabyte model costs no copy and a malformed file
fails with one ``TensorFileError`` instead of a crash or a stray exception type. Writers are
atomic (temporary file, fsync, rename): a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import secrets
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeAlias

import numpy as np

from fedvc.errors import FedvcError
from fedvc.tensors import (
    ParamMap,
    TensorError,
    as_param_map,
    byte_length,
    dtype_name,
    numpy_dtype,
    tensor_bytes,
    tensor_from_bytes,
    validate_name,
    validate_shape,
)

PathLike: TypeAlias = str | os.PathLike[str]

MAX_HEADER_BYTES = 100_000_000
"""Largest safetensors JSON header accepted (the official library's limit)."""

SAFETENSORS_DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "U32": "uint32",
    "I32": "int32",
    "U64": "uint64",
    "I64": "int64",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
}
"""safetensors dtype code → fedvc canonical dtype name."""

_CODES = {name: code for code, name in SAFETENSORS_DTYPES.items()}
_METADATA_KEY = "__metadata__"
MODEL_SUFFIXES = (".safetensors", ".npz")
"""The model file formats fedvc reads and writes (any case)."""


def is_model_path(path: PathLike) -> bool:
    """Whether ``path`` names a model file by its suffix (it need not exist)."""
    return Path(path).suffix.lower() in MODEL_SUFFIXES


class TensorFileError(FedvcError):
    """A model file cannot be read or written: wrong format, corrupt, or unsupported content."""


class _Entry(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def load_params(path: PathLike) -> dict[str, np.ndarray]:
    """Read a model file, choosing the format by its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix == ".npz":
        return read_npz(path)
    raise TensorFileError(_unsupported_suffix(path, "read"))


def save_params(
    params: ParamMap, path: PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write a model file atomically, choosing the format by its suffix.

    ``metadata`` is only representable in safetensors; asking for it with npz is an error
    rather than a silent loss.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".safetensors":
        write_safetensors(params, path, metadata)
    elif suffix == ".npz":
        if metadata:
            raise TensorFileError(
                f"{os.fspath(path)}: npz files cannot carry metadata; "
                "save to a .safetensors file or drop the metadata"
            )
        write_npz(params, path)
    else:
        raise TensorFileError(_unsupported_suffix(path, "write"))


@contextmanager
def _os_errors(verb: str, path: PathLike) -> Iterator[None]:
    """Report the OS failing us (missing file, permissions, full disk) as a TensorFileError."""
    try:
        yield
    except OSError as exc:
        raise TensorFileError(f"cannot {verb} {os.fspath(path)}: {exc}") from exc


def _unsupported_suffix(path: PathLike, verb: str) -> str:
    return (
        f"cannot {verb} {os.fspath(path)}: unsupported suffix {Path(path).suffix!r}; "
        f"expected one of {', '.join(MODEL_SUFFIXES)}. PyTorch pickles (.pt, .pth, .bin, .ckpt) "
        "are never read because unpickling can run arbitrary code: convert them once, in a "
        "trusted environment, with fedvc.torch_io.state_dict_to_params and save_params "
        "(or safetensors.torch.save_file)"
    )


def read_safetensors(path: PathLike) -> dict[str, np.ndarray]:
    """Read a safetensors file as read-only arrays backed by a memory map of the file.

    Every array keeps the map alive through its buffer chain, so the arrays stay valid after
    this function returns and the map is released only when the last array is collected.
    The file must not be truncated in place while arrays are alive (the OS would fault);
    fedvc never rewrites files in place, it replaces them.
    """
    where = os.fspath(path)
    with _os_errors("read", path), open(path, "rb") as file:
        entries, _, data_start = _read_header(where, file)
        if not entries:
            return {}
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    buffer_size = entries[-1].end  # header validation proved the tensors tile the buffer
    if len(mapped) != data_start + buffer_size:
        mapped.close()
        raise TensorFileError(f"{where} changed size while being read; retry once it is complete")
    view = memoryview(mapped)
    result: dict[str, np.ndarray] = {}
    try:
        for entry in sorted(entries, key=lambda e: e.name):
            chunk = view[data_start + entry.begin : data_start + entry.end]
            result[entry.name] = tensor_from_bytes(chunk, entry.dtype, entry.shape)
    except (TensorError, ValueError) as exc:  # numpy refusing a shape the header check let by
        raise TensorFileError(f"{where}: tensor {entry.name!r}: {exc}") from exc
    return result


def read_safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (empty if absent), after full validation."""
    with _os_errors("read", path), open(path, "rb") as file:
        return _read_header(os.fspath(path), file)[1]


def _read_header(where: str, file: IO[bytes]) -> tuple[list[_Entry], dict[str, str], int]:
    """Parse and completely validate a header: (entries by offset, metadata, data start)."""
    size = os.fstat(file.fileno()).st_size
    if size < 8:
        raise TensorFileError(
            f"{where} is {size} bytes, too short for a safetensors file (at least 8); "
            "it is truncated or not safetensors"
        )
    header_len = int.from_bytes(file.read(8), "little")
    if header_len > MAX_HEADER_BYTES:
        raise TensorFileError(
            f"{where}: header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit; "
            "the file is corrupt or not safetensors"
        )
    if 8 + header_len > size:
        raise TensorFileError(
            f"{where}: header length {header_len} is larger than the {size - 8} bytes after "
            "the length field; the file is truncated or not safetensors"
        )
    raw = file.read(header_len)
    if len(raw) != header_len:
        raise TensorFileError(f"{where} shrank while being read; retry once it is complete")
    try:
        header = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
        raise TensorFileError(f"{where}: header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise TensorFileError(
            f"{where}: header must be a JSON object, found {type(header).__name__}"
        )
    metadata = _check_metadata(where, header.pop(_METADATA_KEY, {}))
    entries = sorted(
        (_parse_entry(where, name, info) for name, info in header.items()),
        key=lambda e: (e.begin, e.end),
    )
    buffer_size = size - 8 - header_len
    cursor = 0
    for entry in entries:
        if entry.end > buffer_size:
            raise TensorFileError(
                f"{where}: tensor {entry.name!r} ends at byte {entry.end} but the data buffer "
                f"holds {buffer_size} bytes; the file is truncated"
            )
        if entry.begin != cursor:
            problem = "overlaps the previous tensor" if entry.begin < cursor else "leaves a gap"
            raise TensorFileError(
                f"{where}: tensor {entry.name!r} starts at byte {entry.begin}, expected "
                f"{cursor}: it {problem}; tensors must tile the data buffer exactly"
            )
        cursor = entry.end
    if cursor != buffer_size:
        raise TensorFileError(
            f"{where}: tensors cover {cursor} of the {buffer_size} data bytes; the trailing "
            "bytes belong to no tensor, so the file is corrupt"
        )
    return entries, metadata, 8 + header_len


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(token: str) -> None:
    raise ValueError(f"{token} is not valid JSON")


def _check_metadata(where: str, metadata: object) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise TensorFileError(
            f"{where}: {_METADATA_KEY} must be an object of string values, "
            f"found {type(metadata).__name__}"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TensorFileError(
                f"{where}: metadata {key!r} → {value!r}: safetensors metadata keys and values "
                "must be strings (encode other values with json.dumps)"
            )
        try:
            (key + value).encode("utf-8")
        except UnicodeEncodeError:
            raise TensorFileError(f"{where}: metadata {key!r} is not valid Unicode") from None
    return dict(metadata)


def _parse_entry(where: str, name: str, info: object) -> _Entry:
    try:
        validate_name(name)
    except TensorError as exc:
        raise TensorFileError(f"{where}: {exc}") from exc
    if not isinstance(info, dict):
        raise TensorFileError(
            f"{where}: tensor {name!r} must map to an object with dtype, shape and "
            f"data_offsets, found {type(info).__name__}"
        )
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in info]
    if missing:
        raise TensorFileError(f"{where}: tensor {name!r} lacks {', '.join(missing)}")
    code = info["dtype"]
    if isinstance(code, str) and (code == "BF16" or code.startswith("F8")):
        raise TensorFileError(
            f"{where}: tensor {name!r} has dtype {code}: bfloat16/float8 not supported yet; "
            "convert to float32 before saving (for example tensor.float())"
        )
    if not isinstance(code, str) or code not in SAFETENSORS_DTYPES:
        raise TensorFileError(
            f"{where}: tensor {name!r} has unknown dtype {code!r}; "
            f"supported: {', '.join(SAFETENSORS_DTYPES)}"
        )
    dtype = SAFETENSORS_DTYPES[code]
    try:
        shape = validate_shape(info["shape"])
    except TensorError as exc:
        raise TensorFileError(f"{where}: tensor {name!r}: {exc}") from exc
    offsets = info["data_offsets"]
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int and o >= 0 for o in offsets)
    ):
        raise TensorFileError(
            f"{where}: tensor {name!r} data_offsets must be two non-negative integers "
            f"[begin, end], found {offsets!r}"
        )
    begin, end = offsets
    if end < begin:
        raise TensorFileError(f"{where}: tensor {name!r} data_offsets {offsets} end before begin")
    expected = byte_length(dtype, shape)
    if end - begin != expected:
        raise TensorFileError(
            f"{where}: tensor {name!r} of dtype {code} and shape {list(shape)} needs "
            f"{expected} bytes but data_offsets {offsets} span {end - begin}"
        )
    if expected == 0 and math.prod(s for s in shape if s) * numpy_dtype(dtype).itemsize >= 2**63:
        raise TensorFileError(f"{where}: tensor {name!r} shape {list(shape)} is too large")
    return _Entry(name, dtype, shape, begin, end)


def write_safetensors(
    params: ParamMap, path: PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``params`` as safetensors, streaming one tensor at a time.

    Tensors are laid out in sorted-name order so equal models give byte-identical files;
    the header is space-padded to a multiple of 8 bytes, as the official writer does.
    Invalid names or dtypes raise ``TensorError`` before anything touches the disk.
    """
    where = os.fspath(path)
    arrays = as_param_map(params)
    if _METADATA_KEY in arrays:
        raise TensorError(f"{where}: {_METADATA_KEY!r} is reserved by safetensors; rename it")
    header: dict[str, object] = {}
    if metadata is not None:
        header[_METADATA_KEY] = _check_metadata(where, metadata)
    offset = 0
    for name in sorted(arrays):
        array = arrays[name]
        dtype = dtype_name(array.dtype)
        size = byte_length(dtype, array.shape)
        header[name] = {
            "dtype": _CODES[dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)

    def write(file: IO[bytes]) -> None:
        file.write(len(encoded).to_bytes(8, "little"))
        file.write(encoded)
        for name in sorted(arrays):
            file.write(tensor_bytes(arrays[name]))

    _atomic_write(path, write)


def read_npz(path: PathLike) -> dict[str, np.ndarray]:
    """Read an ``.npz`` archive of plain arrays; object (pickled) arrays are refused."""
    where = os.fspath(path)
    with _os_errors("read", path), open(path, "rb") as file:
        signature = file.read(4)
    if signature not in (b"PK\x03\x04", b"PK\x05\x06"):
        # np.load would take any non-zip, non-.npy file for a pickle and say so, misleadingly
        raise TensorFileError(f"{where} is not an .npz archive: it does not start like a zip file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            entries = archive.zip.namelist()
            raw: dict[str, np.ndarray] = {}
            for entry in entries:  # look up raw entry names: "x.npy" is ambiguous otherwise
                name = entry.removesuffix(".npy")
                if name in raw:
                    raise TensorFileError(f"{where}: tensor {name!r} appears twice")
                value = archive[entry]
                if not isinstance(value, np.ndarray):
                    raise TensorFileError(f"{where}: entry {entry!r} is not a .npy array")
                raw[name] = value
    except TensorFileError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise TensorFileError(
                f"{where} holds an object array (pickled Python objects); fedvc never unpickles. "
                "Save plain numeric arrays instead"
            ) from exc
        raise TensorFileError(f"{where} is not a valid .npz archive: {exc}") from exc
    except Exception as exc:  # zipfile and numpy raise many types on corrupt archives
        raise TensorFileError(f"{where} is not a valid .npz archive: {exc!r}") from exc
    try:
        return as_param_map(raw)
    except TensorError as exc:
        raise TensorFileError(f"{where}: {exc}") from exc


def write_npz(params: ParamMap, path: PathLike) -> None:
    """Write ``params`` as an uncompressed ``.npz`` archive, atomically.

    This is ``np.savez`` done by hand (same zip layout, ``<name>.npy`` entries), because
    ``np.savez(file, **params)`` breaks on tensors named ``file`` or ``allow_pickle``.
    """
    arrays = as_param_map(params)

    def write(file: IO[bytes]) -> None:
        with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED) as archive:
            for name in sorted(arrays):
                with archive.open(name + ".npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array(entry, arrays[name], allow_pickle=False)

    _atomic_write(path, write)


def _atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary sibling file, fsync it, then rename it over ``path``."""
    target = Path(path)
    with _os_errors("write", path):
        while True:
            temp = target.with_name(f".{target.name[:200]}.{secrets.token_hex(8)}.tmp")
            try:  # mode 0o666 lets the umask decide the final permissions, as open() would
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
        try:
            with os.fdopen(fd, "wb") as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, target)
        except BaseException:
            with suppress(OSError):
                os.unlink(temp)
            raise
    with suppress(OSError):  # make the rename durable; not possible on every platform
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
