"""The rows behind `genpar runs`: recent MLflow runs with key params and metrics.

Sorting by an evaluation metric ranks runs, and runs are only ranked when they share the
protocol that metric was measured under (genpar_models/eval/protocol.py): otherwise the listing
refuses, names the fields that differ, and says how to narrow the selection (`--protocol`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from genpar_models.config import PipelineConfig
from genpar_models.errors import GenparError
from genpar_models.eval.protocol import KINDS, TAG_PREFIX, check_comparable, protocol_kind
from tasks import mlflow_store as store
from tasks.scorecard import run_protocols

DEFAULT_METRICS = [
    "eval/fid",
    "eval/bits_per_dim",
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


def _matches(run: Any, protocol: str, kind: str | None) -> bool:
    kinds = [kind] if kind else list(KINDS)
    return any(run.data.tags.get(f"{TAG_PREFIX}{k}", "").startswith(protocol) for k in kinds)


def guard_ranking(runs: list[Any], sort: str) -> None:
    """Raise ProtocolMismatch unless all runs holding `sort` share its protocol."""
    kind = protocol_kind(sort)
    if kind is None:
        return
    protocols = {r.info.run_id[:12]: run_protocols(r)[kind] for r in runs if sort in r.data.metrics}
    check_comparable(
        sort,
        protocols,
        hint="Rank one protocol at a time with --protocol ID (the id before each run count), "
        "or re-evaluate the other runs under one protocol: genpar evaluate RUN_ID --set ...",
    )


def list_runs(
    *,
    uri: str | None,
    experiment: str | None,
    sort: str | None,
    desc: bool,
    metrics: list[str] | None,
    limit: int,
    protocol: str | None = None,
    sweep: str | None = None,
) -> tuple[list[dict[str, str]], list[str]]:
    """(rows, column names) for the newest runs, or ranked by a metric; with `sweep` (a
    parent run id) that sweep's trials, ranked by its objective unless `sort` says otherwise.

    Raises:
        ProtocolMismatch: `sort` is an evaluation metric and the runs holding it were
            evaluated under different protocols (names the differing fields).
    """
    resolved = store.resolve_uri(PipelineConfig(tracking={"uri": uri}))
    client = store.connect(resolved)
    if sweep:
        return _sweep_rows(client, sweep, sort, desc, metrics, limit, protocol)
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
    # Rank among every run that holds the metric, not just the first page of them.
    runs = client.search_runs(
        list(exps), order_by=order + ["attributes.start_time DESC"], max_results=max(limit, 5000)
    )
    if protocol:
        runs = [r for r in runs if _matches(r, protocol, protocol_kind(sort or ""))]
    if sort:
        guard_ranking(runs, sort)
    runs = runs[:limit]
    wanted = metrics or ([sort] if sort and sort not in DEFAULT_METRICS else []) + DEFAULT_METRICS
    present = [m for m in wanted if any(m in r.data.metrics for r in runs)] or wanted[:1]
    ptag = f"{TAG_PREFIX}{protocol_kind(sort or '') or 'quality'}"
    show_protocol = any(ptag in r.data.tags for r in runs)
    columns = ["run", "experiment", "status", "started", "min", *PARAMS]
    columns += ["protocol"] if show_protocol else []
    rows = [_row(r, exps, present, ptag if show_protocol else None) for r in runs]
    return rows, columns + present


def _row(r: Any, exps: dict[str, str], present: list[str], ptag: str | None) -> dict[str, str]:
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
    if ptag:
        row["protocol"] = r.data.tags.get(ptag, "")
    row.update({m: _fmt(r.data.metrics.get(m)) for m in present})
    return row


def _sweep_rows(
    client: Any,
    parent_id: str,
    sort: str | None,
    desc: bool,
    metrics: list[str] | None,
    limit: int,
    protocol: str | None,
) -> tuple[list[dict[str, str]], list[str]]:
    """A sweep's child runs, best first by its objective (or `sort`), protocol-guarded."""
    import json

    from mlflow.exceptions import MlflowException

    try:
        parent = client.get_run(parent_id)
    except MlflowException:
        raise GenparError(f"--sweep {parent_id}: no such MLflow run") from None
    if parent.data.tags.get("genpar.sweep.role") != "parent":
        raise GenparError(f"--sweep {parent_id}: run {parent_id} is not a sweep's parent run")
    direction, _, objective = parent.data.params.get("sweep.objective", " ").partition(" ")
    if not sort:
        sort, desc = objective, direction == "maximize"
    exp_id = parent.info.experiment_id
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=[f"metrics.`{sort}` {'DESC' if desc else 'ASC'}", "tags.`genpar.sweep.trial`"],
        max_results=5000,
    )
    runs = [r for r in runs if "genpar.sweep.trial" in r.data.tags]
    if protocol:
        runs = [r for r in runs if _matches(r, protocol, protocol_kind(sort))]
    guard_ranking(runs, sort)
    runs = runs[:limit]
    swept = list(json.loads(parent.data.params.get("sweep.space", "{}")))
    wanted = metrics or [sort]
    rows = []
    for r in runs:
        values = json.loads(r.data.tags.get("genpar.sweep.params", "{}"))
        rows.append(
            {
                "trial": r.data.tags["genpar.sweep.trial"],
                "run": r.info.run_id[:12],
                "status": r.info.status,
                "sweep": r.data.tags.get("genpar.sweep.status", ""),
                **{k: _fmt(values.get(k)) for k in swept},
                **{m: _fmt(r.data.metrics.get(m)) for m in wanted},
            }
        )
    return rows, ["trial", "run", "status", "sweep", *swept, *wanted]
