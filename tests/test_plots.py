"""fedvc.plots: the partition heatmap takes numpy labels and refuses mismatched ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedvc.plots import plot_partition
from fedvc.simulation import dirichlet, partition_table


def test_partition_heatmap_takes_the_labels_partition_table_gives(tmp_path: Path) -> None:
    labels = np.random.default_rng(0).integers(0, 4, size=200)
    table = partition_table(labels, dirichlet(labels, 3, 0.5, seed=1, min_size=1))
    png = plot_partition(table, tmp_path / "p.png", classes=np.unique(labels))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="clients needs 3 labels for this table, got 2"):
        plot_partition(table, tmp_path / "q.png", clients=["a", "b"])
