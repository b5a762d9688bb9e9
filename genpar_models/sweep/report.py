"""A sweep's results as plain data: the ranked table (Markdown and CSV rows) and a figure of the
objective against each swept parameter (matplotlib, headless)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from genpar_models.sweep.halving import ranked
from genpar_models.util import atomic


def results_rows(
    outcomes: list[dict[str, Any]], keys: list[str], metric: str, direction: str
) -> list[dict[str, Any]]:
    """One row per trial, best objective first; stopped and failed trials after the finished."""
    scores = {o["id"]: o.get("objective") for o in outcomes}
    by_id = {o["id"]: o for o in outcomes}
    rows = []
    for rank, trial_id in enumerate(ranked(scores, direction), start=1):
        o = by_id[trial_id]
        finished = o["status"] == "finished"
        rows.append(
            {
                "rank": rank if finished else "",
                "trial": trial_id,
                "status": o.get("detail", o["status"]),
                **{k: o.get("params", {}).get(k, "") for k in keys},
                metric: o.get("objective") if finished else None,
                "run_id": o.get("run_id", ""),
            }
        )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def results_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_objective(
    outcomes: list[dict[str, Any]], keys: list[str], metric: str, path: Path
) -> Path:
    """One panel per swept parameter: the objective of each finished trial against its value
    (categorical values at evenly spaced positions, in the order first seen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [o for o in outcomes if o["status"] == "finished" and o.get("objective") is not None]
    cols = min(len(keys), 3) or 1
    rows = math.ceil(len(keys) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        values = [o["params"].get(key) for o in done]
        ys = [o["objective"] for o in done]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric and values:
            ax.scatter(values, ys)
            if min(values) > 0 and max(values) / min(values) >= 20:
                ax.set_xscale("log")
        else:
            levels = list(dict.fromkeys(str(v) for v in values))
            ax.scatter([levels.index(str(v)) for v in values], ys)
            ax.set_xticks(range(len(levels)), levels)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(f"{metric} by swept parameter ({len(done)} finished trial(s))")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
