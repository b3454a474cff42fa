"""Tests for fedvc.diff: statuses, exact metrics, chunking, NaN rules, deltas, JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedvc import diff as diff_module
from fedvc.diff import DiffError, ParamDiff, apply_delta, delta, diff_params, norm
from fedvc.errors import FedvcError
from fedvc.tensors import DTYPES, TensorError


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "fc.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "fc.bias": rng.standard_normal(4).astype(np.float64),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "mask": np.array([True, False, True]),
    }


def test_identical_maps_are_all_unchanged() -> None:
    a = _model()
    b = {name: array.copy() for name, array in a.items()}
    result = diff_params(a, b)
    assert result.is_identical
    assert result.differences == ()
    assert [t.name for t in result.tensors] == sorted(a)
    assert all(t.status == "unchanged" for t in result.tensors)
    assert result.counts == {"unchanged": 4, "changed": 0, "added": 0, "removed": 0, "retyped": 0}
    assert result.total_l2 == 0.0
    assert result.total_relative == 0.0
    assert result.changed_fraction == 0.0
    assert result.cosine == pytest.approx(1.0)
    fc = result.get("fc.weight")
    assert fc is not None
    assert (fc.l2, fc.changed_fraction, fc.relative) == (0.0, 0.0, 0.0)
    assert fc.cosine == pytest.approx(1.0)


def test_known_change_gives_exact_numbers() -> None:
    result = diff_params({"w": np.array([3.0, 4.0])}, {"w": np.array([0.0, 0.0])})
    (w,) = result.tensors
    assert w.status == "changed"
    assert w.l2 == 5.0
    assert w.relative == 1.0
    assert w.changed_fraction == 1.0
    assert w.cosine is None  # ‖b‖ = 0: the angle is undefined
    assert (w.old_dtype, w.new_dtype, w.old_shape, w.new_shape, w.numel) == (
        "float64",
        "float64",
        (2,),
        (2,),
        2,
    )
    assert not result.is_identical
    assert result.total_l2 == 5.0
    assert result.total_relative == 1.0


def test_sign_flip_has_cosine_minus_one() -> None:
    a = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    (w,) = diff_params({"w": a}, {"w": -a}).tensors
    assert w.cosine == pytest.approx(-1.0)
    assert w.relative == pytest.approx(2.0)
    assert w.changed_fraction == 1.0


def test_partial_change_fraction_and_model_totals() -> None:
    a = {"x": np.zeros(4, dtype=np.float32), "y": np.array([1, 2], dtype=np.int32)}
    b = {"x": np.array([0, 0, 0, 2], dtype=np.float32), "y": np.array([1, 2], dtype=np.int32)}
    result = diff_params(a, b)
    x = result.get("x")
    assert x is not None and x.changed_fraction == 0.25 and x.l2 == 2.0
    assert x.relative is None  # ‖a‖ = 0
    assert result.changed_elements == 1 and result.compared_elements == 6
    assert result.changed_fraction == pytest.approx(1 / 6)
    assert result.total_l2 == pytest.approx(2.0)
    assert result.total_relative == pytest.approx(2.0 / math.sqrt(5.0))
    assert result.cosine == pytest.approx(5.0 / (math.sqrt(5.0) * 3.0))


def test_added_removed_retyped_are_detected() -> None:
    a = {
        "gone": np.ones(3, dtype=np.float32),
        "dtype": np.ones(2, dtype=np.float32),
        "shape": np.ones(6, dtype=np.float32),
        "same": np.ones(2, dtype=np.float32),
    }
    b = {
        "new": np.ones((2, 2), dtype=np.float16),
        "dtype": np.ones(2, dtype=np.float64),
        "shape": np.ones((2, 3), dtype=np.float32),
        "same": np.ones(2, dtype=np.float32),
    }
    result = diff_params(a, b)
    by_name = {t.name: t for t in result.tensors}
    assert by_name["gone"].status == "removed"
    assert (by_name["gone"].numel, by_name["gone"].new_dtype) == (3, None)
    assert by_name["new"].status == "added"
    assert (by_name["new"].numel, by_name["new"].new_shape, by_name["new"].old_shape) == (
        4,
        (2, 2),
        None,
    )
    assert by_name["dtype"].status == "retyped"
    assert (by_name["dtype"].old_dtype, by_name["dtype"].new_dtype) == ("float32", "float64")
    assert by_name["shape"].status == "retyped"
    assert (by_name["shape"].old_shape, by_name["shape"].new_shape) == ((6,), (2, 3))
    for name in ("gone", "new", "dtype", "shape"):
        t = by_name[name]
        assert (t.l2, t.relative, t.cosine, t.changed_fraction) == (None, None, None, None)
    assert result.counts == {"unchanged": 1, "changed": 0, "added": 1, "removed": 1, "retyped": 2}
    assert result.compared_elements == 2  # only "same" is comparable
    assert {t.name for t in result.differences} == {"gone", "new", "dtype", "shape"}


def test_known_equal_skips_comparison_and_is_trusted() -> None:
    a = {"w": np.array([3.0, 4.0]), "v": np.array([1.0, 1.0])}
    b = {"w": np.array([-3.0, 7.0]), "v": np.array([1.0, 2.0])}  # both really differ
    asked: list[str] = []

    def known_equal(name: str) -> bool:
        asked.append(name)
        return name == "w"

    result = diff_params(a, b, known_equal=known_equal)
    w, v = result.get("w"), result.get("v")
    assert w is not None and v is not None
    # The contract: the caller vouches for "w", so its contents are not compared.
    assert w.status == "unchanged"
    assert (w.l2, w.changed_fraction, w.relative) == (0.0, 0.0, 0.0)
    assert w.cosine == pytest.approx(1.0)
    assert v.status == "changed"
    assert sorted(asked) == ["v", "w"]
    # ‖a‖ of the skipped tensor still counts in the model totals: ‖a‖² = 25 + 2.
    assert result.total_l2 == 1.0
    assert result.total_relative == pytest.approx(1.0 / math.sqrt(27.0))


def test_known_equal_is_not_asked_for_unmatched_tensors() -> None:
    asked: list[str] = []
    a = {"r": np.zeros(2, dtype=np.float32), "gone": np.zeros(1)}
    b = {"r": np.zeros(2, dtype=np.float64), "new": np.zeros(1)}
    diff_params(a, b, known_equal=lambda name: asked.append(name) or True)
    assert asked == []


def test_known_equal_zero_tensor_has_no_cosine() -> None:
    (z,) = diff_params({"z": np.zeros(3)}, {"z": np.zeros(3)}, known_equal=lambda _: True).tensors
    assert z.status == "unchanged" and z.cosine is None and z.l2 == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64, np.uint8, np.bool_])
def test_chunked_numbers_match_direct_float64(dtype: type) -> None:
    rng = np.random.default_rng(1)
    shape = (37, 29)  # 1073 entries: many chunks of 100 and a ragged last one
    if dtype is np.bool_:
        a, b = rng.random(shape) < 0.5, rng.random(shape) < 0.5
    elif np.issubdtype(dtype, np.integer):
        a, b = rng.integers(0, 200, shape).astype(dtype), rng.integers(0, 200, shape).astype(dtype)
    else:
        a = rng.standard_normal(shape).astype(dtype)
        b = (a + rng.standard_normal(shape) * (rng.random(shape) < 0.3)).astype(dtype)
    b_view = np.asfortranarray(b)  # non-contiguous in C order: exercises the copying path
    chunked = diff_params({"t": a}, {"t": b_view}, chunk_elements=100).tensors[0]
    whole = diff_params({"t": a}, {"t": b}, chunk_elements=10**7).tensors[0]
    fa, fb = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    assert chunked.l2 == pytest.approx(np.linalg.norm(fb - fa), rel=1e-12)
    assert chunked.relative == pytest.approx(np.linalg.norm(fb - fa) / np.linalg.norm(fa))
    cosine = fa @ fb / (np.linalg.norm(fa) * np.linalg.norm(fb))
    assert chunked.cosine == pytest.approx(cosine, rel=1e-12)
    assert chunked.changed_fraction == np.count_nonzero(a != b) / a.size
    assert chunked.l2 == pytest.approx(whole.l2, rel=1e-12)
    assert chunked.changed_fraction == whole.changed_fraction


def test_module_chunk_constant_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    a = np.arange(10, dtype=np.float64)
    b = a.copy()
    b[-1] = 0.0  # the only change sits in the last chunk
    monkeypatch.setattr(diff_module, "CHUNK_ELEMENTS", 3)
    (t,) = diff_params({"t": a}, {"t": b}).tensors
    assert t.l2 == 9.0 and t.changed_fraction == 0.1
    assert norm({"t": a}) == pytest.approx(math.sqrt(float(a @ a)))


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "100"])
def test_bad_chunk_size_is_rejected(size: object) -> None:
    with pytest.raises(DiffError, match="chunk_elements must be a positive integer"):
        diff_params({}, {}, chunk_elements=size)  # type: ignore[arg-type]
    with pytest.raises(DiffError, match="chunk_elements"):
        norm({"t": np.ones(3)}, chunk_elements=size)  # type: ignore[arg-type]


def test_apply_delta_works_in_a_float_for_every_delta_dtype() -> None:
    # a float base promoted with any supported delta dtype is a float, never an integer
    base = {"t": np.array([1.5, -2.0], np.float16)}
    for name, dtype in DTYPES.items():
        delta = {"t": np.array([1, 0], dtype)}
        out = apply_delta(base, delta, scale=2.0)["t"]
        assert out.dtype == np.float16 and out.tolist() == [3.5, -2.0], name


def test_nan_at_same_place_is_unchanged() -> None:
    a = np.array([1.0, np.nan, 3.0, np.inf], dtype=np.float32)
    (t,) = diff_params({"t": a}, {"t": a.copy()}).tensors
    assert t.status == "unchanged"
    assert t.l2 == 0.0 and t.changed_fraction == 0.0
    assert t.relative is None and t.cosine is None  # ‖a‖ is not a number


def test_nan_elsewhere_is_a_change_without_finite_numbers() -> None:
    a = np.array([1.0, np.nan, 3.0])
    b = np.array([1.0, 2.0, np.nan])
    result = diff_params({"t": a}, {"t": b})
    (t,) = result.tensors
    assert t.status == "changed" and t.changed_fraction == pytest.approx(2 / 3)
    assert (t.l2, t.relative, t.cosine) == (None, None, None)
    assert result.total_l2 is None
    json.dumps(result.to_json(), allow_nan=False)


def test_signed_zero_is_a_bit_change_of_size_zero() -> None:
    (t,) = diff_params({"t": np.array([0.0, 1.0])}, {"t": np.array([-0.0, 1.0])}).tensors
    assert t.status == "changed" and t.changed_fraction == 0.5 and t.l2 == 0.0


def test_byte_order_does_not_count_as_change() -> None:
    a = np.array([1.5, -2.0, 3.25], dtype="<f4")
    (t,) = diff_params({"t": a}, {"t": a.astype(">f4")}).tensors
    assert t.status == "unchanged" and t.new_dtype == "float32"


def test_unsupported_dtype_names_the_tensor() -> None:
    with pytest.raises(TensorError, match="'c' in b"):
        diff_params({"c": np.zeros(2)}, {"c": np.zeros(2, dtype=np.complex64)})


def test_to_json_is_strict_json() -> None:
    a = {"w": np.array([3.0, 4.0]), "z": np.zeros(2), "gone": np.ones(1, dtype=np.int8)}
    b = {"w": np.array([0.0, 0.0]), "z": np.zeros(2), "new": np.ones((1, 2), dtype=np.bool_)}
    data = diff_params(a, b).to_json()
    text = json.dumps(data, allow_nan=False)
    back = json.loads(text)
    assert back["summary"]["counts"]["added"] == 1
    assert back["summary"]["total_l2"] == 5.0
    entries = {entry["name"]: entry for entry in back["tensors"]}
    assert entries["new"]["new_shape"] == [1, 2] and entries["new"]["old_shape"] is None
    assert entries["z"]["cosine"] is None and entries["gone"]["l2"] is None
    assert entries["w"]["status"] == "changed"


def test_empty_maps() -> None:
    result = diff_params({}, {})
    assert isinstance(result, ParamDiff) and result.is_identical
    assert result.changed_fraction is None and result.cosine is None
    json.dumps(result.to_json(), allow_nan=False)


def test_norm_is_global_l2() -> None:
    params = {"a": np.array([3.0], dtype=np.float16), "b": np.array([[4]], dtype=np.int64)}
    params["c"] = np.array([True, False, True, True])
    assert norm(params) == pytest.approx(math.sqrt(9 + 16 + 3))
    assert norm({}) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(max_dims=3, max_side=6),
        elements=st.floats(-1e6, 1e6, width=32),
    ),
    st.data(),
)
def test_delta_round_trip_float32(base: np.ndarray, data: st.DataObject) -> None:
    new = data.draw(hnp.arrays(np.float32, base.shape, elements=st.floats(-1e6, 1e6, width=32)))
    d = delta({"w": base}, {"w": new})
    assert d["w"].dtype == np.float32 and d["w"].shape == base.shape
    restored = apply_delta({"w": base}, d)["w"]
    assert restored.dtype == np.float32
    np.testing.assert_allclose(restored, new, rtol=1e-6, atol=0.25)  # float32 spacing at 1e6
    np.testing.assert_array_equal(
        apply_delta({"w": base}, delta({"w": base}, {"w": base}))["w"], base
    )


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.int64, hnp.array_shapes(max_dims=2, max_side=5)),
    st.data(),
)
def test_delta_round_trip_int64_is_exact(base: np.ndarray, data: st.DataObject) -> None:
    new = data.draw(hnp.arrays(np.int64, base.shape))  # full range: deltas may wrap
    d = delta({"n": base}, {"n": new})
    assert d["n"].dtype == np.int64
    restored = apply_delta({"n": base}, d)["n"]
    assert restored.dtype == np.int64
    np.testing.assert_array_equal(restored, new)


def test_integer_and_bool_deltas() -> None:
    base = {
        "n": np.array(10, dtype=np.int64),
        "u": np.array([250], np.uint8),
        "m": np.array([True, False]),
    }
    new = {
        "n": np.array(13, dtype=np.int64),
        "u": np.array([3], np.uint8),
        "m": np.array([False, True]),
    }
    d = delta(base, new)
    assert int(d["n"]) == 3 and int(d["u"][0]) == -247
    np.testing.assert_array_equal(d["m"], [-1, 1])
    assert d["m"].dtype == np.int64 and d["u"].dtype == np.int64
    back = apply_delta(base, d)
    assert all(back[k].dtype == base[k].dtype for k in base)
    assert all(np.array_equal(back[k], new[k]) for k in base)
    half = apply_delta(base, d, scale=0.5)
    assert int(half["n"]) == 12  # 11.5 rounds half to even
    assert half["m"].tolist() == [False, False]  # 0.5 rounds to 0 for both
    assert int(apply_delta(base, d, scale=-100.0)["u"][0]) == 255  # clipped to uint8 range


def test_apply_delta_scale_and_float64_delta() -> None:
    base = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    step = {"w": np.array([0.5, -1.0], dtype=np.float64)}
    moved = apply_delta(base, step, scale=2.0)["w"]
    assert moved.dtype == np.float32
    np.testing.assert_array_equal(moved, [2.0, 0.0])


def test_apply_delta_rejects_nan_for_integer_base() -> None:
    with pytest.raises(DiffError, match=r"'n'.*NaN"):
        apply_delta({"n": np.array([1], np.int64)}, {"n": np.array([np.nan])})


def test_delta_mismatched_names_lists_missing_and_extra() -> None:
    with pytest.raises(DiffError) as info:
        delta({"a": np.zeros(1), "b": np.zeros(1)}, {"b": np.zeros(1), "c": np.zeros(1)})
    message = str(info.value)
    assert "new has missing ['a'], unexpected ['c']" in message
    assert isinstance(info.value, FedvcError)


def test_delta_mismatched_shape_and_dtype_name_the_tensor() -> None:
    with pytest.raises(DiffError, match=r"'w'.*shape \[2, 3\].*shape \[3, 2\]"):
        delta({"w": np.zeros((2, 3))}, {"w": np.zeros((3, 2))})
    with pytest.raises(DiffError, match="'w': base is float32, new is float64"):
        delta({"w": np.zeros(2, np.float32)}, {"w": np.zeros(2, np.float64)})
    with pytest.raises(DiffError, match=r"delta has missing \['v'\]"):
        apply_delta({"w": np.zeros(2), "v": np.zeros(1)}, {"w": np.zeros(2)})
    with pytest.raises(DiffError, match="finite"):
        apply_delta({"w": np.zeros(2)}, {"w": np.zeros(2)}, scale=math.inf)


def test_uint64_delta_wraps_and_round_trips_exactly() -> None:
    base = {"u": np.array([2**64 - 1, 5], dtype=np.uint64)}
    new = {"u": np.array([0, 2**63 + 7], dtype=np.uint64)}
    d = delta(base, new)
    assert d["u"].dtype == np.int64 and int(d["u"][0]) == 1  # 2**64 - 1 + 1 wraps to 0
    np.testing.assert_array_equal(apply_delta(base, d)["u"], new["u"])
    np.testing.assert_array_equal(apply_delta(new, d, scale=-1.0)["u"], base["u"])


def test_distance_is_the_l2_norm_of_the_difference_whatever_the_chunk() -> None:
    from fedvc.diff import distance

    rng = np.random.default_rng(3)
    a = {"w": rng.normal(size=(7, 5)).astype(np.float32), "n": np.arange(4)}
    b = {"w": rng.normal(size=(7, 5)).astype(np.float32), "n": np.arange(4) * 9}
    expected = float(np.linalg.norm(b["w"].astype(np.float64) - a["w"]))
    for chunk in (1, 3, 1 << 20):
        assert distance(a, b, chunk_elements=chunk) == pytest.approx(expected, rel=1e-12)
    assert distance(a, a) == 0.0  # integer tensors (counters) do not count
