"""Least-squares linear layers and their input Grams, shared by the RegMean tests: a layer
fitted exactly to its data is what RegMean's pooled regression is checked against."""

from __future__ import annotations

import numpy as np


def with_ones(x: np.ndarray) -> np.ndarray:
    """``x`` in float64 with a column of ones appended (the bias's input)."""
    return np.hstack([np.asarray(x, np.float64), np.ones((len(x), 1))])


def least_squares(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The weight ``(out, in)`` and bias ``(out,)`` that best map ``x`` to ``y``."""
    solution = np.linalg.lstsq(with_ones(x), y, rcond=None)[0]
    return solution[:-1].T.copy(), solution[-1].copy()


def gram(x: np.ndarray) -> np.ndarray:
    """The Gram of a layer's inputs, ones column included, as RegMean takes it."""
    ones = with_ones(x)
    return ones.T @ ones
