"""How many CPU cores this process may really use: its affinity, capped by a cgroup CPU quota.

`os.cpu_count()` counts the host's cores. In a container or under `taskset` the process may use
fewer: the CPU affinity mask says which cores it may run on, and a cgroup quota (Docker's
`--cpus`, Kubernetes' CPU limit) how much CPU time it gets. genpar sizes training ranks, torch
threads and Dask workers by this number, so it never plans more workers than it can run.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cores(*, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path | None = None) -> int:
    """Cores usable now: the affinity mask's size, capped by the cgroup quota (at least 1)."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup or Path("/proc/self/cgroup"))
    if quota is not None:
        cores = min(cores, math.floor(quota))  # 1.5 CPUs of quota run one busy worker well
    return max(1, cores)


def cgroup_cpu_quota(root: Path, proc_cgroup: Path) -> float | None:
    """The tightest CPU quota (in CPUs) over this process's cgroup and its ancestors, from
    cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`; None when unlimited."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        names = controllers.split(",") if controllers else []
        if not names:  # cgroup v2: one unified hierarchy
            limits += [_v2_limit(d) for d in _ancestors(root, path)]
        elif "cpu" in names:
            mount = root / controllers if (root / controllers).is_dir() else root / "cpu"
            limits += [_v1_limit(d) for d in _ancestors(mount, path)]
    found = [q for q in limits if q is not None]
    return min(found) if found else None


def _ancestors(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory and its parents up to the mount (inside a container the process
    often sees its own cgroup as the mount's root)."""
    parts = [p for p in path.strip("/").split("/") if p]
    return [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_limit(directory: Path) -> float | None:
    raw = _read(directory / "cpu.max")  # "max 100000" or "150000 100000"
    if not raw:
        return None
    quota, _, period = raw.partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def _v1_limit(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None or int(quota) <= 0:
        return None
    return int(quota) / int(period)
