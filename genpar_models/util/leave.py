"""Leaving a process the way the interpreter would, minus its final teardown.

With torch (and in the CLI MLflow, Prefect and pandas) loaded, finalising modules and
collecting their garbage costs a process seconds after its work is done, and buys nothing
when every file was written whole and closed: measured 3.9-6.4 s after `genpar run` printed
its summary (py-spy: the main thread busy in C with no Python frame left) and 0.5-1 s for a
torchrun rank, on 2 cores. `exit_now` runs what the interpreter runs before that teardown, in
its order, then `os._exit`: threading's exit hooks and the join of non-daemon threads (Prefect
drains its log and event workers to its API here), then the atexit handlers (Prefect stops its
temporary server, logging flushes its handlers), then a flush of stdout and stderr.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn


def exit_status(code: object) -> int:
    """SystemExit's code as a process status: None is 0, a message is printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_now(code: object = 0) -> NoReturn:
    """Run the exit hooks, flush, and leave with `code` (as SystemExit would interpret it)."""
    status = exit_status(code)
    shutdown = getattr(threading, "_shutdown", None)  # CPython's own first step of exiting
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to keep
            stream.flush()
    os._exit(status)
