"""Bit-for-bit comparison of parameter maps, shared by the strategy tests."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def assert_bit_equal(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> None:
    """Same names, dtypes, shapes and bytes (so NaNs and signed zeros count too)."""
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name
