"""Accuracy vs latency, with the Pareto front (nothing both faster and more accurate) highlighted.

Rendered with matplotlib's Agg backend into PNG bytes, so it works without a display and the
caller writes the file atomically.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from kdpipe.report.schema import BenchRow

LABEL_OFFSETS = (4, -11, 14)  # points, vertical offsets of successive labels


@dataclass(frozen=True)
class Point:
    label: str
    latency_ms: float
    top1: float


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both axes (lower latency and higher top-1), by latency.

    Ties: of two points with the same latency only the more accurate can be on the front, and a
    point equal to another on both axes is kept once (the first).
    """
    front: list[Point] = []
    best_top1 = float("-inf")
    for p in sorted(points, key=lambda p: (p.latency_ms, -p.top1)):
        if p.top1 > best_top1:
            front.append(p)
            best_top1 = p.top1
    return front


def plot_points(rows: Sequence[BenchRow]) -> tuple[list[Point], int | None]:
    """The plottable points: ok rows with a top-1 at batch size 1 (else the smallest benched)."""
    usable = [r for r in rows if r.status == "ok" and r.top1 is not None and r.p50_ms is not None]
    if not usable:
        return [], None
    batch = 1 if any(r.batch_size == 1 for r in usable) else min(r.batch_size for r in usable)
    points = [Point(f"{r.name} ({r.runtime})", float(r.p50_ms), float(r.top1))  # type: ignore[arg-type]
              for r in usable if r.batch_size == batch]
    return points, batch


def accuracy_latency_png(rows: Sequence[BenchRow], title: str = "") -> bytes:
    """The plot as PNG bytes; a figure that says why when no row has both numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, batch = plot_points(rows)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    try:
        if points:
            _draw(ax, points, batch)
        else:
            ax.text(0.5, 0.5, "no row has both a top-1 and a latency\n"
                    "(accuracy not measured, or nothing ran)", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
        ax.set_title(title or "accuracy vs latency", fontsize=10)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)


def _draw(ax, points: list[Point], batch: int | None) -> None:
    front = pareto_front(points)
    on_front = set(front)
    others = [p for p in points if p not in on_front]
    ax.scatter([p.latency_ms for p in others], [p.top1 for p in others], color="0.6",
               label="dominated", zorder=2)
    ax.plot([p.latency_ms for p in front], [p.top1 for p in front], "-o", color="tab:red",
            label="Pareto front", zorder=3)
    # Neighbours often share a top-1 (same weights, other runtime): stagger their labels.
    for i, p in enumerate(sorted(points, key=lambda p: (p.top1, p.latency_ms))):
        ax.annotate(p.label, (p.latency_ms, p.top1), textcoords="offset points",
                    xytext=(5, LABEL_OFFSETS[i % len(LABEL_OFFSETS)]), fontsize=7)
    # Runtimes span orders of magnitude (GPU vs phone), so a log axis keeps every point readable.
    if max(p.latency_ms for p in points) > 10 * min(p.latency_ms for p in points):
        ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at batch size {batch} (ms, lower is better)")
    ax.set_ylabel("top-1 accuracy (%, higher is better)")
    ax.margins(x=0.2, y=0.1)  # room for the labels right of the points
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
