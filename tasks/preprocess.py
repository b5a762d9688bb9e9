"""Prefect task: Dask-parallel preprocessing of the configured source into a verified shard set."""

from __future__ import annotations

import shutil
import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from genpar_models.config import PipelineConfig
from genpar_models.errors import ShardError
from genpar_models.paths import shards_root
from genpar_models.preprocess import finish_shard_set, new_staging_dir, process_partition
from genpar_models.shards import open_shard_set, remove_dead_staging, shard_set_key
from genpar_models.sources import plan_partitions
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
    log = run_logger()
    info, specs = plan_partitions(config.data)
    key = shard_set_key(info.fingerprint, config.data)
    final = shards_root() / key
    if (final / "manifest.json").exists():
        try:
            manifest = open_shard_set(final).manifest
            log.info(
                "reusing shards %s (%d samples, unchanged input %s)",
                final,
                manifest.total,
                info.fingerprint[:12],
            )
            return str(final)
        except ShardError as e:  # damaged on disk: rebuild rather than train on it
            log.warning("shard set %s failed verification, rebuilding: %s", final, e)
            shutil.rmtree(final)
    remove_dead_staging(shards_root())
    staging = new_staging_dir(shards_root(), key)
    log.info(
        "preprocessing %s: %d samples in %d partitions -> %s",
        info.uri,
        info.num_items,
        len(specs),
        final,
    )
    if info.ignored_files:
        log.warning(
            "ignored %d non-image file(s), e.g. %s",
            len(info.ignored_files),
            ", ".join(info.ignored_files[:3]),
        )
    t0 = time.perf_counter()
    try:
        with dask_client(config.compute) as client:
            parts = map_with_progress(
                client,
                process_partition,
                specs,
                cfg=config.data,
                staging=str(staging),
                label="preprocess",
                report=log.info,
            )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = finish_shard_set(
        key=key, info=info, cfg=config.data, staging=staging, final=final, parts=parts
    )
    log.info(
        "wrote %d samples (train %d / val %d / test %d, %d skipped) in %.1f s",
        manifest.total,
        manifest.splits["train"].count,
        manifest.splits["val"].count,
        manifest.splits["test"].count,
        manifest.skipped["count"],
        time.perf_counter() - t0,
    )
    return str(final)
