"""Figures written as artifacts: the loss curves of a run, and for sequence models real vs generated
series and a PCA picture of both sets (matplotlib's object API on the headless Agg canvas).

No pyplot: its global figure registry is not thread-safe, and a sweep draws its trials' curves
in concurrent task threads; a `Figure` with its own Agg canvas shares nothing, needs no
`close`, and never touches a display or the process-wide backend.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from genpar_models.util import atomic


def _figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def _fixed_margins(cols: int, rows: int, width: float, height: float) -> dict[str, float]:
    """Subplot margins of a grid of 4.5 x 3.2 in panels, in figure fractions: room for tick
    labels, a panel title and the figure's title. Fixed, where `tight_layout` measured every
    tick label first: half of the curves' drawing time (0.4-0.8 s a plot on 2 cores), paid
    by every run and every sweep trial."""
    return {
        "left": 0.75 / width,
        "right": 1 - 0.2 / width,
        "bottom": 0.5 / height,
        "top": 1 - 0.65 / height,
        "wspace": 0.3,
        "hspace": 0.45 if rows > 1 else 0.2,
    }


def plot_curves(histories: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    """Small multiples: one panel per metric name, train/… and val/… of that name overlaid."""
    panels: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for key, points in sorted(histories.items()):
        if len(points) > 1 and not key.endswith("samples_per_s"):
            panels.setdefault(key.split("/", 1)[-1], {})[key] = sorted(points)
    n = max(len(panels), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    width, height = 4.5 * cols, 3.2 * rows
    fig = _figure((width, height))
    axes = fig.subplots(
        rows, cols, squeeze=False, gridspec_kw=_fixed_margins(cols, rows, width, height)
    )
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
    return _save(fig, path, dpi=100)


def plot_series_pairs(real: np.ndarray, fake: np.ndarray, path: Path, count: int = 4) -> Path:
    """Real series (left) and generated ones (right), one row each, every channel a line."""

    k = max(1, min(count, len(real), len(fake)))
    fig = _figure((9, 1.9 * k))
    axes = fig.subplots(k, 2, squeeze=False, sharey=True)
    for row in range(k):
        for col, (name, data) in enumerate((("real", real), ("generated", fake))):
            ax = axes[row, col]
            series = data[row]
            steps = int((~np.isnan(series[:, 0])).sum())
            ax.plot(np.arange(steps), series[:steps], linewidth=1)
            if row == 0:
                ax.set_title(name)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, dpi=90)


def plot_series_embedding(real: np.ndarray, fake: np.ndarray, path: Path, *, seed: int) -> Path:
    """Both sets in the first two principal components of their per-step channel means
    (TimeGAN's visualisation; NaN padding counts as 0)."""
    from sklearn.decomposition import PCA

    def flat(x: np.ndarray) -> np.ndarray:
        return np.nan_to_num(x, nan=0.0).mean(axis=2)  # padding is NaN in every channel

    r, f = flat(real), flat(fake)
    pca = PCA(n_components=2, random_state=seed).fit(r)
    fig = _figure((5, 4.5))
    ax = fig.subplots()
    for name, data, colour in (("real", r, "tab:red"), ("generated", f, "tab:blue")):
        pts = pca.transform(data)
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.4, label=name, c=colour)
    ax.set_title("PCA of real and generated series")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path, dpi=90)


def plot_generated_series(values: np.ndarray, path: Path, *, rows: int) -> Path:
    """The first `rows` generated series, one panel each (every channel a line)."""
    k = max(1, min(rows, len(values)))
    fig = _figure((6, 1.4 * k))
    axes = fig.subplots(k, 1, squeeze=False, sharex=True)
    for i in range(k):
        steps = int((~np.isnan(values[i, :, 0])).sum())
        axes[i, 0].plot(np.arange(steps), values[i, :steps], linewidth=1)
        axes[i, 0].grid(alpha=0.3)
    axes[0, 0].set_title("generated series")
    fig.tight_layout()
    return _save(fig, path, dpi=90)
