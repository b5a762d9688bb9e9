"""`mlflow models serve` of a registered genpar model on 127.0.0.1, started and stopped whole.

MLflow's server starts `uvicorn` by name, so the environment's PATH must hold the bin
directory of genpar's Python (a venv that is not activated has it only in sys.executable's
folder). With `--env-manager local` it serves from genpar's own environment, which the model
needs (it imports genpar_models). The server runs in its own session, so stopping it stops
its uvicorn child too. The README's "Serving a registered model" is the manual version.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from infra.processes import HOST

BIN = Path(sys.executable).parent


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve_argv(model_uri: str, port: int, host: str = HOST) -> list[str]:
    return [
        str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
        "--host", host, "--port", str(port),
    ]  # fmt: skip


def serve_env(tracking_uri: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with the store and genpar's bin on PATH."""
    env = dict(os.environ if base is None else base)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def start(model_uri: str, tracking_uri: str, port: int, log: Path) -> subprocess.Popen:
    """Start serving `model_uri` (e.g. models:/NAME@champion) on 127.0.0.1:`port`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            serve_argv(model_uri, port),
            env=serve_env(tracking_uri),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_serving(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 120) -> None:
    """Until `url`/ping answers 200; raises naming the log's tail if the server died or
    did not come up in `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited {proc.returncode}: {_tail(log)}")
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow models serve not up after {timeout_s:.0f} s: {_tail(log)}")


def stop(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM to the server's session, SIGKILL after `grace_s`."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


def _tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text()[-chars:]
    except OSError:
        return "(no log)"
