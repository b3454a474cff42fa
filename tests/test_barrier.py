"""Tests for fedvc.barrier (loss along the linear path) and fedvc.plots (its PNG)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedvc.barrier import BarrierError, BarrierResult, interpolate, loss_barrier
from fedvc.plots import plot_barriers
from fedvc.tensors import ParamMap

A: dict[str, np.ndarray] = {"w": np.array([1.0, -2.0], np.float32), "steps": np.array(7, np.int64)}
B: dict[str, np.ndarray] = {"w": np.array([3.0, 2.0], np.float32), "steps": np.array(99, np.int64)}


def quadratic_with_bump(height: float) -> tuple[float, float, Callable[[ParamMap], float]]:
    """A loss that is linear between the endpoints plus ``height·4t(1-t)``: barrier = height.

    Along the path w(t) = (1-t)·A + t·B the loss is ``1 + 2t + height·4t(1-t)``, so its
    excess over the line joining L(a) = 1 and L(b) = 3 peaks at t = ½ with value ``height``.
    """
    a, b = A["w"].astype(np.float64), B["w"].astype(np.float64)
    span = b - a

    def evaluate(model: ParamMap) -> float:
        t = float(np.dot(model["w"] - a, span) / np.dot(span, span))
        return 1.0 + 2.0 * t + height * 4.0 * t * (1.0 - t)

    return 1.0, 3.0, evaluate


def test_interpolate_endpoints_and_midpoint() -> None:
    assert np.array_equal(interpolate(A, B, 0.0)["w"], A["w"])
    assert np.array_equal(interpolate(A, B, 1.0)["w"], B["w"])
    middle = interpolate(A, B, 0.5)
    assert middle["w"].dtype == np.float32
    assert middle["w"].tolist() == [2.0, 0.0]
    assert middle["steps"] == 7  # integer tensors come from a
    assert interpolate(A, B, 2.0)["w"].tolist() == [5.0, 6.0]  # extrapolation


def test_interpolate_refuses_different_models() -> None:
    with pytest.raises(BarrierError, match="different tensors"):
        interpolate(A, {"w": B["w"]}, 0.5)
    with pytest.raises(BarrierError, match="float32"):
        interpolate(A, {**B, "w": np.zeros(3, np.float32)}, 0.5)
    with pytest.raises(BarrierError, match="finite"):
        interpolate(A, B, float("nan"))


@pytest.mark.parametrize("t", [None, "0.5", True, np.bool_(False), float("inf")])
def test_interpolate_refuses_a_t_that_is_not_a_finite_real(t: object) -> None:
    with pytest.raises(BarrierError, match="finite real number"):
        interpolate(A, B, t)  # type: ignore[arg-type]


def test_interpolate_accepts_numpy_and_integer_t() -> None:
    assert interpolate(A, B, np.float32(0.5))["w"].tolist() == [2.0, 0.0]
    assert np.array_equal(interpolate(A, B, 1)["w"], B["w"])


def test_loss_barrier_evaluates_exactly_the_interpolated_models() -> None:
    # loss_barrier converts the models once rather than per point: same models as before
    a = {**A, "v": np.array([0.1, 1e-3, -7.25], np.float16)}
    b = {**B, "v": np.array([3.3, -2.0, 1e4], np.float16)}
    seen: list[dict[str, np.ndarray]] = []

    def evaluate(model: ParamMap) -> float:
        seen.append({name: np.array(value) for name, value in model.items()})
        model["w"][:] = 1e9  # scribbling on one point must not leak into the next
        return 0.0

    result = loss_barrier(a, b, evaluate, steps=6)
    assert len(seen) == len(result.ts)
    for t, model in zip(result.ts, seen, strict=True):
        want = interpolate(a, b, t)
        assert all(
            model[n].dtype == want[n].dtype and model[n].tobytes() == want[n].tobytes()
            for n in want
        )


@pytest.mark.parametrize("steps", [11, 10, 2])
def test_known_barrier_of_a_quadratic(steps: int) -> None:
    first, last, evaluate = quadratic_with_bump(0.75)
    result = loss_barrier(A, B, evaluate, steps=steps)
    assert result.ts[0] == 0.0 and result.ts[-1] == 1.0 and 0.5 in result.ts
    assert len(result.ts) == (steps if steps % 2 else steps + 1)
    assert result.losses[0] == pytest.approx(first)
    assert result.losses[-1] == pytest.approx(last)
    assert result.barrier == pytest.approx(0.75)
    assert result.midpoint == pytest.approx(0.75)
    assert result.t_max == 0.5
    assert result.excess[0] == 0.0 and result.excess[-1] == pytest.approx(0.0)


def test_no_barrier_on_a_convex_path_and_barrier_never_negative() -> None:
    _, _, evaluate = quadratic_with_bump(-0.5)  # the path bows below the line
    result = loss_barrier(A, B, evaluate)
    assert result.barrier == 0.0
    assert result.midpoint == pytest.approx(-0.5)


def test_loss_barrier_errors() -> None:
    _, _, evaluate = quadratic_with_bump(1.0)
    with pytest.raises(BarrierError, match="steps"):
        loss_barrier(A, B, evaluate, steps=1)
    with pytest.raises(BarrierError, match="diverges"):
        loss_barrier(A, B, lambda model: float("inf"))
    with pytest.raises(BarrierError, match="must return a number"):
        loss_barrier(A, B, lambda model: "low")  # type: ignore[arg-type,return-value]


def test_to_json_round_numbers() -> None:
    _, _, evaluate = quadratic_with_bump(0.25)
    value = loss_barrier(A, B, evaluate, steps=3).to_json()
    assert value["ts"] == [0.0, 0.5, 1.0]
    assert value["barrier"] == pytest.approx(0.25)
    assert set(value) == {"ts", "losses", "barrier", "midpoint", "t_max"}


def _png_chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG, after checking its signature and every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks.append(kind)
        offset += 12 + length
    return chunks


def test_plot_barriers_writes_a_valid_png(tmp_path: Path) -> None:
    curves: dict[str, BarrierResult] = {}
    for name, height in (("naive", 1.5), ("aligned", 0.02)):
        _, _, evaluate = quadratic_with_bump(height)
        curves[name] = loss_barrier(A, B, evaluate)
    path = plot_barriers(curves, tmp_path / "nested" / "barrier.png")
    assert path == tmp_path / "nested" / "barrier.png"
    chunks = _png_chunks(path.read_bytes())
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    assert width > 100 and height > 100


def test_plot_barriers_needs_a_curve(tmp_path: Path) -> None:
    with pytest.raises(BarrierError, match="at least one"):
        plot_barriers({}, tmp_path / "empty.png")
