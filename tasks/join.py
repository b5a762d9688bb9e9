"""Joining a multi-node training job from another machine (`genpar join RUN_ID`).

The flow's node writes the run spec under the genpar home and starts its torchrun agent, which
hosts the c10d rendezvous store (compute.rdzv_endpoint). Another machine that shares the genpar
home (shards, run directory, the tracking store when it is a file) finds the spec by the run
id, plans its own ranks, and starts an agent that joins the rendezvous: `is_host=false`, its
own address advertised (`--local-addr`, found from the route to the rendezvous host unless
given) and gloo bound to that address's interface. infra/README.md describes the setup.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from genpar_models.errors import ConfigError
from genpar_models.train.runspec import read_spec
from genpar_models.util.paths import runs_root
from tasks.launcher import (
    Node,
    cuda_device_count,
    endpoint_host,
    launch_training,
    plan_processes,
    route_addr,
)


def find_spec(run_id: str, wait_s: float) -> Path:
    """The run spec of `run_id` under the genpar home, waiting up to `wait_s` for the flow's
    node to write it.

    Raises:
        ConfigError: no such run under the home within the wait.
    """
    deadline = time.monotonic() + wait_s
    while True:
        found = sorted(runs_root().glob(f"*/{run_id}/spec.json"))
        if found:
            return found[0]
        if time.monotonic() >= deadline:
            raise ConfigError(
                f"no run spec for run {run_id} under {runs_root()} after {wait_s:g} s: start the "
                "run on the flow's node first, and share its genpar home ($GENPAR_HOME) with "
                "this machine"
            )
        time.sleep(0.5)


def join_training(
    run_id: str,
    *,
    rdzv_endpoint: str,
    local_addr: str | None = None,
    wait_s: float = 600.0,
    on_line: Callable[[str], None] = print,
) -> None:
    """Run this machine's torchrun agent of run `run_id` to completion.

    Raises:
        ConfigError: the run is not a multi-node job, or its spec cannot be found.
        TrainingFailed: the job failed (the first failing rank's error).
    """
    path = find_spec(run_id, wait_s)
    spec = read_spec(path)
    compute = spec.config.compute
    if compute.nnodes < 2:
        raise ConfigError(
            f"{path}: run {run_id} trains on one node (compute.nnodes=1); there is nothing to join"
        )
    # The endpoint as this machine reaches it (a name here may be an address there).
    compute = compute.model_copy(update={"rdzv_endpoint": rdzv_endpoint})
    spec = spec.model_copy(update={"config": spec.config.model_copy(update={"compute": compute})})
    node = Node(is_host=False, local_addr=local_addr or route_addr(endpoint_host(rdzv_endpoint)))
    plan = plan_processes(compute, cuda_device_count())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = path.parent / "torchrun" / f"join-{socket.gethostname()}-{node.local_addr}-{stamp}"
    on_line(f"joining run {run_id} at {rdzv_endpoint} as {node.local_addr}")
    launch_training(spec, plan, log_dir=log_dir, on_line=on_line, node=node)
