"""glibc malloc thresholds for tensor work: keep freed activation buffers instead of
returning them to the kernel after every forward pass.

glibc serves an allocation above its mmap threshold (128 KiB at start, raised dynamically up
to 32 MiB) with a fresh mmap, and gives heap memory above its trim threshold back at every
free. A CPU forward pass of a conv model allocates and frees activation tensors of several
MiB per layer, so a fresh process pays page faults for every one of them: sampling mnist-vae
in a new process spent 0.73 s of 1.6 s in the kernel (420,000 minor faults for 4,000 samples)
and ran at 2,500 samples/s; with these thresholds 4,350 samples/s, 1.7x (measured on this
project's 2-core machine; tests/unit/test_malloc.py counts the faults). A process that had
freed a 30 MiB block earlier got the same speed by glibc's own adjustment, which is why a
long-lived benchmark process looked faster than the clean processes Dask and torchrun start.

The thresholds hold only for glibc's main arena. A thread's allocations come from an arena of
its own, made of 64 MiB heaps, and a heap that empties is unmapped whatever the trim
threshold: a Dask worker runs each chunk in a thread of its executor, and there mnist-vae's
sampling faulted in 3,200-89,000 pages per 1,000 samples, chunk after chunk (0.39 s a chunk
where a plain process took 0.30 s; genpar's Dask generation ran at 0.72-0.78x the same loop
in a pool process). With one arena (ARENA_MAX), every thread allocates from the main arena:
2 faults per chunk, and the worker as fast as the pool process
(tests/integration/test_dask_stages.py counts them). The cost of one arena is threads
waiting on its lock when several allocate at once; tensor work allocates a few large blocks
per layer, and Python's small objects come from its own allocator under the GIL. Measured
side by side (fresh processes, with and without it): mnist-vae's evaluation 50.1 s and 49.0 s,
2-rank DDP training 1,137-1,467 and 1,268-1,426 samples/s, an empty Prefect flow with its
ephemeral server 7.9-9.9 s and 7.9-9.2 s, 2-thread sampling 4,409-5,478 and 4,477-5,040
samples/s: no cost above this machine's noise. At run time (mallopt) it reaches only threads
that have not allocated yet; the processes genpar starts get it from their environment.

`tune()` sets these in this process (mallopt) and, through MALLOC_* variables, in the
processes it starts (torchrun ranks, Dask workers). The cost is memory: a process may keep
up to TRIM_THRESHOLD of freed heap. A user's own MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_, MALLOC_ARENA_MAX or glibc.malloc tunables (GLIBC_TUNABLES) win: genpar
then sets none of them. GENPAR_MALLOC_TUNING=0 turns it off. Not glibc: nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD = 32 * 2**20  # glibc's ceiling for the dynamic threshold (64-bit)
TRIM_THRESHOLD = 128 * 2**20
ARENA_MAX = 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # malloc.h
_ENV = {
    "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD,
    "MALLOC_TRIM_THRESHOLD_": TRIM_THRESHOLD,
    "MALLOC_ARENA_MAX": ARENA_MAX,
}
_done = False


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # this process's own symbols (libc among them): no ldconfig subprocess at start-up,
        # which ctypes.util.find_library would run in every CLI call and rank
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError on musl and others
    except (OSError, AttributeError):
        return None
    return libc


def tune() -> bool:
    """Set the thresholds here and for child processes, once; True when this process's were
    set (False: turned off, set by the user, or not glibc)."""
    global _done
    if _done:
        return True
    if os.environ.get("GENPAR_MALLOC_TUNING", "1") == "0":
        return False
    if _users_own():  # already applied by glibc at this process's start
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and ok
    ok = libc.mallopt(_M_ARENA_MAX, ARENA_MAX) == 1 and ok
    if ok:
        for key, value in _ENV.items():
            os.environ[key] = str(value)
    _done = ok
    return ok


def _users_own() -> bool:
    """Whether the user set any of glibc's malloc settings for this process themselves."""
    return any(k in os.environ for k in _ENV) or "glibc.malloc." in os.environ.get(
        "GLIBC_TUNABLES", ""
    )
