"""The Dask cluster a stage runs on: an existing scheduler by address, or a LocalCluster.

The task owns the cluster for the length of one stage (`with dask_client(...)`), so no Dask
worker runs during training on the same machine. Workers are processes with one thread each
(decoding is Python-heavy and holds the GIL; shared/STACK.md section 4.1), sized to the cores.
Everything a LocalCluster opens (scheduler, workers, its HTTP server) binds to 127.0.0.1.
Per-partition functions are plain genpar_models functions, not Prefect tasks, so no worker
ever starts a Prefect API server of its own (shared/STACK.md section 1.2).

Dask's nanny sets its `pre-spawn-environ` (MALLOC_TRIM_THRESHOLD_=65536, OMP/MKL/OPENBLAS
threads = 1) in the *parent's* os.environ before spawning each worker, and leaves it there.
A fixed MALLOC_TRIM_THRESHOLD_ switches off glibc's adaptive mmap threshold, so every large
tensor allocation becomes a fresh mmap and page-faults on first touch: measured here, the same
28x28 VAE sampling ran 1.6x slower with it, in the Dask workers and in every torchrun rank the
flow started after a Dask stage. `local_cluster` therefore drops that variable for genpar's
workers and restores the parent's environment when the cluster has started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import dask
import psutil
from distributed import Client, LocalCluster, as_completed

from genpar_models.config import ComputeConfig
from genpar_models.errors import ConfigError
from genpar_models.util import atomic
from genpar_models.util.cores import available_cores
from genpar_models.util.paths import genpar_home, read_probe


def local_workers(cfg: ComputeConfig) -> int:
    return cfg.dask_workers or available_cores()


_PRE_SPAWN = "distributed.nanny.pre-spawn-environ"


def _restore(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def local_cluster(n_workers: int, memory_limit: int | str = "auto") -> Iterator[LocalCluster]:
    """A LocalCluster of one-thread worker processes on 127.0.0.1, without Dask's malloc trim
    setting, and without leaving the nanny's variables in this process's os.environ (module
    docstring); a worker restarted mid-stage writes them again, so they are restored at the
    end too."""
    saved = {k: os.environ.get(k) for k in dask.config.get(_PRE_SPAWN, {})}
    try:
        with dask.config.set({f"{_PRE_SPAWN}.MALLOC_TRIM_THRESHOLD_": None}):
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                memory_limit=memory_limit,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                silence_logs=logging.WARNING,
            )
        _restore(saved)
        with cluster:
            yield cluster
    finally:
        _restore(saved)


@contextlib.contextmanager
def dask_client(cfg: ComputeConfig) -> Iterator[Client]:
    """A distributed.Client for one stage; a LocalCluster is closed when the stage ends."""
    for name in ("distributed", "distributed.worker", "distributed.nanny", "bokeh", "tornado"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if cfg.dask_address:
        with Client(cfg.dask_address, timeout="30s") as client:
            yield client
        return
    n = local_workers(cfg)
    memory = int(0.8 * psutil.virtual_memory().total / n)
    with local_cluster(n, memory) as cluster, Client(cluster) as client:
        yield client


def check_shared_home(address: str, timeout_s: float = 30.0) -> int:
    """Fail unless every worker of the cluster at `address` reads a file this process writes
    under the genpar home (workers read sources and write shards there, at the same paths).
    Returns the number of workers.

    Raises:
        ConfigError: no worker connected, or a worker that does not see the file, named with
            what it saw.
    """
    home = genpar_home()
    probe = home / "tmp" / f"dask-probe-{uuid.uuid4().hex}"
    probe.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    atomic.write_text(probe, token)
    try:
        with Client(address, timeout=f"{timeout_s:.0f}s") as client:
            seen = client.run(read_probe, str(probe), token)
    finally:
        probe.unlink(missing_ok=True)
    if not seen:
        raise ConfigError(f"compute.dask_address={address}: the scheduler has no workers")
    blind = {w: why for w, why in seen.items() if why is not True}
    if blind:
        detail = "; ".join(f"{w}: {why}" for w, why in sorted(blind.items()))
        raise ConfigError(
            f"compute.dask_address={address}: {len(blind)} of {len(seen)} Dask worker(s) do "
            f"not see the genpar home {home} (they must share it, at the same path, to read "
            f"sources and write shards; see infra/README.md, 'An existing Dask cluster'): "
            f"{detail}"
        )
    return len(seen)


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
    with dask_client(cfg) as client:
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
