"""Prefect tasks of the evaluation: score a model, resolve a model reference, record the scorecard.

The pipeline and the `genpar-evaluate` flow run the same two tasks, `evaluate` then
`log_evaluation`, so a model scored after training and one scored again later carry the same
scorecard, protocols and artifacts. Generated samples are drawn and featurised in blocks: on
Dask workers when the config names a cluster (or evaluate.parallel=dask), otherwise batched in
this process, on the GPU when there is one. A sequence model's series are drawn the same way
(its seeded blocks on Dask workers or here, the same values) and scored in this process.

torch and the scorecard's modules are imported by the functions that use them, not here: the
pipeline flow imports this module before its first task, and the CLI's start-up should not
pay torch's import (issue 18; tests/unit/test_layers.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from genpar_models.config import PipelineConfig
from genpar_models.util import atomic, seeding
from genpar_models.util.paths import genpar_home
from tasks import mlflow_store as store
from tasks import registry
from tasks.cluster import dask_client
from tasks.common import retry_unless_user_error, run_logger
from tasks.dask_stage import map_with_progress
from tasks.scorecard import record_scorecard


def eval_device(config: PipelineConfig) -> str:
    import torch

    if config.compute.device != "cpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def use_dask(config: PipelineConfig) -> bool:
    mode = config.evaluate.parallel
    return mode == "dask" or (mode == "auto" and config.compute.dask_address is not None)


def _generate_on_dask(config: PipelineConfig, model_dir: str, extractor_dir: str) -> Any:
    from genpar_models.eval.samples import block_plan, collect, generated_block

    plan = block_plan(config.evaluate.num_samples)
    with dask_client(config.compute, "evaluate") as client:
        blocks = map_with_progress(
            client,
            generated_block,
            [i for i, _ in plan],
            [n for _, n in plan],
            model_dir=model_dir,
            extractor_dir=extractor_dir,
            seed=seeding.evaluation(config.evaluate.seed),
            feature_batch=config.evaluate.batch_size,
            label="evaluate: sample blocks",
            report=run_logger().info,
        )
    return collect(blocks)


def _series_on_dask(config: PipelineConfig, model_dir: str) -> Any:
    """A sequence model's generated series for the scorecard, in the seeded blocks the
    evaluation draws in process (the same values), on Dask workers."""
    from genpar_models.eval.samples import block_plan
    from genpar_models.eval.sequence_scorecard import collect_series, series_block

    plan = block_plan(config.evaluate.num_samples)
    with dask_client(config.compute, "evaluate") as client:
        blocks = map_with_progress(
            client,
            series_block,
            [i for i, _ in plan],
            [n for _, n in plan],
            model_dir=model_dir,
            seed=seeding.evaluation(config.evaluate.seed),
            label="evaluate: sample blocks",
            report=run_logger().info,
        )
    return collect_series(blocks)


def _generated(config: PipelineConfig, model_dir: str, extractor_dir: str) -> Any:
    """Generated samples drawn on Dask (evaluate.parallel), else None: drawn by the scorecard."""
    if not use_dask(config):
        return None
    if config.data.modality == "sequences":
        return _series_on_dask(config, model_dir)
    return _generate_on_dask(config, model_dir, extractor_dir)


@task(
    name="evaluate",
    task_run_name="evaluate-{config.model.name}-{config.data.source}",
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def evaluate(
    config: PipelineConfig, shards_dir: str, model_dir: str, out_dir: str
) -> dict[str, Any]:
    """Score the model; write <out_dir>/report.json and report.md; return the report."""
    from genpar_models.eval.scorecard import evaluate_model, prepare, report_markdown

    log, device, t0 = run_logger(), eval_device(config), time.perf_counter()
    prepared = prepare(shards_dir, config.evaluate, device=device)
    prepare_s = time.perf_counter() - t0
    generated = _generated(config, model_dir, str(prepared[0].directory))
    report = evaluate_model(
        model_dir,
        shards_dir,
        config,
        prepared=prepared,
        generated=generated,
        device=device,
        plots_dir=Path(out_dir),  # sequences: real vs generated, PCA (logged under eval/)
    )
    # The whole stage, including training the extractor when this dataset has none yet.
    report["metrics"]["eval/seconds"] = time.perf_counter() - t0
    report["timings"].update(prepare_s=prepare_s, total_s=report["metrics"]["eval/seconds"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "report.json", report, sort_keys=False)
    atomic.write_text(out / "report.md", report_markdown(report))
    cache = report["cache"]
    log.info("evaluation on %s: %s extractor, %s reference", device, *cache.values())
    log.info("scorecard: %s", ", ".join(f"{k}={v:.4g}" for k, v in report["metrics"].items()))
    return report


@task(name="resolve-model", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def resolve_model(
    model: str, uri: str, default_name: str | None, named: bool = True
) -> dict[str, str | None]:
    """A model reference -> {model_dir, run_id, name, version, config_yaml} (local paths).

    A bare `champion` is `default_name`'s champion when `named`, else the one genpar model
    that has a champion.
    """
    client = store.connect(uri)
    model = registry.champion_ref(client, model, default_name if named else None)
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


@task(
    name="log-evaluation",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def log_evaluation(
    uri: str, run_id: str, report: dict[str, Any], report_dir: str, log_to: str = "run"
) -> str:
    """Record the scorecard (metrics, protocols, extractor, report) on the run or a child run.

    Returns the id of the run it was recorded on.
    """
    target = record_scorecard(uri, run_id, report, report_dir, log_to=log_to)
    run_logger().info("scorecard recorded on MLflow run %s", target)
    return target
