"""Figures written as artifacts: the loss curves of a run (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(histories: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    """One panel per metric group (train/…, val/…), step on x; saved as PNG."""
    groups: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for key, points in sorted(histories.items()):
        if points and not key.endswith("samples_per_s"):
            groups.setdefault(key.split("/", 1)[0], {})[key] = sorted(points)
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(6 * max(len(groups), 1), 4))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, (group, series) in zip(axes, groups.items(), strict=False):
        for key, points in series.items():
            ax.plot([s for s, _ in points], [v for _, v in points], label=key)
        ax.set_xlabel("step")
        ax.set_title(group)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
