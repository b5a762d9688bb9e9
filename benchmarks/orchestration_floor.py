"""The orchestration overhead's floor on this machine, measured beside genpar's own runs: what
any pipeline that runs its stages as Prefect tasks and trains with a 2-rank torchrun job pays
before doing any work.

- An empty Prefect flow (one empty task) in a fresh process: launch, `import prefect`, the
  temporary server's start in ephemeral mode (or, against a running stack, only its address),
  the flow and task runs, exit. It leaves as `genpar` leaves (exit hooks, then `os._exit`).
- A trivial torchrun job: `python -m torch.distributed.run --standalone --nproc-per-node=2`
  of ranks that import torch, join a gloo process group, pass one barrier and leave.

    python -m benchmarks.orchestration_floor flow [stack]   # one empty flow (a subprocess)
    python -m benchmarks.orchestration_floor rank           # one rank (under torchrun)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import stopwatch

REPO = Path(__file__).resolve().parents[1]


def empty_flow_s(env: dict[str, str], stack: bool = False) -> float:
    """Wall seconds of one empty flow in a fresh process with `env` (its PREFECT_HOME with a
    migrated database; with `stack`, pointed at the running stack of its GENPAR_HOME)."""
    argv = [sys.executable, "-m", "benchmarks.orchestration_floor", "flow"]
    with stopwatch() as t:
        subprocess.run(
            [*argv, *(["stack"] if stack else [])],
            # a slow start on a loaded machine is still a figure (Prefect's default: 20 s)
            env={"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", **env},
            check=True,
            capture_output=True,
            cwd=REPO,
        )
    return t["s"]


def trivial_torchrun_s(env: dict[str, str]) -> float:
    """Wall seconds of a 2-rank torchrun job whose ranks only join and leave a gloo group."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    argv += ["-m", "benchmarks.orchestration_floor", "rank"]
    with stopwatch() as t:
        subprocess.run(
            argv, env={**env, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True, cwd=REPO
        )
    return t["s"]


def _flow(stack: bool) -> None:
    from genpar_models.util.leave import exit_now

    if stack:  # the addresses genpar's CLI uses (infra/stack.py)
        from infra.stack import use_stack

        problem = use_stack()
        if problem or not os.environ.get("PREFECT_API_URL"):
            raise SystemExit(problem or "no running stack in GENPAR_HOME")
    from prefect import flow, task

    @task
    def nothing() -> None:
        return None

    @flow
    def empty() -> None:
        nothing()

    empty()
    exit_now(0)


def _rank() -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    dist.barrier()
    dist.destroy_process_group()
    from genpar_models.util.leave import exit_now

    exit_now(0)  # without the interpreter's teardown, as the trainer's ranks leave


if __name__ == "__main__":
    if sys.argv[1:2] == ["rank"]:
        _rank()
    elif sys.argv[1:2] == ["flow"]:
        _flow(stack=sys.argv[2:3] == ["stack"])
    else:
        raise SystemExit(__doc__)
