"""Prefect task: preprocessing of the configured source into a verified shard set, its
partitions on Dask when that pays (data.parallel)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from genpar_models.config import PipelineConfig
from genpar_models.data.preprocess import build_shard_set, process_partition
from genpar_models.data.sources import PartitionSpec
from genpar_models.util.paths import shards_root
from tasks.common import retry_unless_user_error, run_logger
from tasks.dask_stage import here_or_on_dask, map_with_progress


@task(
    name="preprocess",
    task_run_name="preprocess-{config.data.source}",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def preprocess(config: PipelineConfig) -> str:
    """Return the directory of the committed shard set, building it only if the key is new."""
    return str(build_shards(config))


def build_shards(config: PipelineConfig, *, rebuild: bool = False) -> Path:
    """The committed shard set of `config.data`, its partitions decoded on Dask when that pays
    (data.parallel; the shards are the same either way). `rebuild`
    builds it again even when it exists, and swaps the new set in whole: a run reading the old
    one meanwhile never finds it missing or half-written."""
    log = run_logger()

    def here(spec: PartitionSpec, staging: str) -> dict[str, Any]:
        return process_partition(spec, cfg=config.data, staging=staging)

    def on_dask(client: Any, specs: list[PartitionSpec], staging: str) -> list[dict[str, Any]]:
        return map_with_progress(
            client,
            process_partition,
            specs,
            cfg=config.data,
            staging=staging,
            label="preprocess",
            report=log.info,
        )

    def run_partitions(specs: list[PartitionSpec], staging: str) -> list[dict[str, Any]]:
        return here_or_on_dask(
            config.data.parallel,
            config.compute,
            specs,
            lambda spec: here(spec, staging),
            lambda client, rest: on_dask(client, rest, staging),
            label="preprocess",
            report=log.info,
        )

    return build_shard_set(config.data, shards_root(), run_partitions, log, rebuild=rebuild)
