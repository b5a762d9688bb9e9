"""Where a Dask stage's items run (this process or the flow run's cluster) and its progress.

`here_or_on_dask` decides by the stage's `parallel` setting, and for `auto` by the first item's
measured time against what a cluster costs; the cluster itself comes from `tasks.cluster`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from genpar_models.config import ComputeConfig
from genpar_models.util import malloc
from tasks.cluster import dask_client, local_workers

if TYPE_CHECKING:  # imported by the first stage that runs on Dask (tasks/cluster.py)
    from distributed import Client

# What a LocalCluster costs before its first result: start-up, each worker loading what it
# needs, and closing it (measured on this project's 2-core machine: about 2.2 s a stage, see
# benchmarks/results/latest.md). `auto` stages compare it with the in-process time it saves.
CLUSTER_COST_S = 2.5


def dask_pays(item_s: float, items_left: int, workers: int) -> bool:
    """Whether a LocalCluster of `workers` finishes `items_left` items of `item_s` seconds
    each sooner than this process does alone (one thread per item either way)."""
    alone = item_s * items_left
    return workers > 1 and CLUSTER_COST_S + alone / workers < alone


def here_or_on_dask(
    mode: str,
    cfg: ComputeConfig,
    items: list[Any],
    run_here: Callable[[Any], dict[str, Any]],
    run_on_dask: Callable[[Client, list[Any]], list[dict[str, Any]]],
    *,
    label: str,
    report: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Results of every item. `mode` is a stage's `parallel`:
    dask (compute.dask_address, else a LocalCluster), local (this process), auto (a cluster
    when compute.dask_address names one; otherwise the first item here, and the rest on a
    LocalCluster only when its measured time says the start-up pays: `dask_pays`)."""
    malloc.tune()  # items run here too (genpar_models/util/malloc.py)
    done: list[dict[str, Any]] = []
    rest = items
    if items and (mode == "local" or (mode == "auto" and not cfg.dask_address)):
        t0 = time.perf_counter()
        done.append(run_here(items[0]))
        rest = items[1:]
        if mode == "local" or not dask_pays(
            time.perf_counter() - t0, len(rest), local_workers(cfg)
        ):
            why = "" if mode == "local" else " (a cluster would not pay)"
            report(f"{label}: {len(items)} in this process{why}")
            step = max(1, len(items) // 10)
            for i, item in enumerate(rest, start=2):
                done.append(run_here(item))
                if i % step == 0 or i == len(items):
                    report(f"{label}: {i}/{len(items)} done")
            return done
    if not rest:
        return done
    with dask_client(cfg, label) as client:
        return done + run_on_dask(client, rest)


def map_with_progress(
    client: Client,
    fn: Callable[..., dict[str, Any]],
    *iterables: list[Any],
    label: str,
    report: Callable[[str], None],
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """client.map(fn, *iterables, **kwargs), reporting progress about every 10%; results in
    completion order (each carries its own index)."""
    from distributed import as_completed

    client.run(malloc.tune)  # workers of any cluster, started by genpar or not (cheap, once)
    futures = client.map(fn, *iterables, pure=False, **kwargs)
    total = len(futures)
    results, step = [], max(1, total // 10)
    try:
        for i, fut in enumerate(as_completed(futures), start=1):
            results.append(fut.result())
            if i % step == 0 or i == total:
                report(f"{label}: {i}/{total} done")
    finally:
        client.cancel(futures)
    return results
