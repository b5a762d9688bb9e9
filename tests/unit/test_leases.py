"""Leases let hosts that share a genpar home judge each other's claims.

A second "host" is a process in its own pid namespace (`unshare --pid`): there, like on another
machine, the first host's pids are invisible. Staging directories and run locks used to be
judged by a local pid, so that process took a live writer for dead and deleted its work.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from genpar_models.util import lease

REPO = Path(__file__).resolve().parents[2]
FAST = {"GENPAR_LEASE_HEARTBEAT_S": "0.2", "GENPAR_LEASE_STALE_S": "2"}


def _env() -> dict[str, str]:
    return {**os.environ, **FAST, "PYTHONPATH": str(REPO)}


def _other_host_can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"])
    return probe.returncode == 0


JUDGE = """
import sys
from pathlib import Path
from genpar_models.util import atomic
from tasks import runlock
root, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
removed = atomic.remove_dead_staging(root)
print(len(removed), runlock.try_acquire(run_dir))
"""


def _judge(root: Path, run_dir: Path, *, other_host: bool) -> list[str]:
    cmd = [sys.executable, "-c", JUDGE, str(root), str(run_dir)]
    if other_host:
        cmd = ["unshare", "--pid", "--fork", "--mount-proc", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not _other_host_can_unshare(), reason="needs `unshare --pid` (root)")
def test_another_host_never_takes_a_live_writer_for_dead(tmp_path: Path) -> None:
    holder_code = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from genpar_models.util import atomic
        from tasks import runlock
        here, there, run_dir = (Path(a) for a in sys.argv[1:4])
        with atomic.staged_directory(here / "set"), atomic.staged_directory(there / "set"):
            assert runlock.try_acquire(run_dir)
            print("ready", flush=True)
            time.sleep(60)
        """
    )
    here, there, run_dir = tmp_path / "here", tmp_path / "there", tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(here), str(there), str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # a few heartbeats
        # While the writer lives, neither this host nor another one removes its work.
        assert _judge(there, run_dir, other_host=True) == ["0", "False"]
        assert _judge(here, run_dir, other_host=False) == ["0", "False"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Killed: on its own host its pid is gone at once; elsewhere its heartbeat must age first.
    assert _judge(there, tmp_path / "unused", other_host=True) == ["0", "True"]
    assert _judge(here, tmp_path / "unused2", other_host=False) == ["1", "True"]
    time.sleep(2.5)
    assert _judge(there, run_dir, other_host=True) == ["1", "True"]
    assert not [p for p in there.iterdir() if p.name.startswith("_staging-")]


def test_a_lease_as_a_mutex_waits_then_names_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "x.lease"
    first = lease.try_acquire(path)
    assert first is not None and lease.try_acquire(path) is None
    with (
        pytest.raises(TimeoutError, match=rf"held by pid {os.getpid()}"),
        lease.held(path, timeout_s=0.3),
    ):
        pass
    first.release()
    with lease.held(path, timeout_s=1):
        assert not lease.is_free(path)
    assert lease.is_free(path) and not path.exists()


def test_a_lease_of_another_host_goes_stale_without_heartbeats(tmp_path: Path) -> None:
    info = {"host": "elsewhere", "pid": 1, "token": "t", "heartbeat": time.time()}
    assert lease.holder_alive(info, stale_s=5)
    assert not lease.holder_alive({**info, "heartbeat": time.time() - 10}, stale_s=5)
    assert not lease.holder_alive({**info, "host": lease.host_id(), "pid": 2**22 + 7})
