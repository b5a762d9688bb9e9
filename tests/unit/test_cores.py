"""Core counts respect the container: CPU affinity and cgroup quotas, not os.cpu_count()."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genpar_models.util.cores import available_cores, cgroup_cpu_quota


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_cgroup_v2_quota_of_the_cgroup_or_an_ancestor(tmp_path: Path) -> None:
    root = _tree(
        tmp_path / "fs",
        {"cpu.max": "max 100000\n", "kube/pod/cpu.max": "150000 100000\n", "kube/cpu.max": "max"},
    )
    proc = _tree(tmp_path, {"cgroup": "0::/kube/pod\n"}) / "cgroup"
    assert cgroup_cpu_quota(root, proc) == pytest.approx(1.5)
    assert available_cores(cgroup_root=root, proc_cgroup=proc) == 1


def test_cgroup_v1_quota_and_no_limit(tmp_path: Path) -> None:
    root = _tree(
        tmp_path / "fs",
        {
            "cpu,cpuacct/docker/x/cpu.cfs_quota_us": "300000",
            "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000",
        },
    )
    proc = _tree(tmp_path, {"cgroup": "4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n"}) / "cgroup"
    assert cgroup_cpu_quota(root, proc) == pytest.approx(3.0)
    unlimited = _tree(
        tmp_path / "none", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    )
    other = _tree(tmp_path / "p2", {"cgroup": "1:cpu:/\n"}) / "cgroup"
    assert cgroup_cpu_quota(unlimited, other) is None
    assert cgroup_cpu_quota(tmp_path / "missing", tmp_path / "no-such-file") is None


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_an_affinity_of_one_core_plans_one_worker_and_refuses_two_ranks() -> None:
    code = (
        "from genpar_models.util.cores import available_cores;"
        "from genpar_models.config import ComputeConfig;"
        "from tasks.cluster import local_workers;"
        "from tasks.launcher import plan_processes;"
        "print(available_cores(), local_workers(ComputeConfig()),"
        " plan_processes(ComputeConfig(cpu_procs=1), 0).threads_per_proc);"
        "plan_processes(ComputeConfig(cpu_procs=2), 0)"
    )
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert out.stdout.split() == ["1", "1", "1"], out.stderr
    assert "compute.cpu_procs=2 is more than the 1 core(s) this process may use" in out.stderr
