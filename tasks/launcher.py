"""Launching torchrun (`python -m torch.distributed.run`, through genpar_models.train.agent) as a
child process, and reading how it ended.

The child runs in its own session so a cancelled or failed task can stop the whole tree:
SIGTERM first (torchrun then stops its ranks cleanly), SIGKILL for anything left after a grace
period; the ranks are collected with psutil *before* the parent is signalled, because a
SIGKILLed torchrun orphans them (shared/STACK.md section 3.4). Its output is streamed line by
line to a callback (the Prefect run log). On failure the rank error that happened *first*
(earliest timestamp in torchelastic's error.json files) becomes the error message, since the
other ranks only fail in reaction to it (section 3.3).

A SIGKILLed flow process cannot stop its torchrun: the agent gets SIGTERM from the kernel
(PR_SET_PDEATHSIG) and shuts its ranks down itself, but an agent that hangs in that shutdown
would live on beside the re-run that resumes the same run directory. So the agent's pid lies
in `<run dir>/torchrun.pid` while it runs, and the next launch in that directory (the re-run
holds the run's lease, so nothing else may be training there) stops whatever the file still
names first.

This module is longer than 300 lines: the command line (single and multi-node), the
process tree's lifetime and the reading of rank errors belong to the one launch.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from genpar_models.config import ComputeConfig
from genpar_models.errors import ConfigError, GenparError
from genpar_models.train.runspec import RunSpec, write_spec
from genpar_models.util import atomic
from genpar_models.util.cores import available_cores
from genpar_models.util.parent import PARENT_ENV

GRACE_S = 30.0
PID_FILE = "torchrun.pid"


class TrainingFailed(GenparError, RuntimeError):
    """The torchrun job exited non-zero; the message is the failing rank's own error."""


@dataclass(frozen=True)
class Plan:
    nproc: int
    device: str
    threads_per_proc: int


# What a GPU driver leaves on a machine that torch.cuda could use: NVIDIA's kernel driver
# (/proc/driver/nvidia) and its device nodes (a container gets /dev/nvidiactl and its GPUs'
# /dev/nvidiaN without /proc/driver/nvidia), AMD's ROCm (/dev/kfd: ROCm builds of torch answer
# torch.cuda) and WSL2's GPU paravirtualisation (/dev/dxg).
GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def gpu_driver_present(paths: tuple[str, ...] = GPU_DRIVER_PATHS) -> bool:
    """Whether any of `paths` exists: without one, torch.cuda sees no device."""
    return any(os.path.exists(p) for p in paths)


def cuda_device_count() -> int:
    """The CUDA devices torch sees; 0 without importing torch (1.3 s on 2 cores) on a machine
    with no GPU driver, so preflight and the training task stay cheap there (issue 18)."""
    if not gpu_driver_present():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_processes(cfg: ComputeConfig, cuda_devices: int) -> Plan:
    """How many ranks on which device, and torch threads per rank."""
    cores = available_cores()
    if cfg.device == "cuda" and cuda_devices == 0:
        raise ConfigError("compute.device=cuda but no CUDA device is visible")
    if cuda_devices and cfg.device in ("auto", "cuda"):
        return Plan(cuda_devices, "cuda", cfg.threads_per_proc or max(1, cores // cuda_devices))
    if cfg.cpu_procs > cores:
        raise ConfigError(
            f"compute.cpu_procs={cfg.cpu_procs} is more than the {cores} core(s) this process may "
            f"use (CPU affinity and cgroup quota); use at most {cores} (ranks beyond the cores "
            "collapse throughput)"
        )
    return Plan(cfg.cpu_procs, "cpu", cfg.threads_per_proc or max(1, cores // cfg.cpu_procs))


@dataclass(frozen=True)
class Node:
    """This machine's part in a multi-node job: the flow's node hosts the rendezvous store
    (`is_host`), the others join it; each advertises `local_addr` to the others (torchrun's
    --local-addr, else workers get MASTER_ADDR=localhost: shared/STACK.md section 9)."""

    is_host: bool
    local_addr: str


def endpoint_host(endpoint: str) -> str:
    return endpoint.rpartition(":")[0].strip("[]")


def route_addr(host: str) -> str:
    """The address of this machine on the route to `host` (a UDP connect sends nothing)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:
        s.connect((host, 9))
        return s.getsockname()[0]


def interface_of(addr: str) -> str | None:
    """The network interface holding `addr` (for GLOO_SOCKET_IFNAME), if this machine has it."""
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == addr for a in addrs):
            return name
    return None


def host_node(cfg: ComputeConfig) -> Node | None:
    """The flow's node of a multi-node job (None for one node): it hosts the store at the
    rendezvous endpoint, which must be one of its own addresses."""
    if cfg.nnodes == 1:
        return None
    return Node(is_host=True, local_addr=endpoint_host(cfg.rdzv_endpoint))


def rendezvous_id(cfg: ComputeConfig, spec: Path) -> str:
    return cfg.rdzv_id or spec.parent.name  # the run directory is named by the run id


def torchrun_command(
    cfg: ComputeConfig,
    plan: Plan,
    *,
    max_restarts: int,
    spec: Path,
    log_dir: Path,
    node: Node | None = None,
) -> list[str]:
    # torch.distributed.run's own main, minus the interpreter's teardown at the end (~0.8 s a
    # launch: genpar_models/train/agent.py)
    cmd = [sys.executable, "-m", "genpar_models.train.agent"]
    if cfg.nnodes > 1:
        node = node or host_node(cfg)
        conf = f"join_timeout={cfg.join_timeout_s},is_host={str(node.is_host).lower()}"
        cmd += [
            f"--nnodes={cfg.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={cfg.rdzv_endpoint}",
            f"--rdzv-id={rendezvous_id(cfg, spec)}",
            f"--rdzv-conf={conf}",
            f"--local-addr={node.local_addr}",
        ]
    else:
        cmd += ["--standalone"]
    return cmd + [
        f"--nproc-per-node={plan.nproc}",
        f"--max-restarts={max_restarts}",
        f"--log-dir={log_dir}",
        "--tee=3",
        "-m",
        "genpar_models.train",
        "--spec",
        str(spec),
    ]


def custom_import_roots() -> list[str]:
    """Directories this process imported custom model classes from (model.name with a colon;
    genpar_models/models/custom/), for the ranks' PYTHONPATH; none when none was imported."""
    custom = sys.modules.get("genpar_models.models.custom.loader")
    return sorted(custom.IMPORT_ROOTS) if custom is not None else []


def child_env(plan: Plan, tracking_uri: str | None, node: Node | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(plan.threads_per_proc)  # torchrun would force 1 (section 3.5)
    if node is not None:
        # A fresh store per rendezvous round, hosted by that round's rank 0: the agents'
        # shared store would carry one round's keys into the next, and the per-attempt prefix
        # that keeps them apart on one node differs between nodes (genpar_models/train/dist.py).
        env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    if node is not None and "GLOO_SOCKET_IFNAME" not in env:
        # gloo picks the interface of the hostname otherwise; one name, not NCCL's ^lo syntax
        ifname = interface_of(node.local_addr)
        if ifname:
            env["GLOO_SOCKET_IFNAME"] = ifname
    env["PYTHONUNBUFFERED"] = "1"
    if plan.device == "cpu" and node is None:
        # one node of CPU ranks: forked from the agent, which imports torch and the training
        # code once for all of them (genpar_models/train/agent.py); 0 starts fresh interpreters
        env.setdefault("GENPAR_FORK_RANKS", "1")
    roots = custom_import_roots()
    if roots:  # your own network's module (model.name "package.module:Class") in every rank
        path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([*path, *(r for r in roots if r not in path)])
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    # Fail fast on a dead tracking server: rank 0 keeps the metrics and retries later itself,
    # while MLflow's default (7 retries with backoff) would stall every rank for minutes.
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    return env


def stop_tree(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM the launcher, wait, then SIGKILL it and every rank that is still alive."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _, alive = psutil.wait_procs(children, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _attempt_number(path: Path) -> int:
    for part in reversed(path.parts):
        if part.startswith("attempt_") and part[8:].isdigit():
            return int(part[8:])
    return -1


def first_rank_error(log_dir: Path) -> str | None:
    """The earliest rank error of the *last* attempt, from torchelastic's error.json files.

    Earlier attempts were followed by an elastic restart, so their errors are not why the
    job ended; within the last attempt the other ranks only fail in reaction to the first.
    """
    found = []
    for path in log_dir.rglob("error.json"):
        try:
            info = json.loads(path.read_text())["message"]
            extra = info.get("extraInfo", {})
            stamp = int(extra.get("timestamp", 0))
            found.append(
                (
                    _attempt_number(path),
                    -stamp,
                    path,
                    info.get("message", ""),
                    extra.get("py_callstack", ""),
                )
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    if not found:
        return None
    # Timestamps are whole seconds, so the rank that failed first and a rank that failed in
    # reaction (its collective lost the peer) often tie; a reaction is never the cause.
    _, _, _, path, message, stack = max(
        ((a, not _peer_lost(m), st, p, m, cs) for a, st, p, m, cs in found),
        key=lambda t: (t[0], t[1], t[2]),
    )
    return f"rank {path.parent.name} failed: {message}\n{stack.strip()}"


_PEER_LOST = (
    "gloo/transport",
    "Connection closed by peer",
    "Connection reset by peer",
    "remote worker crashing",
    "NCCL communicator was aborted",
    "ProcessGroupNCCL",
)


def _peer_lost(message: str) -> bool:
    """A collective failed because another rank died: the symptom, not the cause."""
    return any(mark in message for mark in _PEER_LOST)


def _write_pid(pid_file: Path, proc: subprocess.Popen) -> None:
    try:
        started = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        return
    record = {"pid": proc.pid, "create_time": started, "host": socket.gethostname()}
    atomic.write_json(pid_file, record)


def stop_leftover(pid_file: Path, on_line: Callable[[str], None] = lambda _: None) -> bool:
    """Stop the torchrun agent (and its ranks) that `pid_file` names, if it still runs here.

    The pid must belong to the same process that wrote the file (its start time matches) and
    this host, so a recycled pid or another machine's agent is never signalled. Returns
    whether something was stopped; the file is removed either way.
    """
    try:
        record = json.loads(pid_file.read_text())
        pid, started, host = int(record["pid"]), float(record["create_time"]), record["host"]
    except FileNotFoundError:
        return False
    except (ValueError, KeyError, TypeError):
        pid_file.unlink(missing_ok=True)  # a torn write: nothing can be trusted in it
        return False
    stopped = False
    if host == socket.gethostname():
        try:
            agent = psutil.Process(pid)
            if abs(agent.create_time() - started) < 0.01 and agent.status() != "zombie":
                on_line(f"stopping torchrun agent {pid} left running by an earlier attempt")
                tree = [agent, *agent.children(recursive=True)]
                for p in tree:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        p.terminate()
                _, alive = psutil.wait_procs(tree, timeout=10)
                for p in alive:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        p.kill()
                psutil.wait_procs(alive, timeout=5)
                stopped = True
        except psutil.NoSuchProcess:
            pass
    pid_file.unlink(missing_ok=True)
    return stopped


def run_torchrun(
    cmd: list[str],
    env: dict[str, str],
    *,
    log_dir: Path,
    on_line: Callable[[str], None],
    pid_file: Path | None = None,
) -> None:
    """Run the torchrun command to completion, streaming its output.

    `pid_file`, when given, names the agent while it runs (see `stop_leftover`).

    Raises:
        TrainingFailed: with the first failing rank's error when the job exits non-zero.
    """
    tail: list[str] = []
    if pid_file is not None:
        stop_leftover(pid_file, on_line)
    # No preexec_fn: it would force a fork() of this (threaded) process, whose atfork handlers
    # can deadlock (OpenBLAS beside a matmul in another thread: genpar_models/util/parent.py);
    # the agent asks for its parent-death signal itself, from PARENT_ENV.
    proc = subprocess.Popen(
        cmd,
        env={**env, PARENT_ENV: str(os.getpid())},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    try:
        if pid_file is not None:
            _write_pid(pid_file, proc)
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            on_line(line)
            tail = (tail + [line])[-30:]
        rc = proc.wait()
    finally:
        stop_tree(proc)
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)
    if rc != 0:
        detail = first_rank_error(log_dir) or "\n".join(tail)
        raise TrainingFailed(f"torchrun exited with code {rc}; {detail}")


def _metrics_relay(spec: RunSpec) -> Any:
    """The flow process's relay of rank 0's metrics (tasks/metrics_relay.py), or None where rank
    0 logs itself (an MLflow server, no tracking, GENPAR_METRICS_RELAY=0)."""
    from tasks import metrics_relay

    if not (spec.tracking and spec.tracking.run_id and metrics_relay.wanted(spec.tracking.uri)):
        return None
    path = metrics_relay.relay_path(spec.run_dir)
    return metrics_relay.MetricsRelay(spec.tracking.uri, spec.tracking.run_id, path)


def launch_training(
    spec: RunSpec,
    plan: Plan,
    *,
    log_dir: Path,
    on_line: Callable[[str], None],
    node: Node | None = None,
    extra_env: dict[str, str] | None = None,
) -> None:
    """Write the run spec (the flow's node) and run torchrun on it to completion (see
    `run_torchrun`); a joining node (`node`, `genpar join`) reads the spec already there.

    Raises:
        TrainingFailed: the job failed; when the nodes never met, naming the rendezvous and
            the timeout.
    """
    cfg = spec.config.compute
    spec_path = Path(spec.run_dir) / "spec.json"
    relay = _metrics_relay(spec) if node is None else None  # rank 0 here: the flow logs for it
    if node is None:
        write_spec(spec, spec_path)
        node = host_node(cfg)
        if node is not None:
            on_line(
                f"multi-node run: on each of the other {cfg.nnodes - 1} node(s), within "
                f"compute.join_timeout_s={cfg.join_timeout_s} s: genpar join "
                f"{Path(spec.run_dir).name} --rdzv-endpoint {cfg.rdzv_endpoint}"
            )
    cmd = torchrun_command(
        cfg,
        plan,
        max_restarts=spec.config.train.max_restarts,
        spec=spec_path,
        log_dir=log_dir,
        node=node,
    )
    uri = spec.tracking.uri if spec.tracking else None
    on_line("$ " + " ".join(cmd))
    try:
        with relay or contextlib.nullcontext():
            run_torchrun(
                cmd,
                child_env(plan, uri, node) | (relay.env() if relay else {}) | (extra_env or {}),
                log_dir=log_dir,
                on_line=on_line,
                # One agent per run directory on a single node; the nodes of a multi-node job
                # share the run directory, so there another node's agent is not a leftover.
                pid_file=Path(spec.run_dir) / PID_FILE if cfg.nnodes == 1 else None,
            )
    except TrainingFailed as e:
        if cfg.nnodes > 1 and "RendezvousTimeoutError" in str(e):
            raise TrainingFailed(
                f"the rendezvous {rendezvous_id(cfg, spec_path)} at {cfg.rdzv_endpoint} did "
                f"not gather compute.nnodes={cfg.nnodes} nodes within compute.join_timeout_s="
                f"{cfg.join_timeout_s} s; start the other node(s) with `genpar join "
                f"{Path(spec.run_dir).name} --rdzv-endpoint {cfg.rdzv_endpoint}` on a machine "
                f"that shares the genpar home ({e})"
            ) from None
        raise
