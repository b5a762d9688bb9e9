"""Prefect task: evaluate the trained model on the test split and write the report."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from genpar_models.config import PipelineConfig
from genpar_models.evaluate import evaluate_model, report_markdown
from genpar_models.paths import genpar_home
from tasks import mlflow_store as store
from tasks import registry
from tasks.common import run_logger


@task(
    name="evaluate",
    task_run_name="evaluate-{config.model.name}-{config.data.source}",
    cache_policy=NO_CACHE,
)
def evaluate(
    config: PipelineConfig, shards_dir: str, model_dir: str, out_dir: str
) -> dict[str, float]:
    """Score the model; write <out_dir>/report.json and report.md; return the eval/… metrics."""
    report = evaluate_model(model_dir, shards_dir, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(report_markdown(report))
    run_logger().info(
        "evaluation: %s", ", ".join(f"{k}={v:.4g}" for k, v in report["metrics"].items())
    )
    return report["metrics"]


@task(name="resolve-model", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def resolve_model(model: str, uri: str, default_name: str | None) -> dict[str, str | None]:
    """A model reference -> {model_dir, run_id, name, version, config_yaml} (local paths)."""
    client = store.connect(uri)
    resolved = registry.resolve(
        client, model, default_name=default_name, cache=genpar_home() / "cache" / "models"
    )
    config_yaml = None
    if resolved.run_id:
        config_yaml = client.download_artifacts(
            resolved.run_id, "config.yaml", str(resolved.model_dir.parent)
        )
    run_logger().info("model %s -> %s (run %s)", model, resolved.model_dir, resolved.run_id)
    return {
        "model_dir": str(resolved.model_dir),
        "run_id": resolved.run_id,
        "name": resolved.name,
        "version": resolved.version,
        "config_yaml": config_yaml,
    }


@task(name="log-evaluation", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def log_evaluation(uri: str, run_id: str, metrics: dict[str, float], report_dir: str) -> None:
    """Record an evaluation on the model's own run: eval/ metrics and the report artifacts."""
    client = store.connect(uri)
    step = len(client.get_metric_history(run_id, next(iter(metrics)))) if metrics else 0
    store.log_metrics(client, run_id, metrics, step=step)
    client.log_artifacts(run_id, report_dir, "eval")
