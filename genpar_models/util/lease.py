"""Leases: claims on state in the genpar home that a process on any host can judge.

A lease is a small JSON file (host, pid, token, heartbeat) that its holder creates atomically
and refreshes every `heartbeat_s` from a background thread. Whether its holder still lives is
decided by who looks:

- on the holder's own host (same hostname, boot and pid namespace), by whether its pid runs:
  a SIGKILLed writer's lease is free at once;
- anywhere else (another machine sharing GENPAR_HOME, another container), by the heartbeat:
  the lease is stale once it is older than `stale_s`.

A pid alone says nothing on another host, and `flock` does not hold across the hosts of a
shared filesystem; leases replace both where they guard state in the genpar home (staging
directories, run locks, the SQLite store's creation, the local stack's state). Timings can be
shortened for tests with GENPAR_LEASE_HEARTBEAT_S and GENPAR_LEASE_STALE_S, and the host
identity set with GENPAR_HOST_ID. Heartbeats are wall-clock times: hosts sharing a genpar home
need clocks in step (NTP) to well within `stale_s`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genpar_models.util.env import env_seconds

HEARTBEAT_S = env_seconds("GENPAR_LEASE_HEARTBEAT_S", 10.0, minimum=0.01)
STALE_S = env_seconds("GENPAR_LEASE_STALE_S", 90.0, minimum=0.01)


@functools.cache
def host_id() -> str:
    """This host as a lease sees it: hostname, boot and pid namespace (containers on one
    machine see different pids, so they count as different hosts)."""
    if os.environ.get("GENPAR_HOST_ID"):
        return os.environ["GENPAR_HOST_ID"]
    boot = _read("/proc/sys/kernel/random/boot_id")[:8]
    try:
        pidns = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        pidns = ""
    return f"{socket.gethostname()}/{boot}/{pidns}"


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def pid_runs(pid: int) -> bool:
    """Whether process `pid` runs on this host (one we may not signal still runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_alive(info: dict[str, Any], *, stale_s: float = STALE_S) -> bool:
    """Whether the holder a lease file names still lives (see the module docstring)."""
    if info.get("host") == host_id():
        return pid_runs(int(info.get("pid", -1)))
    return time.time() - float(info.get("heartbeat", 0)) < stale_s


def read_lease(path: Path) -> dict[str, Any] | None:
    """The lease's content; None when there is none (a half-written one reads as none)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_free(path: Path, *, stale_s: float = STALE_S) -> bool:
    info = read_lease(path)
    return info is None or not holder_alive(info, stale_s=stale_s)


class Lease:
    """A held lease on `path`, refreshed until `release` (or the end of a `with` block)."""

    def __init__(self, path: Path, token: str, heartbeat_s: float) -> None:
        self.path, self.token = path, token
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(heartbeat_s,), name=f"lease-{path.name}", daemon=True
        )
        self._thread.start()

    def _beat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            info = read_lease(self.path)
            if info is None or info.get("token") != self.token:
                return  # taken over (we were judged dead) or released
            _write(self.path, {**info, "heartbeat": time.time()})

    def release(self) -> None:
        self._stop.set()
        info = read_lease(self.path)
        if info is not None and info.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _write(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def try_acquire(
    path: Path, *, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S, **extra: Any
) -> Lease | None:
    """Take the lease at `path`, or None while a live holder has it. A dead holder's lease
    is taken over; of two processes taking over at once, one wins (the rename of the stale
    file succeeds for one of them only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    now = time.time()
    info = {"host": host_id(), "pid": os.getpid(), "token": token, "acquired": now}
    info.update(heartbeat=now, **extra)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            held = read_lease(path)
            if held is not None and holder_alive(held, stale_s=stale_s):
                return None
            with contextlib.suppress(FileNotFoundError):  # someone else may take it first
                os.rename(path, path.with_name(f"{path.name}.stale-{token[:8]}"))
                path.with_name(f"{path.name}.stale-{token[:8]}").unlink()
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(info))
        return Lease(path, token, heartbeat_s)
    return None


@contextlib.contextmanager
def held(path: Path, *, timeout_s: float = 120.0, what: str = "") -> Iterator[Lease]:
    """A lease used as a mutex: wait (polling) until it is ours, hold it for the block.

    Raises:
        TimeoutError: a live holder kept it for `timeout_s` (names the file and the holder).
    """
    deadline = time.monotonic() + timeout_s
    while (lease := try_acquire(path)) is None:
        if time.monotonic() > deadline:
            holder = read_lease(path) or {}
            raise TimeoutError(
                f"{path}: {what or 'the lease'} is held by pid {holder.get('pid')} on "
                f"{holder.get('host')} since {holder.get('acquired')}; waited {timeout_s:.0f} s"
            )
        time.sleep(0.05)
    with lease:
        yield lease
