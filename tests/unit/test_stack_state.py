"""The local stack's bookkeeping without servers: busy ports, stale state, reused pids."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from infra import processes, stack
from infra.processes import Proc


def _dead_proc() -> Proc:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    created = psutil.Process(child.pid).create_time()
    child.wait()
    return Proc(pid=child.pid, create_time=created)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record(home: Path, procs: dict[str, Proc]) -> None:
    servers = [
        {"name": n, "port": 40000 + i, "log": str(home / f"{n}.log"), **p.as_dict()}
        for i, (n, p) in enumerate(procs.items())
    ]
    stack.state_path().parent.mkdir(parents=True, exist_ok=True)
    stack.state_path().write_text(json.dumps({"servers": servers}))


def test_port_free_sees_a_listener() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not processes.port_free(port)
        assert f"pid {os.getpid()}" in (processes.port_user(port) or f"pid {os.getpid()}")
    assert processes.port_free(port)


def test_a_reused_pid_is_not_our_server() -> None:
    me = psutil.Process()
    assert processes.handle(Proc(me.pid, me.create_time())) is not None
    assert processes.handle(Proc(me.pid, me.create_time() - 3600)) is None
    assert processes.handle(_dead_proc()) is None


def test_stale_state_is_reported_and_cleared(home: Path) -> None:
    _record(home, {"prefect": _dead_proc(), "mlflow": _dead_proc()})
    states = stack.server_states()
    assert [s.name for s, _ in states] == ["prefect", "mlflow"]
    assert all(state.startswith("not running (stale: pid") for _, state in states)
    assert "using the embedded defaults" in (stack.use_stack() or "")
    said: list[str] = []
    assert stack.down(say=said.append)
    assert all("was not running any more" in line for line in said) and len(said) == 2
    assert not stack.state_path().exists()
    assert not stack.down(say=said.append)  # nothing to stop now


def test_busy_port_is_refused_before_anything_starts(home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(stack.StackError, match=rf"port {busy} .* in use.*--mlflow-port"):
            stack.up({"prefect": _free_port(), "mlflow": busy}, say=print)
    assert stack.read_servers() == {}


def test_stale_state_is_cleared_by_up_before_the_port_check(home: Path) -> None:
    _record(home, {"prefect": _dead_proc(), "mlflow": _dead_proc()})
    said: list[str] = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(stack.StackError, match="in use"):
            stack.up({"prefect": s.getsockname()[1], "mlflow": 1}, say=said.append)
    assert any("cleared stale stack state" in line for line in said)
    assert stack.read_servers() == {}


TEAM = ["postgres", "s3", "prefect", "mlflow", "dask-scheduler", "dask-workers", "worker"]
# A server that notes when it was told to stop and when it is gone (half a second later).
SLOW_TO_STOP = """
import signal, sys, time
def bye(*_):
    with open(sys.argv[2], "a") as f:
        f.write(f"term {sys.argv[1]} {time.time()}\\n")
    time.sleep(0.5)
    with open(sys.argv[2], "a") as f:
        f.write(f"exit {sys.argv[1]} {time.time()}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
signal.signal(signal.SIGINT, bye)
open(sys.argv[3], "w").close()
while True:
    time.sleep(1)
"""


def test_down_stops_each_team_server_after_its_clients_and_a_wave_at_once(home: Path) -> None:
    import time

    notes = home / "notes.txt"
    procs = {}
    for name in TEAM:
        ready = home / f"{name}.ready"
        procs[name] = processes.spawn(
            [sys.executable, "-c", SLOW_TO_STOP, name, str(notes), str(ready)],
            dict(os.environ), home / f"{name}.log", home,
        )  # fmt: skip
        while not ready.exists():
            time.sleep(0.05)
    _record(home, procs)
    said: list[str] = []
    assert stack.down(say=said.append)
    assert [line.split()[1] for line in said] == [n for w in stack.stop_waves(TEAM) for n in w]
    when = {
        tuple(line.split()[:2]): float(line.split()[2])
        for line in notes.read_text().split("\n")
        if line
    }
    assert set(when) == {(e, n) for e in ("term", "exit") for n in TEAM}  # each stopped itself
    clients_of = {"postgres": ["prefect", "mlflow"], "s3": ["mlflow"], "prefect": ["worker"],
                  "dask-scheduler": ["dask-workers"]}  # fmt: skip
    for server, clients in clients_of.items():
        for client in clients:  # told to stop only once its clients were gone
            assert when["term", server] >= when["exit", client], (server, client)
    # the first wave together: each was told before any of them had gone
    first = stack.stop_waves(TEAM)[0]
    assert first == ["worker", "dask-workers", "mlflow"]
    assert max(when["term", n] for n in first) < min(when["exit", n] for n in first)
    assert all(processes.handle(p) is None for p in procs.values())
