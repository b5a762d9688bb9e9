"""Figures written as artifacts: the loss curves of a run (matplotlib, headless Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

from genpar_models.util import atomic

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(histories: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    """Small multiples: one panel per metric name, train/… and val/… of that name overlaid."""
    panels: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for key, points in sorted(histories.items()):
        if len(points) > 1 and not key.endswith("samples_per_s"):
            panels.setdefault(key.split("/", 1)[-1], {})[key] = sorted(points)
    n = max(len(panels), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, series) in zip(axes.flat, panels.items(), strict=False):
        for key, points in series.items():
            ax.plot(
                [s for s, _ in points],
                [v for _, v in points],
                label=key.split("/")[0],
                marker="o" if len(points) < 20 else None,
                markersize=3,
            )
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
