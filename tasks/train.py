"""Prefect task: train with torchrun as a subprocess (DDP over GPUs or CPU gloo ranks)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from genpar_models.config import PipelineConfig
from genpar_models.train.runspec import RunSpec, TrackingTarget
from genpar_models.util.paths import genpar_home
from tasks import mlflow_store as store
from tasks import registry, served_model
from tasks.common import import_meanwhile, run_logger
from tasks.launcher import cuda_device_count, launch_training, plan_processes
from tasks.tracking import RunHandle

# What the evaluation after training imports first (its metrics: torchmetrics' FID), loaded
# in this process while torchrun trains (tasks/common.py import_meanwhile), and then what the
# model's registration would build first (served_model.warm_requirements_check).
IMPORT_AHEAD = ("torch", "torchmetrics.image.fid")


def _init_model_dir(config: PipelineConfig, uri: str) -> str | None:
    """train.init_from (a model reference) as a local model directory, for a warm start."""
    if not config.train.init_from:
        return None
    found = registry.resolve(
        store.connect(uri),
        config.train.init_from,
        default_name=config.registered_model_name,
        cache=genpar_home() / "cache" / "models",
    )
    return str(found.model_dir)


def check_labelled(config: PipelineConfig, shards_dir: str) -> int | None:
    """model.conditional's check of the shard set (ConfigError naming the field when the data
    has no labels); the ranks check it again."""
    from genpar_models.data.shards import open_shard_set
    from genpar_models.models.conditioning import classes_for_training

    shardset = open_shard_set(shards_dir, verify=False)
    labels = shardset.load("train")[1]
    where = f"data.source {config.data.source!r} ({shards_dir})"
    return classes_for_training(config.model, shardset.manifest.num_classes, labels, where)


# retries=0: torchrun's --max-restarts handles rank failures; a re-run of the flow resumes.
@task(
    name="train",
    task_run_name="train-{config.model.name}-{config.data.source}",
    retries=0,
    cache_policy=NO_CACHE,
)
def train_model(
    config: PipelineConfig,
    shards_dir: str,
    run: RunHandle,
    stop_at_step: int | None = None,
    extra_env: dict[str, str] | None = None,
    cuda_devices: int | None = None,
) -> dict[str, Any]:
    """Launch torchrun on the run spec; return result.json (checkpoint, model path, metrics),
    with `timing` (torchrun's start and end, epoch seconds).

    `stop_at_step` trains only up to that step (a sweep's rung); `extra_env` is added to the
    ranks' environment (a sweep's CUDA_VISIBLE_DEVICES), and `cuda_devices` the GPUs it leaves
    the job (default: every visible one)."""
    log = run_logger()
    if config.model.conditional:  # refused here, before any rank starts, on unlabelled data
        from genpar_models.models.conditioning import check_label

        classes = check_labelled(config, shards_dir)  # and a class to sample the data lacks
        check_label(classes or 0, config.generate.label, "generate.label")
    if config.data.modality == "images":  # a split too small to score: before training, too
        from genpar_models.data.shards import open_shard_set
        from genpar_models.eval.splits import check_split_sizes

        check_split_sizes(open_shard_set(shards_dir, verify=False), config.evaluate)
    gpus = cuda_device_count() if cuda_devices is None else cuda_devices
    plan = plan_processes(config.compute, gpus)
    run_dir = Path(run.run_dir)
    spec = RunSpec(
        config=config,
        shards_dir=shards_dir,
        run_dir=str(run_dir),
        train_key=run.train_key,
        threads_per_proc=plan.threads_per_proc,
        tracking=TrackingTarget(uri=run.uri, run_id=run.run_id),
        init_model_dir=_init_model_dir(config, run.uri),
        stop_at_step=stop_at_step,
    )
    spec.result_path.unlink(missing_ok=True)
    log_dir = run_dir / "torchrun" / time.strftime("launch-%Y%m%d-%H%M%S")
    log.info(
        "launching %d %s rank(s), %d thread(s) each; torchrun logs in %s",
        plan.nproc,
        plan.device,
        plan.threads_per_proc,
        log_dir,
    )
    started = time.time()
    import_meanwhile(*IMPORT_AHEAD, then=served_model.warm_requirements_check)
    launch_training(spec, plan, log_dir=log_dir, on_line=log.info, extra_env=extra_env)
    result = json.loads(spec.result_path.read_text())
    result["timing"] = {"torchrun_start": started, "torchrun_end": time.time()}
    pending = result.pop("pending_metrics", [])
    if pending:
        log.warning(
            "MLflow was unreachable at the end of training; retrying %d metrics", len(pending)
        )
        store.log_pending(run.uri, run.run_id, pending, where=spec.result_path)
    return result
