"""An exclusive lock per run directory, held by the process that drives the run.

`flock` locks vanish when their process dies (even by SIGKILL), which is exactly the signal a
re-run needs: an unfinished run whose lock is free was abandoned and may be resumed; one whose
lock is held is being driven right now and must not be touched by a second pipeline.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

_HELD: dict[str, int] = {}
_GUARD = threading.Lock()


def try_acquire(run_dir: Path) -> bool:
    """Take the lock of run_dir for this process; False if another process holds it."""
    key = str(run_dir.resolve())
    with _GUARD:
        if key in _HELD:
            return True
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[key] = fd
        return True


def release(run_dir: Path) -> None:
    key = str(run_dir.resolve())
    with _GUARD:
        fd = _HELD.pop(key, None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
