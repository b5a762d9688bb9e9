"""Prefect task: Dask-parallel preprocessing of the configured source into a verified shard set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from genpar_models.config import PipelineConfig
from genpar_models.data.preprocess import build_shard_set, process_partition
from genpar_models.data.sources import PartitionSpec
from genpar_models.util.paths import shards_root
from tasks.cluster import dask_client, map_with_progress
from tasks.common import retry_unless_user_error, run_logger


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
    """The committed shard set of `config.data`, its partitions decoded on Dask. `rebuild`
    builds it again even when it exists, and swaps the new set in whole: a run reading the old
    one meanwhile never finds it missing or half-written."""
    log = run_logger()

    def on_dask(specs: list[PartitionSpec], staging: str) -> list[dict[str, Any]]:
        with dask_client(config.compute) as client:
            return map_with_progress(
                client,
                process_partition,
                specs,
                cfg=config.data,
                staging=staging,
                label="preprocess",
                report=log.info,
            )

    return build_shard_set(config.data, shards_root(), on_dask, log, rebuild=rebuild)
