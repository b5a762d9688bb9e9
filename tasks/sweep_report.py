"""Prefect tasks that close a sweep: register the best trial, record the results on the parent
MLflow run (table, plot, best trial's id), publish a Prefect table artifact, and the flow's
failure hook."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from genpar_models.config import PipelineConfig, load_config
from genpar_models.config.sweep import SweepConfig
from genpar_models.sweep import halving
from genpar_models.sweep.report import plot_objective, results_markdown, results_rows
from genpar_models.util import atomic
from tasks import mlflow_store as store
from tasks import runlock, uploads
from tasks.artifacts import artifact_key, run_url, ui_base
from tasks.common import run_logger
from tasks.sweep import SweepRun
from tasks.tracking import RunHandle, register_model

_IO: dict[str, Any] = {"retries": 2, "retry_delay_seconds": [2, 10], "cache_policy": NO_CACHE}


def best_outcome(sweep: SweepConfig, outcomes: list[dict[str, Any]]) -> dict[str, Any] | None:
    finished = {o["id"]: o["objective"] for o in outcomes if o["status"] == "finished"}
    if not finished:
        return None
    best_id = halving.ranked(finished, sweep.objective.direction)[0]
    return next(o for o in outcomes if o["id"] == best_id)


def trial_config(parent: SweepRun, run_id: str) -> tuple[PipelineConfig, RunHandle]:
    run_dir = store.run_dir_for(parent.experiment, run_id)
    config = load_config(run_dir / "config.yaml")
    client = store.connect(parent.uri)
    key = client.get_run(run_id).data.tags.get(store.TAG_TRAIN_KEY, "")
    handle = RunHandle(
        uri=parent.uri,
        experiment_id=parent.experiment_id,
        run_id=run_id,
        run_dir=str(run_dir),
        train_key=key,
    )
    return config, handle


@task(name="register-best", **_IO)
def register_best(
    sweep: SweepConfig, parent: SweepRun, outcomes: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Register the best finished trial's model (once; a re-run gets the same version)."""
    best = best_outcome(sweep, outcomes)
    if best is None:
        run_logger().warning("no trial finished: nothing to register")
        return None
    config, handle = trial_config(parent, best["run_id"])
    version = register_model.fn(config, handle, best["metrics"])
    return {
        **best,
        "model_version": version,
        "registered_model": config.registered_model_name,
        "run_dir": handle.run_dir,
    }


def _log_results(parent: SweepRun, rows: list[dict[str, Any]], plot: Path, md: str) -> None:
    run_dir = Path(parent.run_dir)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic.write_text(run_dir / "sweep" / "results.csv", buf.getvalue())
    atomic.write_text(run_dir / "sweep" / "results.md", md)
    client = store.connect(parent.uri)
    uploads.upload(client, parent.run_id, run_dir / "sweep", "sweep")
    if rows:  # MLflow's table view (artifact viewer, and "evaluation" comparisons)
        columns = {c: [("" if r[c] is None else str(r[c])) for r in rows] for c in rows[0]}
        client.log_table(parent.run_id, data=columns, artifact_file="sweep/results.json")


@task(name="finish-sweep", **_IO)
def finish_sweep(
    sweep: SweepConfig,
    parent: SweepRun,
    outcomes: list[dict[str, Any]],
    best: dict[str, Any] | None,
) -> dict[str, Any]:
    """Results table, plot and best trial on the parent run; a Prefect table artifact; the
    parent run FINISHED. Returns the sweep's summary."""
    keys = list(sweep.space) + (["seed"] if sweep.seeds else [])
    metric = sweep.objective.metric
    rows = results_rows(outcomes, keys, metric, sweep.objective.direction)
    md = results_markdown(rows)
    plot = plot_objective(outcomes, keys, metric, Path(parent.run_dir) / "sweep" / "objective.png")
    _log_results(parent, rows, plot, md)
    client = store.connect(parent.uri)
    counts = {s: sum(o["status"] == s for o in outcomes) for s in ("finished", "stopped", "failed")}
    store.log_metrics(client, parent.run_id, {f"sweep/{k}_trials": v for k, v in counts.items()})
    tags = {"genpar.sweep.trials": str(len(outcomes))}
    if best:
        store.log_metrics(client, parent.run_id, {"sweep/best_objective": best["objective"]})
        tags |= {
            "genpar.sweep.best_trial": best["id"],
            "genpar.sweep.best_run_id": best["run_id"],
            "genpar.model_version": str(best.get("model_version")),
        }
    store.set_tags(client, parent.run_id, tags)
    store.finish(client, parent.run_id, "FINISHED")
    runlock.release(Path(parent.run_dir))
    url = run_url(ui_base(parent.uri), parent.experiment_id, parent.run_id)
    key = artifact_key(sweep.name, "sweep")
    table = [{k: ("" if v is None else v) for k, v in r.items()} for r in rows]
    create_table_artifact(table, key=key, description=f"{sweep.name}: trials, best first")
    best_line = (
        f"best trial **{best['id']}** ({metric} = {best['objective']:.5g}), "
        f"MLflow run `{best['run_id']}`"
        if best
        else "no trial finished"
    )
    create_markdown_artifact(
        f"# Sweep {sweep.name}\n\n{best_line}\n\n[parent MLflow run]({url})\n\n{md}",
        key=f"{key}-summary",
        description=f"{sweep.name}: best trial and MLflow link",
    )
    run_logger().info("sweep %s: %s; parent run %s", sweep.name, best_line, url)
    return {
        "run_id": parent.run_id,
        "experiment_id": parent.experiment_id,
        "url": url,
        "best": best,
        "trials": rows,
        "counts": counts,
        "resumed": parent.resumed,
    }


def mark_sweep_failed(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow state hook: the parent and unfinished child runs of a failed sweep are FAILED."""
    try:
        sweep = SweepConfig.model_validate(flow_run.parameters.get("sweep") or {})
        base = PipelineConfig.model_validate(sweep.base if isinstance(sweep.base, dict) else {})
        client = store.connect(store.resolve_uri(base))
    except Exception as e:  # noqa: BLE001 - a hook must never raise over the real error
        run_logger().warning("could not mark the sweep's MLflow runs failed: %s", e)
        return
    for run_id in store.runs_of_flow_run(client, str(flow_run.id)):
        run = client.get_run(run_id)
        if run.info.status == "RUNNING":
            store.set_tags(client, run_id, {"genpar.error": str(state.message)[:4000]})
            store.finish(client, run_id, "FAILED")
        runlock.release(Path(run.data.tags.get(store.TAG_RUN_DIR, ".")))
