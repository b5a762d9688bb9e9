"""The compress flow: build and measure inference variants of a logged model's sampler.

`model` is a model reference as for `genpar evaluate`. The run's own config decides the data
and the evaluation protocol; `compress.*` decides the variants, the fine-tuning of pruned ones
and the quality budget. See tasks/compress.py for where the results go.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.evaluate import prepare_model
from genpar_models.config import PipelineConfig
from genpar_models.util.paths import report_dir
from tasks.cluster import flow_cluster
from tasks.compress import compress_model, log_compression


@flow(name="genpar-compress", flow_run_name="compress-{model}")
def compress_flow(
    model: str, config: PipelineConfig | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Measure fp32/bf16/fp16/compile/int8/pruned variants; register the best within budget.

    Without `config`, the model run's own config is used, with `overrides` applied.
    """
    with flow_cluster():  # only the shard set may need Dask: closed before compressing
        uri, found, cfg, shards_dir = prepare_model(model, config, overrides)
    out_dir = str(report_dir("compress", model))
    result = compress_model(cfg, shards_dir, found["model_dir"], out_dir)
    logged = log_compression(uri, found["run_id"], cfg, result, out_dir) if found["run_id"] else {}
    return {
        "model": model,
        "run_id": found["run_id"],
        **result,
        "logged": logged,
        "out_dir": out_dir,
    }
