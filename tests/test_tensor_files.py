"""Tests for fedvc.tensor_files: our safetensors reader/writer, npz, atomic saves."""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import mmap
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
import safetensors.numpy as st_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedvc import tensor_files
from fedvc.tensor_files import (
    TensorFileError,
    load_params,
    read_npz,
    read_safetensors,
    read_safetensors_metadata,
    save_params,
    write_npz,
    write_safetensors,
)
from fedvc.tensors import DTYPES, TensorError


def sample_params() -> dict[str, np.ndarray]:
    """One tensor of every canonical dtype, plus a scalar and empty tensors."""
    rng = np.random.default_rng(7)
    params: dict[str, np.ndarray] = {}
    for name, dtype in DTYPES.items():
        if dtype.kind == "b":
            values = rng.integers(0, 2, size=(3, 5)).astype(bool)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            values = rng.integers(info.min, info.max, size=(3, 5), dtype=dtype, endpoint=True)
        else:
            values = rng.standard_normal((3, 5)).astype(dtype)
        params[f"layer.{name}"] = values.astype(dtype)
    params["scalar"] = np.array(2.5, dtype="<f8")
    params["empty"] = np.zeros((0, 4), dtype="<f4")
    params["empty.int"] = np.zeros((2, 0), dtype="<i8")
    params["odd.u8"] = np.arange(7, dtype="u1")  # odd length: later tensors are unaligned
    return params


def assert_same(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        got = actual[name]
        assert got.dtype == value.dtype, name
        assert got.shape == value.shape, name
        assert got.tobytes() == value.tobytes(), name


def write_raw(path: Path, header: object, data: bytes = b"", pad: bool = True) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_round_trip_every_dtype(tmp_path: Path, suffix: str) -> None:
    params = sample_params()
    path = tmp_path / f"model{suffix}"
    save_params(params, path)
    assert_same(load_params(path), params)


def test_safetensors_output_is_deterministic_and_padded(tmp_path: Path) -> None:
    params = sample_params()
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_safetensors(params, first, {"round": "3"})
    write_safetensors(dict(reversed(list(params.items()))), second, {"round": "3"})
    raw = first.read_bytes()
    assert raw == second.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert header_len % 8 == 0
    header = json.loads(raw[8 : 8 + header_len])
    names = [k for k in header if k != "__metadata__"]
    assert names == sorted(params)
    offsets = [header[name]["data_offsets"] for name in names]
    assert offsets[0][0] == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(offsets))


def test_non_canonical_inputs_are_written_canonically(tmp_path: Path) -> None:
    big_endian = np.arange(12, dtype=">i4").reshape(3, 4)
    strided = np.arange(20, dtype="<f8").reshape(4, 5)[:, ::2]
    path = tmp_path / "m.safetensors"
    array_like: Any = [[1.5, 2.5]]  # as_param_map accepts array-likes too
    write_safetensors({"be": big_endian, "strided": strided, "list": array_like}, path)
    loaded = read_safetensors(path)
    assert loaded["be"].dtype == np.dtype("<i4")
    np.testing.assert_array_equal(loaded["be"], big_endian)
    np.testing.assert_array_equal(loaded["strided"], strided)
    np.testing.assert_array_equal(loaded["list"], [[1.5, 2.5]])


def test_metadata_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    meta = {"format": "np", "note": "ünïcode ✓", "empty": ""}
    save_params({"w": np.ones(3, "<f4")}, path, meta)
    assert read_safetensors_metadata(path) == meta
    write_safetensors({"w": np.ones(3, "<f4")}, path)
    assert read_safetensors_metadata(path) == {}


def test_empty_model(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    write_safetensors({}, path)
    assert read_safetensors(path) == {}
    assert st_numpy.load_file(str(path)) == {}
    write_npz({}, tmp_path / "empty.npz")
    assert read_npz(tmp_path / "empty.npz") == {}


def test_only_zero_size_tensors(tmp_path: Path) -> None:
    path = tmp_path / "zeros.safetensors"
    write_safetensors({"a": np.zeros((0,), "<f4"), "b": np.zeros((3, 0), "u1")}, path)
    loaded = read_safetensors(path)
    assert loaded["a"].shape == (0,) and loaded["b"].shape == (3, 0)


def test_arrays_are_read_only_mmap_views_that_outlive_the_call(tmp_path: Path) -> None:
    params = sample_params()
    path = tmp_path / "m.safetensors"
    write_safetensors(params, path)
    loaded = read_safetensors(path)
    gc.collect()
    weights = loaded["layer.float32"]
    assert not weights.flags.writeable
    with pytest.raises(ValueError):
        weights[0, 0] = 1.0
    base: Any = weights
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)  # zero-copy
    del loaded
    gc.collect()
    assert weights.tobytes() == params["layer.float32"].tobytes()


def test_npz_tricky_names(tmp_path: Path) -> None:
    params = {
        "file": np.ones(2, "<f4"),
        "allow_pickle": np.zeros(2, "<f4"),
        "x": np.array([1], "<i8"),
        "x.npy": np.array([2], "<i8"),
        "a/b": np.array([3], "<i8"),
    }
    path = tmp_path / "m.npz"
    write_npz(params, path)
    assert_same(read_npz(path), params)


# --------------------------------------------------------------------------- interop


def test_official_library_reads_our_files(tmp_path: Path) -> None:
    params = sample_params()
    path = tmp_path / "ours.safetensors"
    meta = {"framework": "fedvc", "round": "12"}
    write_safetensors(params, path, meta)
    assert_same(st_numpy.load_file(str(path)), params)
    with safetensors.safe_open(str(path), framework="np") as handle:
        assert handle.metadata() == meta


def test_we_read_official_files(tmp_path: Path) -> None:
    params = sample_params()
    path = tmp_path / "official.safetensors"
    meta = {"framework": "safetensors", "k": "v"}
    st_numpy.save_file(params, str(path), metadata=meta)
    assert_same(read_safetensors(path), params)
    assert read_safetensors_metadata(path) == meta


# --------------------------------------------------------------------------- malformed


def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.safetensors"
    write_safetensors({"a": np.arange(4, dtype="<f4"), "b": np.arange(3, dtype="<i2")}, path)
    return path


def test_truncated_data(tmp_path: Path) -> None:
    path = good_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(TensorFileError, match="truncated"):
        read_safetensors(path)


def test_truncated_header(tmp_path: Path) -> None:
    path = good_file(tmp_path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(TensorFileError, match="larger than"):
        read_safetensors(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(TensorFileError, match="too short"):
        read_safetensors(path)


def test_header_length_flipped(tmp_path: Path) -> None:
    path = good_file(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[7] = 0xFF  # most significant byte of the little-endian length
    path.write_bytes(bytes(raw))
    with pytest.raises(TensorFileError, match="exceeds"):
        read_safetensors(path)
    raw = bytearray(path.read_bytes())
    raw[:8] = struct.pack("<Q", 1_000)
    path.write_bytes(bytes(raw))
    with pytest.raises(TensorFileError, match="larger than"):
        read_safetensors(path)


ENTRY_A = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("header", "data", "fragment"),
    [
        (
            {"a": ENTRY_A, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
            12,
            "overlaps",
        ),
        ({"a": ENTRY_A, "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, 16, "gap"),
        ({"a": ENTRY_A}, 12, "trailing"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "needs 12 bytes"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, 8, "end before begin"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8]}}, 8, "data_offsets"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, 8, "data_offsets"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8, "non-negative"),
        ({"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, 8, "shape"),
        ({"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, 8, "shape"),
        ({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, 8, "unknown dtype"),
        ({"a": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}}, 8, "unknown dtype"),
        ({"a": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}, 8, "bfloat16/float8"),
        (
            {"a": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}},
            8,
            "convert to float32",
        ),
        ({"a": {"shape": [2], "data_offsets": [0, 8]}}, 8, "lacks dtype"),
        ({"a": [1, 2]}, 8, "must map to an object"),
        ({"": ENTRY_A}, 8, "non-empty"),
        ({"a\nb": ENTRY_A}, 8, "control characters"),
        ({"__metadata__": {"k": 1}, "a": ENTRY_A}, 8, "must be strings"),
        ({"__metadata__": ["k"], "a": ENTRY_A}, 8, "__metadata__"),
        ([1, 2], 0, "JSON object"),
        ({"a": {"dtype": "F32", "shape": [0, 2**62], "data_offsets": [0, 0]}}, 0, "too large"),
    ],
)
def test_malformed_headers(tmp_path: Path, header: object, data: int, fragment: str) -> None:
    path = write_raw(tmp_path / "bad.safetensors", header, bytes(data))
    with pytest.raises(TensorFileError, match=fragment):
        read_safetensors(path)


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (b'{"a": ', "not valid UTF-8 JSON"),
        (b"\xff\xfe{}", "not valid UTF-8 JSON"),
        (b'{"a": NaN}', "not valid UTF-8 JSON"),
        (b'{"x": {}, "x": {}}', "duplicate"),
        (b"[" * 100_000, "not valid UTF-8 JSON"),
        (b"", "not valid UTF-8 JSON"),
    ],
)
def test_bad_json(tmp_path: Path, header: bytes, fragment: str) -> None:
    path = write_raw(tmp_path / "bad.safetensors", header, pad=False)
    with pytest.raises(TensorFileError, match=fragment):
        read_safetensors(path)
    with pytest.raises(TensorFileError, match=fragment):
        read_safetensors_metadata(path)


def test_missing_file_is_a_tensor_file_error(tmp_path: Path) -> None:
    with pytest.raises(TensorFileError, match="cannot read"):
        read_safetensors(tmp_path / "nope.safetensors")
    with pytest.raises(TensorFileError, match="cannot read"):
        read_npz(tmp_path / "nope.npz")


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(blob=st.binary(max_size=256))
def test_arbitrary_bytes_never_escape(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(blob)
    with contextlib.suppress(TensorFileError):
        read_safetensors(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
entry_values = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "U8", "BOOL", "I64", "BF16", "X"]) | json_values,
        "shape": st.lists(st.integers(-1, 5), max_size=3) | json_values,
        "data_offsets": st.lists(st.integers(-1, 40), min_size=2, max_size=2) | json_values,
    }
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.dictionaries(
        st.sampled_from(["a", "b", "__metadata__", "", "c\x00"]) | st.text(max_size=4),
        entry_values | json_values,
        max_size=4,
    ),
    data=st.binary(max_size=48),
)
def test_structured_garbage_never_escapes(
    tmp_path: Path, header: dict[str, Any], data: bytes
) -> None:
    path = write_raw(tmp_path / "fuzz.safetensors", header, data)
    try:
        result = read_safetensors(path)
    except TensorFileError:
        return
    covered = sum(array.nbytes for array in result.values())
    assert covered == len(data)  # a valid result accounts for every data byte


# --------------------------------------------------------------------------- npz


class Boom:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


def test_npz_object_array_rejected_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.npz"
    objects = np.empty(1, dtype=object)
    objects[0] = Boom(str(marker))
    np.savez(path, w=np.ones(2), evil=objects)
    with pytest.raises(TensorFileError, match="object array"):
        load_params(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage, not a zip",
        b"PK\x03\x04" + b"\x00" * 40,
        b"\x93NUMPY" + b"\x00" * 40,
    ],
)
def test_npz_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(TensorFileError):
        read_npz(path)


def test_npz_truncated_and_foreign_entries(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    write_npz(sample_params(), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TensorFileError, match=r"not a valid \.npz"):
        read_npz(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(TensorFileError, match=r"not a \.npy array"):
        read_npz(path)
    np.savez(path, s=np.array(["text"]))
    with pytest.raises(TensorFileError, match="unsupported dtype"):
        read_npz(path)


# --------------------------------------------------------------------------- dispatch, atomicity


@pytest.mark.parametrize("name", ["model.pt", "model.pth", "model.bin", "model"])
def test_unsupported_suffixes(tmp_path: Path, name: str) -> None:
    with pytest.raises(TensorFileError, match=r"\.safetensors, \.npz.*never read"):
        load_params(tmp_path / name)
    with pytest.raises(TensorFileError, match="unsupported suffix"):
        save_params({"w": np.ones(1)}, tmp_path / name)


def test_suffix_is_case_insensitive_and_npz_refuses_metadata(tmp_path: Path) -> None:
    save_params({"w": np.ones(2, "<f4")}, tmp_path / "M.SafeTensors")
    assert load_params(tmp_path / "M.SafeTensors")["w"].tolist() == [1.0, 1.0]
    with pytest.raises(TensorFileError, match="metadata"):
        save_params({"w": np.ones(2)}, tmp_path / "m.npz", {"k": "v"})


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    with pytest.raises(TensorError, match="unsupported dtype"):
        write_safetensors({"w": np.ones(2, dtype=np.complex64)}, path)
    with pytest.raises(TensorError, match="reserved"):
        write_safetensors({"__metadata__": np.ones(2)}, path)
    with pytest.raises(TensorFileError, match="must be strings"):
        write_safetensors({"w": np.ones(2)}, path, {"k": 3})  # type: ignore[dict-item]
    assert not path.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_failed_write_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    path = tmp_path / f"m{suffix}"
    save_params({"old": np.ones(3, "<f4")}, path)
    before = path.read_bytes()

    def crash(*_: object, **__: object) -> object:
        raise RuntimeError("simulated crash mid-write")

    if suffix == ".safetensors":
        monkeypatch.setattr(tensor_files, "tensor_bytes", crash)
    else:
        monkeypatch.setattr(np.lib.format, "write_array", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        save_params({"new": np.zeros(1000, "<f4")}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_unwritable_destination(tmp_path: Path) -> None:
    with pytest.raises(TensorFileError, match="cannot write"):
        save_params({"w": np.ones(1)}, tmp_path / "missing-dir" / "m.safetensors")
