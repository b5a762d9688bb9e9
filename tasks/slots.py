"""The machine's trial slots: a Prefect global concurrency limit per host, so two sweeps on one
machine never train more trials than it fits, and a killed sweep's slots are free at once.

The limit `genpar-trials-<host>` has one slot per CPU core (or GPU); a trial occupies its
`trial_compute` (ranks x threads, or GPUs). Prefect keeps a slot as a lease that the holder
renews; a holder that dies keeps it until the lease expires (300 s by default, 60 s at the
least), and in ephemeral mode the lease lives in the memory of a server that died with the
sweep, so nothing would ever give it back. Therefore every holder also writes a small record
(pid, process start time, slots, lease id) under `$GENPAR_HOME/sweeps/slots/<host>/`, and a
sweep starting on this host first sets the limit's active slots to what living holders hold:
a SIGKILLed sweep's slots are free for its re-run immediately.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil

from genpar_models.util import atomic, lease
from genpar_models.util.paths import genpar_home

LEASE_S = 60.0  # Prefect's minimum; renewed in the background while the trial runs


def limit_name() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", socket.gethostname()).strip("-")[:60] or "host"
    return f"genpar-trials-{host}"


def _records_dir() -> Path:
    return genpar_home() / "sweeps" / "slots" / limit_name()


def _alive(record: dict) -> bool:
    try:
        proc = psutil.Process(int(record["pid"]))
        return abs(proc.create_time() - float(record["create_time"])) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError):
        return False


def _records() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(_records_dir().glob("*.json")) if _records_dir().exists() else []:
        with contextlib.suppress(OSError, ValueError):
            out.append((path, json.loads(path.read_text())))
    return out


def ensure_limit(capacity: int) -> str:
    """Create (or resize) this host's limit and give back the slots of dead holders.

    Returns the limit's name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = limit_name()
    live = 0
    for path, record in _records():
        if _alive(record):
            live += int(record.get("slots", 0))
        else:
            path.unlink(missing_ok=True)
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=capacity)
                )
            limit = client.read_global_concurrency_limit_by_name(name)
        update = {}
        if limit.limit != capacity:
            update["limit"] = capacity
        if limit.active_slots > live:  # held by holders that died: free them now
            update["active_slots"] = live
        if update:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(**update))
    return name


_PICK = threading.Lock()


def _free_gpus(units: int, pool: int) -> list[int]:
    """The lowest `units` GPU ids of 0..pool-1 that no living holder has (the limit's slots
    guarantee there are enough)."""
    taken = {g for _, r in _records() if _alive(r) for g in r.get("gpus", [])}
    free = [g for g in range(pool) if g not in taken]
    return free[:units]


@contextlib.contextmanager
def trial_slots(units: int, what: str, gpu_pool: int = 0) -> Iterator[list[int]]:
    """Hold `units` slots of this host's limit (waiting for them) while the block runs; on a
    GPU machine (`gpu_pool` GPUs) the slots are GPUs and the block gets their ids."""
    from prefect.concurrency._leases import maintain_concurrency_lease
    from prefect.concurrency._sync import (
        acquire_concurrency_slots_with_lease,
        release_concurrency_slots_with_lease,
    )

    name = limit_name()
    granted = acquire_concurrency_slots_with_lease(
        [name], units, lease_duration=LEASE_S, strict=True, suppress_warnings=True
    )
    me = psutil.Process()
    record = _records_dir() / f"{granted.lease_id}.json"
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        with _PICK, lease.held(record.parent / ".pick.lease", what="picking GPUs"):
            gpus = _free_gpus(units, gpu_pool) if gpu_pool else []
            info = {
                "pid": me.pid,
                "create_time": me.create_time(),
                "slots": units,
                "gpus": gpus,
                "lease_id": str(granted.lease_id),
                "what": what,
            }
            atomic.write_json(record, info)
        with maintain_concurrency_lease(granted.lease_id, LEASE_S, suppress_warnings=True):
            yield gpus
    finally:
        try:
            release_concurrency_slots_with_lease(granted.lease_id)
        finally:
            record.unlink(missing_ok=True)
