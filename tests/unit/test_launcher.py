"""Which rank's error becomes the training failure's message (torchelastic error.json files),
how a torchrun agent left running by a killed flow is stopped before the next launch, the
environment a multi-node agent gets, and how CUDA devices are counted without a GPU driver."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tasks.launcher import (
    PID_FILE,
    Node,
    Plan,
    _write_pid,
    child_env,
    first_rank_error,
    gpu_driver_present,
    stop_leftover,
)
from tests.helpers import python_c

GLOO = (
    "RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed "
    "by peer [127.0.0.1]:12345 ... typically caused by a remote worker crashing."
)


def _error(log_dir: Path, attempt: int, rank: int, stamp: int, message: str) -> None:
    path = log_dir / "job_x" / f"attempt_{attempt}" / str(rank) / "error.json"
    path.parent.mkdir(parents=True)
    extra = {"timestamp": str(stamp), "py_callstack": f"stack of rank {rank}"}
    path.write_text(json.dumps({"message": {"message": message, "extraInfo": extra}}))


def test_cause_wins_over_a_peer_lost_reaction(tmp_path: Path) -> None:
    """Stamps are whole seconds, and the failing rank may stamp its error after the peer has
    already reported the lost connection: the reaction must not become the message."""
    _error(tmp_path, 0, 1, 99, GLOO)
    _error(tmp_path, 0, 0, 100, "OSError: [Errno 28] No space left on device: ckpt-00000010")
    message = first_rank_error(tmp_path)
    assert message is not None and message.startswith("rank 0 failed: OSError")


def test_earliest_error_of_the_last_attempt(tmp_path: Path) -> None:
    _error(tmp_path, 0, 0, 50, "ValueError: first attempt")
    _error(tmp_path, 1, 0, 101, "ValueError: later")
    _error(tmp_path, 1, 1, 100, "KeyError: earlier")
    message = first_rank_error(tmp_path)
    assert message is not None and message.startswith("rank 1 failed: KeyError: earlier")


def test_only_reactions_still_name_a_rank(tmp_path: Path) -> None:
    _error(tmp_path, 0, 1, 100, GLOO)
    message = first_rank_error(tmp_path)
    assert message is not None and message.startswith("rank 1 failed:")
    assert first_rank_error(tmp_path / "nothing") is None


def _sleeper_tree() -> subprocess.Popen:
    """A real process with a child of its own, like a torchrun agent and its rank."""
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        "time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 20
    while not psutil.Process(proc.pid).children() and time.time() < deadline:
        time.sleep(0.05)
    return proc


def test_a_leftover_agent_and_its_ranks_are_stopped_before_the_next_launch(
    tmp_path: Path,
) -> None:
    proc = _sleeper_tree()
    (rank,) = psutil.Process(proc.pid).children()
    pid_file = tmp_path / PID_FILE
    _write_pid(pid_file, proc)
    said: list[str] = []
    try:
        assert stop_leftover(pid_file, said.append)
        proc.wait(timeout=5)
        assert not rank.is_running() or rank.status() == psutil.STATUS_ZOMBIE
        assert not pid_file.exists() and str(proc.pid) in said[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_pid_file_of_another_process_signals_nothing(tmp_path: Path) -> None:
    """A recycled pid (other start time) or another host's agent is never signalled."""
    proc = _sleeper_tree()
    try:
        started = psutil.Process(proc.pid).create_time()
        for record in (
            {"pid": proc.pid, "create_time": started - 5, "host": socket.gethostname()},
            {"pid": proc.pid, "create_time": started, "host": "another-node"},
        ):
            pid_file = tmp_path / PID_FILE
            pid_file.write_text(json.dumps(record))
            assert not stop_leftover(pid_file)
            assert proc.poll() is None and not pid_file.exists()
        pid_file.write_text("{torn")
        assert not stop_leftover(pid_file) and not pid_file.exists()
        assert not stop_leftover(tmp_path / "absent.pid")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_multi_node_agent_gets_a_fresh_store_per_round_and_its_interface(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Restart counts differ between nodes after one node's worker dies, so the per-attempt
    prefix of the shared store cannot keep rounds apart there (genpar_models/train/dist.py)."""
    monkeypatch.delenv("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", raising=False)
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    plan = Plan(nproc=1, device="cpu", threads_per_proc=1)
    env = child_env(plan, None, Node(is_host=False, local_addr="127.0.0.1"))
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert env["GLOO_SOCKET_IFNAME"] == "lo"
    single = child_env(plan, None)
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in single  # one agent: its prefix works
    assert "GLOO_SOCKET_IFNAME" not in single


_CHILD = (
    "import sys, time; from genpar_models.util.parent import die_with_parent; "
    "print(die_with_parent(), flush=True); time.sleep(60)"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_launched_agent_dies_with_its_launcher_and_not_with_a_stranger() -> None:
    """What the agent does first (genpar_models/util/parent.py): SIGTERMed when the process
    named in GENPAR_PARENT_PID dies, at once when its parent is not that process; the launcher
    itself starts it without preexec_fn (a fork of a threaded process can deadlock)."""
    from genpar_models.util.parent import PARENT_ENV

    # a parent that is not the one named: the child ends itself before doing any work
    wrong = {**os.environ, PARENT_ENV: "1"}
    child = subprocess.run([sys.executable, "-c", _CHILD], env=wrong, timeout=60)
    assert child.returncode == -signal.SIGTERM
    # the named parent SIGKILLed (no cleanup): its child is SIGTERMed by the kernel
    launcher = (
        "import os, subprocess, sys; from genpar_models.util.parent import PARENT_ENV; "
        f"p = subprocess.Popen([sys.executable, '-c', {_CHILD!r}], "
        "env={**os.environ, PARENT_ENV: str(os.getpid())}, stdout=subprocess.PIPE, text=True); "
        "print(p.pid, p.stdout.readline().strip(), flush=True); os.kill(os.getpid(), 9)"
    )
    out = subprocess.run(
        [sys.executable, "-c", launcher], capture_output=True, text=True, timeout=60
    ).stdout.split()
    pid, asked = int(out[0]), out[1]
    assert asked == "True"
    deadline = time.monotonic() + 20
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child outlived its SIGKILLed launcher"
        time.sleep(0.1)
    # without the variable nothing is asked (a torchrun started by hand keeps running)
    env = {k: v for k, v in os.environ.items() if k != PARENT_ENV}
    plain = subprocess.run(
        [sys.executable, "-c", _CHILD.replace("time.sleep(60)", "0")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.stdout.strip() == "False"


def test_a_gpu_driver_is_any_of_its_files(tmp_path: Path) -> None:
    absent = (str(tmp_path / "proc-driver-nvidia"), str(tmp_path / "nvidiactl"))
    assert not gpu_driver_present(absent)
    Path(absent[1]).touch()
    assert gpu_driver_present(absent)


def test_cuda_devices_are_counted_as_torch_counts_them_and_without_it_when_no_driver() -> None:
    """In a fresh process: without a GPU driver the count is 0 and torch is never imported
    (issue 18: preflight and the training task paid its 1.3 s); either way it is torch's own
    count."""
    code = (
        "import sys\n"
        "from tasks.launcher import cuda_device_count, gpu_driver_present\n"
        "n, loaded = cuda_device_count(), 'torch' in sys.modules\n"
        "import torch\n"
        "want = torch.cuda.device_count() if torch.cuda.is_available() else 0\n"
        "print(n, want, loaded, gpu_driver_present())\n"
    )
    out = python_c(code).stdout.split()
    n, want, loaded, driver = int(out[0]), int(out[1]), out[2] == "True", out[3] == "True"
    assert n == want
    if not driver:
        assert n == 0 and not loaded, "no GPU driver: counted without importing torch"


def test_only_one_node_of_cpu_ranks_is_forked_from_the_agent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CPU ranks on one node start forked from the agent (genpar_models/train/agent.py); GPU
    ranks and multi-node jobs keep torchrun's fresh interpreters; a user's 0 wins."""
    monkeypatch.delenv("GENPAR_FORK_RANKS", raising=False)
    cpu = Plan(nproc=2, device="cpu", threads_per_proc=1)
    assert child_env(cpu, None)["GENPAR_FORK_RANKS"] == "1"
    node = Node(is_host=True, local_addr="127.0.0.1")
    assert "GENPAR_FORK_RANKS" not in child_env(cpu, None, node)
    assert "GENPAR_FORK_RANKS" not in child_env(Plan(1, "cuda", 1), None)
    monkeypatch.setenv("GENPAR_FORK_RANKS", "0")
    assert child_env(cpu, None)["GENPAR_FORK_RANKS"] == "0"
