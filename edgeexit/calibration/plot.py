"""The accuracy-latency Pareto plot that ``edgeexit calibrate`` writes next to its table.

matplotlib is imported inside the function (a device installs no matplotlib) and drives a bare
``Figure`` on the Agg canvas rather than pyplot, so it never opens a window, never touches the
global backend of a notebook or script that imported us, and works on a headless box.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

from edgeexit.calibration.thresholds import Outcome
from edgeexit.fileio import atomic_write_bytes


def plot_pareto(
    curve: Sequence[tuple[float, float]],
    chosen: Outcome,
    final_point: tuple[float, float],
    path: str | os.PathLike[str],
    *,
    criterion: str,
    max_drop: float,
    target_accuracy: float | None = None,
) -> None:
    """Write the frontier, the chosen operating point and full depth as a PNG at ``path``.

    The file is written to a temporary name in the same directory and renamed into place, so a
    reader never sees half a PNG.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("the Pareto plot needs matplotlib: pip install 'edgeexit[plots]'") from None

    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if curve:
        xs, ys = zip(*curve, strict=True)
        axes.plot(xs, [100 * y for y in ys], "-o", markersize=3, color="tab:blue", label="Pareto frontier")
    if target_accuracy is not None:
        axes.axhline(100 * target_accuracy, linestyle="--", color="tab:gray", linewidth=1, label="accuracy target")
    axes.plot(
        [final_point[0]], [100 * final_point[1]], "s", markersize=9, color="tab:red", label="full depth (final exit)"
    )
    axes.plot(
        [chosen.expected_ms],
        [100 * chosen.accuracy],
        "*",
        markersize=15,
        color="tab:green",
        label=f"chosen: {chosen.expected_ms:.3g} ms, {100 * chosen.accuracy:.2f}%",
    )
    axes.set_xlabel("expected latency per sample (ms, batch 1)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(f"Accuracy vs latency: criterion {criterion}, max drop {100 * max_drop:g} points")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
