"""An exclusive claim per run directory, held by the process that drives the run.

The claim is a lease (genpar_models/util/lease.py) in `<run dir>/.lease`, refreshed while the
run goes on. A re-run judges it: an unfinished run whose lease is free was abandoned (its
driver died, on this host or another one sharing the genpar home) and may be resumed; one
whose lease is held is being driven right now and must not be touched by a second pipeline.
"""

from __future__ import annotations

import threading
from pathlib import Path

from genpar_models.util import lease

LEASE_FILE = ".lease"
_HELD: dict[str, lease.Lease] = {}
_GUARD = threading.Lock()


def try_acquire(run_dir: Path) -> bool:
    """Take the claim of run_dir for this process; False while another live process holds it."""
    key = str(run_dir.resolve())
    with _GUARD:
        if key in _HELD:
            return True
        run_dir.mkdir(parents=True, exist_ok=True)
        claim = lease.try_acquire(run_dir / LEASE_FILE, run_dir=key)
        if claim is None:
            return False
        _HELD[key] = claim
        return True


def release(run_dir: Path) -> None:
    key = str(run_dir.resolve())
    with _GUARD:
        claim = _HELD.pop(key, None)
    if claim is not None:
        claim.release()
