"""The record of a running `genpar serve`: written while it serves, read by status and down."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

from genpar_models.util import atomic
from genpar_models.util.paths import genpar_home
from infra import processes
from infra.processes import Proc


def stack_dir() -> Path:
    return genpar_home() / "stack"


def serve_state_path() -> Path:
    return stack_dir() / "serve.json"


def record_serve(info: dict) -> None:
    """Called by `genpar serve`: remember the serving process while it runs."""
    stack_dir().mkdir(parents=True, exist_ok=True)
    atomic.write_json(serve_state_path(), info)


def serve_state() -> tuple[dict, str] | None:
    """(serve.json, 'running' | 'not running …') or None when nothing serves."""
    try:
        info = json.loads(serve_state_path().read_text())
    except (FileNotFoundError, ValueError):
        return None
    proc = Proc(pid=int(info["pid"]), create_time=float(info["create_time"]))
    alive = processes.handle(proc) is not None
    return info, "running" if alive else f"not running (stale: pid {proc.pid} is gone)"


def stop_serve(say: Callable[[str], None]) -> None:
    found = serve_state()
    if found is None:
        return
    info, state = found
    proc = Proc(pid=int(info["pid"]), create_time=float(info["create_time"]))
    if state == "running" and processes.stop(proc, grace_s=30.0, sig=signal.SIGINT):
        say(f"stopped genpar serve (pid {proc.pid})")
    serve_state_path().unlink(missing_ok=True)
