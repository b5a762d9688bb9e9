"""Prefect tasks of `genpar compress`: measure the variants, then record and register the best.

The measurements land on a child run of the model's run (`compress-<variant>`): per-variant
`compress/<variant>/<column>` metrics, the table (Markdown and JSON) and the quality-versus-
speed plot under `compress/`, and the chosen variant as its `model` artifact, registered as a
new version of `<registered name>-compressed` tagged with its measurements. Like every genpar
version it is a pyfunc model from code around safetensors + JSON (tasks/served_model.py),
never a pickled flavor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from genpar_models.config import PipelineConfig
from genpar_models.eval.compression import (
    measure_variants,
    plot_quality_vs_speed,
    rows_as_metrics,
    table_markdown,
)
from genpar_models.eval.protocol import QUALITY, TAG_PREFIX, protocol_id
from genpar_models.eval.scorecard import prepare
from genpar_models.util import atomic
from tasks import mlflow_store as store
from tasks import registry, served_model, uploads
from tasks.common import retry_unless_user_error, run_logger
from tasks.evaluate import eval_device
from tasks.registry import MODEL_ARTIFACT
from tasks.scorecard import TAG_PARENT


@task(
    name="compress",
    task_run_name="compress-{config.model.name}",
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def compress_model(
    config: PipelineConfig, shards_dir: str, model_dir: str, out_dir: str
) -> dict[str, Any]:
    """Build and measure every variant; write table.md/json, the plot and the best variant."""
    device, out = eval_device(config), Path(out_dir)
    prepared = prepare(shards_dir, config.evaluate, device=device)
    result = measure_variants(
        model_dir, shards_dir, config, prepared=prepared, device=device, out_dir=out / "model"
    )
    atomic.write_text(out / "table.md", table_markdown(result))
    atomic.write_json(out / "table.json", result, sort_keys=False)
    plot_quality_vs_speed(result, out / "quality_vs_speed.png")
    run_logger().info("compression (%s):\n%s", device, table_markdown(result))
    return result


@task(name="log-compression", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def log_compression(
    uri: str, run_id: str, config: PipelineConfig, result: dict[str, Any], out_dir: str
) -> dict[str, str]:
    """Record the measurements on a child run and register the best variant."""
    client = store.connect(uri)
    parent = client.get_run(run_id)
    best = result["best"]
    child = client.create_run(
        parent.info.experiment_id,
        run_name=f"compress-{best}",
        tags={TAG_PARENT: run_id, "genpar.compression_of": run_id, "genpar.best_variant": best},
    ).info.run_id
    store.log_params(client, child, parent.data.params)
    store.log_metrics(client, child, rows_as_metrics(result))
    store.set_tags(
        client,
        child,
        {
            f"{TAG_PREFIX}{QUALITY}": protocol_id(result["protocol"]),
            f"{TAG_PREFIX}{QUALITY}.json": json.dumps(result["protocol"], sort_keys=True),
        },
    )
    for name in ("table.md", "table.json", "quality_vs_speed.png"):
        uploads.upload(client, child, Path(out_dir) / name, "compress")
    # The child run's `model` artifact is the chosen variant, so registry references resolve.
    uploads.upload(client, child, Path(out_dir) / "model" / best, MODEL_ARTIFACT)
    row = next(r for r in result["rows"] if r["variant"] == best)
    tags = {k: f"{v:.6g}" for k, v in row.items() if isinstance(v, int | float)}
    name = f"{config.registered_model_name}-compressed"
    model_uri = served_model.log_served_model(
        client,
        child,
        Path(out_dir) / "model" / best,
        binarize=config.data.binarize,
        max_samples=config.generate.max_samples_per_request,
    )
    registry.ensure_registered_model(client, name, "compressed")
    tags |= {"variant": best, "base_run": run_id}
    version = registry.register(client, child, name=name, tags=tags, model_uri=model_uri)
    store.finish(client, child)
    run_logger().info("best variant %s registered as %s version %s", best, name, version)
    return {"run_id": child, "registered_model": name, "version": version}
