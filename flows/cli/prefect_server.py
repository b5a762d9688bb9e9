"""The temporary Prefect API server of Prefect's ephemeral mode, started by genpar before
Prefect is even imported.

Prefect starts its temporary server (`SubprocessASGIServer`: uvicorn on 127.0.0.1, the
database under PREFECT_HOME, no UI) on the first API call, or genpar starts it while the flow
imports (`server_starting_alongside`). Either way the command first imports `prefect` (0.9 s
of CPU on 2 cores) and `prefect.server.api.server` (1.9 s, the server's whole app, in the
process that never serves it) before the server process even exists, and the server needs
about 6 s to answer. Here the same uvicorn command starts first; once Prefect's own settings
confirm ephemeral mode (no API URL in the environment, a profile or a settings file; the mode
not disabled), PREFECT_API_URL points this process at it and Prefect's settings are refreshed
(`refresh_global_settings_context`), so nothing here imports the server app. Prefect then
talks to it as to any server; at exit it is stopped as Prefect stops its own. If it does not
answer (a port taken meanwhile, a broken database), the environment is put back and Prefect's
own ephemeral start runs on first use and reports the failure in its own words.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from infra.processes import http_ok

# What Prefect's SubprocessASGIServer sets for its uvicorn child (prefect/server/api/server.py).
_SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}
# Environment this module sets in its own process while its server is the API.
_OWN_ENV = ("PREFECT_API_URL", "PREFECT_UI_URL")


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _uvicorn(port: int) -> subprocess.Popen:
    """Prefect's own command for its temporary server, on `port`."""
    spec = importlib.util.find_spec("prefect")  # finds the package without importing it
    assert spec is not None and spec.origin, "prefect is not installed"
    app_dir = Path(spec.origin).parent.parent
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory"]
    argv += ["prefect.server.api.server:create_app", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "error", "--lifespan", "on"]
    return subprocess.Popen(argv, env={**os.environ, **_SERVER_ENV})


def _stop(proc: subprocess.Popen, address: str) -> None:
    """Prefect's SubprocessASGIServer.stop: terminate, 5 s, then kill."""
    if proc.poll() is not None:
        return
    logging.getLogger("prefect").info("Stopping temporary server on %s", address)
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if http_ok(f"{url}/health", timeout_s=2):
            return True
        time.sleep(0.1)
    return False


def _use_api(url: str | None) -> None:
    """Point this process's Prefect at `url` (None: back to ephemeral mode)."""
    from prefect.context import refresh_global_settings_context

    for key in _OWN_ENV:
        os.environ.pop(key, None)
    if url:
        os.environ["PREFECT_API_URL"] = url
        # Prefect derives its UI address from the API's; this server serves no UI, so flow
        # runs get no link to one (as in ephemeral mode).
        os.environ["PREFECT_UI_URL"] = ""
    refresh_global_settings_context()


@contextlib.contextmanager
def server_starting_alongside() -> Iterator[None]:
    """In Prefect's ephemeral mode, start its temporary API server now and let the body (the
    flow's imports: torch, MLflow, ~4 s of CPU) run while it starts; the body's end waits
    until it answers. Outside ephemeral mode (an API URL set anywhere Prefect reads one, or
    ephemeral mode disabled) it does nothing."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get(
        "PREFECT_SERVER_EPHEMERAL_ENABLED", ""
    ).lower() in ("0", "false"):
        yield
        return
    port = _free_port()
    proc = _uvicorn(port)  # first: everything below runs while it starts
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        proc.kill()  # a profile or settings file names a server: not ephemeral mode after all
        proc.wait()
        yield
        return
    address = f"http://127.0.0.1:{port}"
    atexit.register(_stop, proc, address)
    logging.getLogger("prefect").info("Starting temporary server on %s", address)
    healthy: list[bool] = []
    timeout_s = float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    waiter = threading.Thread(
        target=lambda: healthy.append(_wait_healthy(proc, f"{address}/api", timeout_s)),
        name="prefect-server-start",
        daemon=True,
    )
    waiter.start()
    _use_api(f"{address}/api")
    try:
        yield
    finally:
        waiter.join()
        if not healthy[0]:  # Prefect's own start, on first use, says what is wrong
            _stop(proc, address)
            _use_api(None)
