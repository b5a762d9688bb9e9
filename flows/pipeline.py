"""The pipeline flow: config -> tracking -> preprocess -> train -> evaluate -> generate -> finish.

Run it with `genpar run CONFIG`, from Python (`pipeline(load_config(path))`), or from the
Prefect UI once deployed: its one parameter is the typed `PipelineConfig`, which the UI
renders as a form with defaults and descriptions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from genpar_models.config import PipelineConfig
from tasks.artifacts import publish_run_report
from tasks.cluster import flow_cluster
from tasks.evaluate import evaluate, log_evaluation
from tasks.generate import generate
from tasks.preflight import preflight
from tasks.preprocess import preprocess
from tasks.tracking import (
    finish_run,
    log_artifacts,
    mark_failed,
    plot_training_curves,
    record_dataset,
    register_model,
    start_run,
)
from tasks.train import train_model


@flow(
    name="genpar-pipeline",
    flow_run_name="{config.name}-{config.model.name}-{config.data.source}",
    on_failure=[mark_failed],
    on_crashed=[mark_failed],
    on_cancellation=[mark_failed],
)
def pipeline(config: PipelineConfig = PipelineConfig()) -> dict[str, Any]:  # noqa: B008
    """Preprocess, train, evaluate and sample one generative model; track it all in MLflow.
    The Dask stages on either side of training share a cluster, started by the first that
    needs it and closed before training (idle workers take CPU from it; tasks/cluster.py)."""
    with flow_cluster() as dask:
        uri = preflight(config)
        shards_dir = preprocess(config)
        run = start_run(config, uri, shards_dir)
        record_dataset(run, shards_dir)
        dask.close()  # no Dask beside training
        trained = train_model(config, shards_dir, run)
        model_dir = str(Path(trained["model_path"]).parent)
        eval_dir = str(Path(run.run_dir) / "eval")
        report = evaluate(config, shards_dir, model_dir, eval_dir)
        log_evaluation(run.uri, run.run_id, report, eval_dir)
        samples = generate(config, model_dir, run.run_dir)
        dask.close()  # generation was the last stage that may use it
        curves = plot_training_curves(run, config)
        artifacts = {
            "model": model_dir,
            "samples": str(Path(run.run_dir) / "samples" / "grid.png"),
            "plots": curves,
            "train": str(Path(run.run_dir) / "result.json"),
        }
        final = {
            "train/final_step": float(trained["step"]),
            "train/wall_s": trained["wall_s"],
            **samples,
            **dask.metrics(),  # clusters started, their start-up and close seconds
        }
        log_artifacts(config, run, artifacts, final)
        scored = {**final, **report["metrics"]}  # eval/ metrics were logged by log_evaluation
        version = register_model(config, run, scored)
        summary = finish_run(run, scored, version)
        publish_run_report(config, summary)
        return summary
