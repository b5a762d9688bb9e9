"""Preprocessing as plain functions: one partition in, shards out; then the commit decision.

The Prefect task owns the Dask cluster and maps `process_partition` over the partition specs;
everything here is ordinary Python so it runs the same on a Dask worker, in a test, or in a
loop. Output goes to a staging directory (genpar_models/util/atomic.py) that is renamed to
the set's content address once `finish_shard_set` has written its manifest; when bad samples
must fail the run, it raises with the list of them and the staging directory is removed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genpar_models.config import DataConfig
from genpar_models.data import manifest as manifests
from genpar_models.data.shards import (
    open_shard_set,
    write_manifest,
    write_partition_shards,
    write_sequence_shards,
)
from genpar_models.data.sources import (
    PartitionSpec,
    SourceInfo,
    load_partition,
    plan_partitions,
)
from genpar_models.errors import DataError, ShardError
from genpar_models.util import atomic

MAX_BAD_IN_MESSAGE = 20


def process_partition(spec: PartitionSpec, cfg: DataConfig, staging: str) -> dict[str, Any]:
    """Decode, validate and normalise one partition, then write its shards into `staging`.

    Returns a small summary (shard entries, pixel sums, bad samples): safe to send back
    through Dask, never the pixels themselves.
    """
    part = load_partition(spec, cfg)
    summary: dict[str, Any] = {"index": spec.index, "shards": {}, "max_label": -1}
    if len(part.ids) and part.lengths is not None:
        summary = write_sequence_shards(
            index=spec.index,
            ids=part.ids,
            values=part.images,
            lengths=part.lengths,
            labels=part.labels,
            out_dir=Path(staging),
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
        )
    elif len(part.ids):
        summary = write_partition_shards(
            index=spec.index,
            ids=part.ids,
            images=part.images,
            labels=part.labels,
            out_dir=Path(staging),
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
        )
    summary["bad"] = [list(b) for b in part.bad]
    summary["count"] = len(part.ids)
    return summary


def format_bad(bad: list[tuple[str, str]], source: str) -> str:
    lines = [f"{len(bad)} bad sample(s) in {source}:"]
    lines += [f"  {sid}: {reason}" for sid, reason in bad[:MAX_BAD_IN_MESSAGE]]
    if len(bad) > MAX_BAD_IN_MESSAGE:
        lines.append(f"  … and {len(bad) - MAX_BAD_IN_MESSAGE} more")
    lines.append("Fix or remove them, or set data.on_bad=skip to leave them out.")
    return "\n".join(lines)


def finish_shard_set(
    *,
    key: str,
    info: SourceInfo,
    cfg: DataConfig,
    staging: Path,
    parts: list[dict[str, Any]],
) -> manifests.Manifest:
    """Decide fail/skip for bad samples, then build the manifest and write it into `staging`.

    Raises:
        DataError: bad samples with on_bad=fail, nothing usable left, or an empty train
            split. The caller's staging directory is then removed: nothing half-written stays.
    """
    bad = [
        (str(b[0]), str(b[1])) for p in sorted(parts, key=lambda p: p["index"]) for b in p["bad"]
    ]
    good = sum(p["count"] for p in parts)
    if bad and cfg.on_bad == "fail":
        raise DataError(format_bad(bad, info.uri))
    if good == 0:
        raise DataError(f"{info.uri}: no usable samples ({len(bad)} bad)")
    manifest = manifests.build_manifest(
        key=key,
        source={"kind": info.kind, "uri": info.uri, "fingerprint": info.fingerprint},
        data_cfg=cfg,
        class_names=list(info.class_names),
        parts=parts,
        bad=bad,
        sequence_shape=info.sequence_shape,
    )
    if manifest.splits["train"].count == 0:
        raise DataError(
            f"{info.uri}: the train split is empty ({good} samples); lower "
            "data.val_fraction/data.test_fraction or add data"
        )
    write_manifest(staging, manifest)
    return manifest


RunPartitions = Callable[[list[PartitionSpec], str], list[dict[str, Any]]]


def _reusable(final: Path, info: SourceInfo, log: logging.Logger) -> bool | None:
    """True: a committed set with this key verifies; False: none; None: one exists but is
    damaged (it is rebuilt and swapped in whole, not deleted first)."""
    if not (final / manifests.MANIFEST).exists():
        return False
    try:
        manifest = open_shard_set(final).manifest
    except ShardError as e:  # damaged on disk: rebuild rather than train on it
        log.warning("shard set %s failed verification, rebuilding: %s", final, e)
        return None
    log.info(
        "reusing shards %s (%d samples, unchanged input %s)",
        final,
        manifest.total,
        info.fingerprint[:12],
    )
    return True


def build_shard_set(
    cfg: DataConfig,
    root: Path,
    run_partitions: RunPartitions,
    log: logging.Logger | logging.LoggerAdapter,
    *,
    rebuild: bool = False,
) -> Path:
    """The committed shard set for `cfg`: reused when its key exists, else built.

    `run_partitions(specs, staging_dir)` runs `process_partition` over every spec (the caller
    decides where: a Dask cluster, a loop) and returns their summaries. If another run
    commits the same key first, its set is used (same key, same input and config). `rebuild`
    builds the set even when it exists and swaps it in whole (the old one stays readable
    until then, and a reader never finds the key missing).
    """
    info, specs = plan_partitions(cfg)
    key = manifests.shard_set_key(info.fingerprint, cfg)
    final = root / key
    reusable = None if rebuild else _reusable(final, info, log)
    if reusable:
        return final
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
    with atomic.staged_directory(final, replace=reusable is None) as staging:
        parts = run_partitions(specs, str(staging))
        manifest = finish_shard_set(key=key, info=info, cfg=cfg, staging=staging, parts=parts)
    split = {s: e.count for s, e in manifest.splits.items()}
    log.info(
        "wrote %d samples (train %d / val %d / test %d, %d skipped) in %.1f s",
        manifest.total,
        split["train"],
        split["val"],
        split["test"],
        manifest.skipped["count"],
        time.perf_counter() - t0,
    )
    return final
