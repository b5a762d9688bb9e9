"""Prefect task: evaluate the trained model on the test split and write the report."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from genpar_models.config import PipelineConfig
from genpar_models.evaluate import evaluate_model, report_markdown
from tasks.common import run_logger
from tasks.tracking import RunHandle


@task(
    name="evaluate",
    task_run_name="evaluate-{config.model.name}-{config.data.source}",
    cache_policy=NO_CACHE,
)
def evaluate(
    config: PipelineConfig, shards_dir: str, model_dir: str, run: RunHandle
) -> dict[str, float]:
    """Score the model; write eval/report.json and report.md; return the eval/… metrics."""
    report = evaluate_model(model_dir, shards_dir, config)
    out = Path(run.run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(report_markdown(report))
    run_logger().info(
        "evaluation: %s", ", ".join(f"{k}={v:.4g}" for k, v in report["metrics"].items())
    )
    return report["metrics"]
