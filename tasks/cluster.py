"""The Dask cluster the stages run on: an existing scheduler by address, or a LocalCluster.

A flow run's Dask stages share one cluster at a time: none when no stage needs one, and none
while training runs. A flow that runs Dask stages wraps its body in `flow_cluster()`: the first
stage that asks for Dask (`with dask_client(...)`) starts the LocalCluster (or connects to
`compute.dask_address`), later stages of the same flow run reuse it, and the flow closes it
when no stage needs it for a while (`FlowCluster.close()`) and, at the latest, when the body
ends: by success, an exception or KeyboardInterrupt alike. A subflow inside a flow that holds
one uses that one (the holder is a context variable, which Prefect copies into the threads it
runs tasks in; a lock makes the lazy start safe when tasks run concurrently). A stage called
outside any flow scope (tests, benchmarks, scripts calling a task's function) gets a cluster
for that call, as before.

The pipeline closes it before training, so at most one cluster serves the stages before
training and one those after it: idle workers are not free. Measured on this project's 2-core
machine, an idle 2-worker LocalCluster takes 12% of one core (7.5% in the workers, half of it
their profiler sampling every 10 ms, most of the rest the 20 ms event-loop tick and the system
monitor; 4.5% in this process: scheduler and nannies), 6% of what a 2-rank CPU training has,
for as long as training runs, where a second start-up costs about 2.2 s once
(benchmarks/results/latest.md). Each flow scope counts the clusters it started and their
start-up and close seconds (`FlowCluster.metrics`; the pipeline logs them as `dask/...`).

Workers are processes with one thread each (decoding is Python-heavy and holds the GIL;
shared/STACK.md section 4.1), sized to the cores. Everything a LocalCluster opens (scheduler,
workers, its HTTP server) binds to 127.0.0.1. Per-partition functions are plain genpar_models
functions, not Prefect tasks, so no worker ever starts a Prefect API server of its own
(shared/STACK.md section 1.2).

Its workers run without Dask's statistical profiler (the dashboard's Profile page), which takes
the GIL every 10 ms to walk the task's stack: 9% of their CPU in generation (benchmarks/README.md).

Dask's nanny sets its `pre-spawn-environ` (MALLOC_TRIM_THRESHOLD_=65536, OMP/MKL/OPENBLAS
threads = 1) in the *parent's* os.environ before spawning each worker, and leaves it there.
A fixed MALLOC_TRIM_THRESHOLD_ switches off glibc's adaptive mmap threshold, so every large
tensor allocation becomes a fresh mmap and page-faults on first touch: measured here, the same
28x28 VAE sampling ran 1.6x slower with it, in the Dask workers and in every torchrun rank the
flow started after a Dask stage. `local_cluster` therefore drops that variable for genpar's
workers and restores the parent's environment when the cluster has started; a worker
restarted later writes them again, so they are restored at the end of every stage that used
the cluster, and when it closes.

`distributed` itself (0.3 s of import on 2 cores) is imported by the first stage that needs a
cluster: most small runs start none. This module is longer than 300 lines because the
cluster's life cycle (start, share, count, close) and the nanny's environment it must undo
are one piece.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psutil

from genpar_models.config import ComputeConfig
from genpar_models.errors import ConfigError
from genpar_models.util import atomic
from genpar_models.util.cores import available_cores
from genpar_models.util.paths import genpar_home, read_probe
from tasks.common import run_logger

if TYPE_CHECKING:  # distributed (0.3 s on 2 cores) is imported by the first stage that needs it
    from distributed import Client, LocalCluster


def local_workers(cfg: ComputeConfig) -> int:
    return cfg.dask_workers or available_cores()


_PRE_SPAWN = "distributed.nanny.pre-spawn-environ"


def _pre_spawn_snapshot() -> dict[str, str | None]:
    import dask
    import distributed  # noqa: F401 - registers the nanny's config (_PRE_SPAWN) with dask

    return {k: os.environ.get(k) for k in dask.config.get(_PRE_SPAWN, {})}


def _restore(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def local_cluster(n_workers: int, memory_limit: int | str = "auto") -> Iterator[LocalCluster]:
    """A LocalCluster of one-thread worker processes on 127.0.0.1, without Dask's malloc trim
    setting or its statistical profiler, and without leaving the nanny's variables in this
    process's os.environ (module docstring); a worker restarted mid-stage writes them again, so
    they are restored at the end too."""
    import dask
    from distributed import LocalCluster

    # the workers' config, a deep copy: a nanny resends its shallow merge with dask.config.config
    # at every restart, so a dask.config.set around the start reaches only the first workers
    workers = copy.deepcopy(dask.config.get("distributed"))
    workers["worker"]["profile"]["enabled"] = False
    saved = _pre_spawn_snapshot()
    try:
        with dask.config.set({f"{_PRE_SPAWN}.MALLOC_TRIM_THRESHOLD_": None}):
            cluster = LocalCluster(
                config={"distributed": workers},
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


def _quiet_dask_logs() -> None:
    for name in ("distributed", "distributed.worker", "distributed.nanny", "bokeh", "tornado"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _cluster_key(cfg: ComputeConfig) -> tuple[str | None, int]:
    """What decides which cluster a stage gets: an address, else the LocalCluster's size."""
    return (cfg.dask_address, 0 if cfg.dask_address else local_workers(cfg))


def _open(cfg: ComputeConfig, stack: contextlib.ExitStack) -> Client:
    """A Client on `stack`: connected to compute.dask_address, else on a new LocalCluster of
    one-thread workers sharing 80% of the machine's memory."""
    from distributed import Client

    _quiet_dask_logs()
    if cfg.dask_address:
        client = Client(cfg.dask_address, timeout="30s")
    else:
        n = local_workers(cfg)
        memory = int(0.8 * psutil.virtual_memory().total / n)
        client = Client(stack.enter_context(local_cluster(n, memory)))
    # close(), not `with Client`: its __exit__ resets a context variable, and a flow run's
    # client is opened in one task's thread and closed in the flow's.
    stack.callback(client.close)
    return client


class _Shared:
    """The one cluster of a flow run (and its subflows), started by the first stage that asks."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._stack: contextlib.ExitStack | None = None
        self._client: Client | None = None
        self._key: tuple[str | None, int] | None = None
        self.env: dict[str, str | None] = {}  # os.environ's nanny variables before the start
        self.started, self.startup_s, self.close_s = 0, 0.0, 0.0

    def client(self, cfg: ComputeConfig, stage: str) -> Client | None:
        """The flow run's Client for `cfg`, started on first use; None when the flow's cluster
        is another one (a stage with other compute settings gets one of its own)."""
        with self._lock:
            if self._client is not None and self._client.status != "running":
                self._close()  # broken (its scheduler went away): the next stage starts anew
            if self._client is None:
                t0, self.env = time.perf_counter(), _pre_spawn_snapshot()
                with contextlib.ExitStack() as stack:
                    self._client = _open(cfg, stack)
                    self._stack = stack.pop_all()  # open until the flow closes it
                self._key = _cluster_key(cfg)
                self.count(started_s=time.perf_counter() - t0)
                run_logger().info("%s: started the flow run's Dask cluster (%s)", stage, self)
            return self._client if self._key == _cluster_key(cfg) else None

    def count(self, *, started_s: float | None = None, closed_s: float = 0.0) -> None:
        with self._lock:
            if started_s is not None:
                self.started += 1
                self.startup_s += started_s
            self.close_s += closed_s

    def __str__(self) -> str:
        address, workers = self._key or (None, 0)
        return address or f"a LocalCluster of {workers} worker(s)"

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._stack is None:
            return
        t0 = time.perf_counter()
        stack, self._stack, self._client, self._key = self._stack, None, None, None
        try:
            stack.close()
        finally:
            _restore(self.env)
            self.count(closed_s=time.perf_counter() - t0)


_ACTIVE: contextvars.ContextVar[_Shared | None] = contextvars.ContextVar(
    "genpar_flow_cluster", default=None
)


class FlowCluster:
    """A flow's handle on its run's Dask cluster: what it started, and closing it."""

    def __init__(self, shared: _Shared) -> None:
        self._shared = shared
        self._at_entry = (shared.started, shared.startup_s, shared.close_s)

    def close(self) -> None:
        """No stage needs Dask for a while (training comes, or no Dask stage is left): close
        the cluster now; a later stage that asks starts another. A subflow closes its
        parent's too: the same holds for the parent's stages."""
        self._shared.close()

    def metrics(self) -> dict[str, float]:
        """Clusters started (or connected to) since this flow began, their start-up seconds
        and the seconds spent closing them (`close` first to count its own)."""
        now = (self._shared.started, self._shared.startup_s, self._shared.close_s)
        started, startup_s, close_s = (b - a for a, b in zip(self._at_entry, now, strict=True))
        return {
            "dask/clusters_started": float(started),
            "dask/startup_s": startup_s,
            "dask/close_s": close_s,
        }


@contextlib.contextmanager
def flow_cluster() -> Iterator[FlowCluster]:
    """Scope a flow body so its Dask stages share one lazily started cluster (module
    docstring), closed when the body ends however it ends; inside another flow's scope, that
    flow's cluster."""
    shared = _ACTIVE.get()
    if shared is not None:
        yield FlowCluster(shared)
        return
    shared = _Shared()
    token = _ACTIVE.set(shared)
    try:
        yield FlowCluster(shared)
    finally:
        _ACTIVE.reset(token)
        shared.close()


@contextlib.contextmanager
def dask_client(cfg: ComputeConfig, stage: str = "dask") -> Iterator[Client]:
    """A distributed.Client for one stage: the flow run's (started now if it is the first to
    ask; left open for the later stages), else one for this call, closed when it ends."""
    shared = _ACTIVE.get()
    client = shared.client(cfg, stage) if shared is not None else None
    if client is not None:
        try:
            yield client
        finally:
            _restore(shared.env)  # a worker restarted during the stage wrote the nanny's vars
        return
    with contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        client = _open(cfg, stack)
        if shared is not None:  # other compute settings than the flow's cluster: counted too
            shared.count(started_s=time.perf_counter() - t0)
        try:
            yield client
        finally:
            t0 = time.perf_counter()
            stack.close()
            if shared is not None:
                shared.count(closed_s=time.perf_counter() - t0)


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
    from distributed import Client

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
