"""The evaluate flow: score any logged model without retraining, and record the scorecard.

`model` is a model reference (a run id, `models:/name@alias`, `champion`, or a model
directory; see tasks/registry.py). The run's own config decides the data: its shard set is
reused when present, rebuilt from the same source otherwise. The scorecard goes to the model's
run, or to a child run when that run already holds a scorecard of another protocol
(`evaluate.log_to`; see tasks/scorecard.py). The pipeline runs the same two tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from genpar_models.config import PipelineConfig, load_config
from genpar_models.util.paths import report_dir
from tasks.cluster import flow_cluster
from tasks.evaluate import evaluate, log_evaluation, resolve_model
from tasks.preflight import preflight
from tasks.preprocess import preprocess


def config_of(
    found: dict[str, Any],
    config: PipelineConfig | None,
    base: PipelineConfig,
    overrides: list[str] | None = None,
) -> PipelineConfig:
    """The config to score with: the given one, else the model run's own with `overrides`
    (dotted key=value) applied; tracking always from `base`."""
    if config is not None:
        cfg = config
    elif found["config_yaml"]:
        cfg = load_config(found["config_yaml"], overrides or [])
    else:
        cfg = load_config(None, overrides or [])
    return cfg.model_copy(update={"tracking": base.tracking})


def prepare_model(
    model: str, config: PipelineConfig | None, overrides: list[str] | None
) -> tuple[str, dict[str, Any], PipelineConfig, str]:
    """The steps every flow on a logged model starts with: check the tracking store, resolve
    `model`, settle its config (see `config_of`) and make sure its shard set exists.

    Returns (tracking uri, the resolved model, the config, the shard set directory).
    """
    base = config or PipelineConfig()
    uri = preflight(base)
    found = resolve_model(model, uri, base.registered_model_name)
    cfg = config_of(found, config, base, overrides)
    return uri, found, cfg, preprocess(cfg)


@flow(name="genpar-evaluate", flow_run_name="evaluate-{model}")
def evaluate_flow(
    model: str, config: PipelineConfig | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Evaluate `model` on its data's held-out split; record the scorecard in MLflow.

    Without `config`, the model run's own config is used, with `overrides` applied.
    """
    with flow_cluster():  # a rebuilt shard set and the sample blocks share one cluster
        uri, found, cfg, shards_dir = prepare_model(model, config, overrides)
        out_dir = str(report_dir("evaluate", model))
        report = evaluate(cfg, shards_dir, found["model_dir"], out_dir)
    logged_to = None
    if found["run_id"]:
        logged_to = log_evaluation(uri, found["run_id"], report, out_dir, cfg.evaluate.log_to)
    return {
        "model": model,
        "run_id": found["run_id"],
        "logged_to": logged_to,
        "metrics": report["metrics"],
        "protocols": report["protocols"],
        "protocol_ids": report["protocol_ids"],
        "cache": report["cache"],
        "report": str(Path(out_dir) / "report.md"),
    }
