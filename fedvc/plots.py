"""Figures for benchmarks and reports; the only part of fedvc that imports matplotlib.

Figures are drawn on a ``matplotlib.figure.Figure`` attached to the non-interactive Agg
canvas directly, never through ``pyplot``: nothing here opens a window, needs a display,
or changes the backend or global state of a program that imports fedvc.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedvc.barrier import BarrierError, BarrierResult


def _canvas(path: str | Path, size: tuple[float, float]) -> tuple[Path, Figure, Axes]:
    """The PNG's path (its folder created) and a figure with one axes on the Agg canvas."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=size, dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return target, figure, figure.add_subplot()


def plot_barriers(
    results: Mapping[str, BarrierResult],
    path: str | Path,
    *,
    title: str = "Loss along the linear path between two models",
    ylabel: str = "loss",
) -> Path:
    """Write a PNG of loss against t, one curve per result (e.g. "naive" and "aligned").

    Each curve is drawn with the straight line between its endpoint losses dashed in the
    same colour, so the barrier is the largest gap between them; the legend gives each
    curve's barrier and midpoint barrier. Parent folders are created. Returns the path.
    """
    if not results:
        raise BarrierError("plot_barriers needs at least one BarrierResult to draw, got none")
    target, figure, axes = _canvas(path, (6.4, 4.8))
    for name, result in results.items():
        (line,) = axes.plot(
            result.ts,
            result.losses,
            marker="o",
            markersize=3,
            label=f"{name} (barrier {result.barrier:.3f}, midpoint {result.midpoint:.3f})",
        )
        axes.plot(
            [result.ts[0], result.ts[-1]],
            [result.losses[0], result.losses[-1]],
            linestyle="--",
            linewidth=0.8,
            color=line.get_color(),
        )
    axes.set_xlabel("t   (θ(t) = (1-t)·a + t·b)")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center")  # below the axes: never over a curve
    figure.savefig(target, format="png")
    return target


def plot_rounds(
    series: Mapping[str, Sequence[tuple[int, float]]],
    path: str | Path,
    *,
    ylabel: str,
    title: str,
) -> Path:
    """Write a PNG of a metric against the round, one line per series (e.g. per strategy).

    ``series`` maps a label to ``(round, value)`` points; round 0 is the initial model.
    Parent folders are created. Returns the path.
    """
    if not series:
        raise ValueError("plot_rounds needs at least one series to draw, got none")
    target, figure, axes = _canvas(path, (6.4, 4.8))
    styles = ("-", "--", ":", "-.")
    markers = ("o", "s", "^", "D", "v", "x")
    for index, (label, points) in enumerate(series.items()):
        # styles differ as well as colours: strategies that coincide stay visible
        axes.plot(
            [r for r, _ in points],
            [v for _, v in points],
            linestyle=styles[index % len(styles)],
            marker=markers[index % len(markers)],
            markersize=3,
            label=label,
        )
    axes.set_xlabel("round")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=min(len(series), 4))
    figure.savefig(target, format="png")
    return target


def plot_partition(
    table: np.ndarray,
    path: str | Path,
    *,
    classes: Sequence[object] | None = None,
    clients: Sequence[str] | None = None,
    title: str = "Examples per client and class",
) -> Path:
    """Write a PNG heatmap of a partition table: clients (rows) by classes (columns).

    ``table`` is what ``fedvc.simulation.partition_table`` returns. Colour is each cell's
    share of its client's examples, so small and large clients read alike; tick labels
    are left out where there are too many to read. Returns the path.
    """
    counts = np.asarray(table, dtype=np.float64)
    if counts.ndim != 2 or counts.size == 0:
        raise ValueError(f"a partition table is a non-empty 2-D array, got shape {counts.shape}")
    for what, given, wanted in (
        ("classes", classes, counts.shape[1]),
        ("clients", clients, counts.shape[0]),
    ):
        if given is not None and len(given) != wanted:
            raise ValueError(f"{what} needs {wanted} labels for this table, got {len(given)}")
    rows, columns = counts.shape
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = (min(4 + 0.3 * columns, 16), min(2.5 + 0.25 * rows, 12))
    target, figure, axes = _canvas(path, size)
    image = axes.imshow(shares, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
    figure.colorbar(image, ax=axes, label="share of the client's examples")
    if columns <= 40:
        names = (
            [str(c) for c in classes] if classes is not None else [str(i) for i in range(columns)]
        )
        axes.set_xticks(range(columns), names, fontsize="small")
    if rows <= 50:
        labels = [str(c) for c in clients] if clients is not None else [str(i) for i in range(rows)]
        axes.set_yticks(range(rows), labels, fontsize="small")
    axes.set_xlabel("class")
    axes.set_ylabel("client")
    axes.set_title(title)
    figure.savefig(target, format="png")
    return target
