"""A launched process that dies with the process that launched it (Linux).

The training task starts torchrun's agent in its own session; a SIGKILLed flow process (no
cleanup) would otherwise leave torchrun training on, racing the re-run that resumes the same run
directory. The launcher names itself in PARENT_ENV and the agent asks the kernel, first thing,
for SIGTERM when its parent goes (PR_SET_PDEATHSIG); a parent already gone by then (the agent
was re-parented) ends it at once.

The request used to be made in the child between fork and exec (`subprocess.Popen(preexec_fn=...)`),
which forces a plain fork() of the launching process: fork runs the parent's atfork handlers,
and OpenBLAS's waits for its thread pool, which a concurrent numpy matmul in another thread (a
sweep's scorecard beside the next trial's launch) holds, so the sweep hung for good. Without
preexec_fn, subprocess starts the child with vfork, which runs no atfork handlers.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PARENT_ENV = "GENPAR_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Ask for SIGTERM when the parent dies, if `env` names the expected parent; True when the
    request was made. A parent that is no longer the one named (already gone) SIGTERMs this
    process now. Nothing on other platforms or without the variable."""
    expected = env.get(PARENT_ENV)
    if not expected or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    with contextlib.suppress(ValueError):
        if os.getppid() != int(expected):  # the launcher died before the request was made
            os.kill(os.getpid(), signal.SIGTERM)
    return True
