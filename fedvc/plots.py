"""Figures for benchmarks and reports; the only part of fedvc that imports matplotlib.

Figures are drawn on a ``matplotlib.figure.Figure`` attached to the non-interactive Agg
canvas directly, never through ``pyplot``: nothing here opens a window, needs a display,
or changes the backend or global state of a program that imports fedvc.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedvc.barrier import BarrierError, BarrierResult


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
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(6.4, 4.8), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
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
