"""The rows behind `genpar runs`: recent MLflow runs with key params and metrics."""

from __future__ import annotations

import datetime as dt
from typing import Any

from genpar_models.config import PipelineConfig
from genpar_models.errors import GenparError
from tasks import mlflow_store as store

DEFAULT_METRICS = [
    "eval/bits_per_dim",
    "eval/frechet_pca",
    "train/loss",
    "train/loss_g",
    "train/samples_per_s",
]
PARAMS = {
    "model": "params.model.name",
    "data": "params.data.source",
    "steps": "params.train.max_steps",
}


def _fmt(value: Any) -> str:
    if value is None or value != value:  # None or NaN
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def list_runs(
    *,
    uri: str | None,
    experiment: str | None,
    sort: str | None,
    desc: bool,
    metrics: list[str] | None,
    limit: int,
) -> tuple[list[dict[str, str]], list[str]]:
    """(rows, column names) for the newest runs, or sorted by a metric."""
    resolved = store.resolve_uri(PipelineConfig(tracking={"uri": uri}))
    client = store.connect(resolved)
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise GenparError(
                f"no MLflow experiment named {experiment!r} in {store.redact(resolved)}"
            )
        exps = {exp.experiment_id: exp.name}
    else:
        exps = {
            e.experiment_id: e.name
            for e in client.search_experiments(filter_string="tags.genpar = '1'")
        }
    if not exps:
        return [], []
    order = [f"metrics.`{sort}` {'DESC' if desc else 'ASC'}"] if sort else []
    runs = client.search_runs(
        list(exps), order_by=order + ["attributes.start_time DESC"], max_results=limit
    )
    wanted = metrics or ([sort] if sort and sort not in DEFAULT_METRICS else []) + DEFAULT_METRICS
    present = [m for m in wanted if any(m in r.data.metrics for r in runs)] or wanted[:1]
    columns = ["run", "experiment", "status", "started", "min", *PARAMS, *present]
    rows = []
    for r in runs:
        start = dt.datetime.fromtimestamp(r.info.start_time / 1000)
        end = r.info.end_time / 1000 if r.info.end_time else None
        row = {
            "run": r.info.run_id[:12],
            "experiment": exps[r.info.experiment_id],
            "status": r.info.status,
            "started": start.strftime("%Y-%m-%d %H:%M"),
            "min": _fmt((end - start.timestamp()) / 60) if end else "",
        }
        row.update({k: r.data.params.get(v.removeprefix("params."), "") for k, v in PARAMS.items()})
        row.update({m: _fmt(r.data.metrics.get(m)) for m in present})
        rows.append(row)
    return rows, columns
