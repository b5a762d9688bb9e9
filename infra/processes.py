"""Background server processes: start detached, recognise after a restart, stop as a group.

`genpar up` starts servers that outlive it, so what identifies one later is a record on disk:
its pid *and* its start time (a pid alone can be reused by an unrelated process after a
reboot or a crash). Each server runs in its own session, so stopping it signals the whole
process group: `mlflow server` forks uvicorn workers and huey job consumers that a plain kill
of the parent would leave running. Descendants are collected before the signal, and any that
left the group are killed too.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Proc:
    """A started process as recorded on disk: enough to find it again, or know it is gone."""

    pid: int
    create_time: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path, **popen: Any) -> Proc:
    """Start argv detached (own session, output to `log`), return its record; `popen` adds
    Popen arguments (another `user` and `group` for PostgreSQL under root)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen,
        )
    return Proc(pid=proc.pid, create_time=psutil.Process(proc.pid).create_time())


def handle(record: Proc) -> psutil.Process | None:
    """The live process the record names, or None (gone, a zombie, or a reused pid)."""
    try:
        p = psutil.Process(record.pid)
        if abs(p.create_time() - record.create_time) > 1.0:
            return None  # the pid now belongs to another process
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.NoSuchProcess:
        return None


def _leads_group(p: psutil.Process) -> bool:
    try:
        return os.getpgid(p.pid) == p.pid
    except ProcessLookupError:
        return False


def _signal(p: psutil.Process, sig: int) -> None:
    """Signal the process group when `p` leads one (servers started by `spawn`), else `p`."""
    with contextlib.suppress(ProcessLookupError, PermissionError, psutil.NoSuchProcess):
        if _leads_group(p):
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)


def stop(record: Proc, grace_s: float = 20.0, sig: int = signal.SIGTERM) -> bool:
    """Signal the process (group), wait, then SIGKILL whatever is left. False if it was gone."""
    p = handle(record)
    if p is None:
        return False
    family = [p]
    with contextlib.suppress(psutil.NoSuchProcess):
        family += p.children(recursive=True)  # collected first: a dead parent loses them
    leader = _leads_group(p)
    _signal(p, sig)
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for q in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            q.kill()
    if leader:  # anything still in the server's group, descendant or not
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(record.pid, os.WNOHANG)  # reap it if we happen to be its parent
    return True


def port_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on host:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like the servers themselves: a port in TIME_WAIT counts as free, a listener does not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_user(port: int) -> str | None:
    """'pid N (command …)' of the process listening on the port, when the OS tells us."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            try:
                argv = [Path(a).name for a in psutil.Process(c.pid).cmdline()]
            except psutil.Error:
                argv = []
            argv = [a for a in argv if not a.startswith("python")][:3]
            return f"pid {c.pid}: {' '.join(argv) or '?'}"
    return None


def http_ok(url: str, timeout_s: float = 3.0) -> bool:
    """Whether GET url answers 200 (a health endpoint); False for anything else, including a
    port held by something that does not speak HTTP (http.client's BadStatusLine)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException):
        return False


def wait_healthy(checks: dict[str, tuple[Proc, str]], timeout_s: float) -> dict[str, str]:
    """Poll each (process, health URL) until healthy; return {name: problem} for the rest."""
    pending, problems = dict(checks), {}
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for name, (record, url) in list(pending.items()):
            if handle(record) is None:
                problems[name] = "exited during startup"
                del pending[name]
            elif http_ok(url):
                del pending[name]
        if pending:
            time.sleep(0.5)
    problems.update({name: f"not healthy after {timeout_s:.0f} s" for name in pending})
    return problems


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
