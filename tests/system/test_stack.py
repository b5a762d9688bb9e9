"""`genpar up/status/down` as a user meets them: a second up, a busy port, nothing running, a
stale state file, and `genpar generate` sampling the champion the nightly retrain promoted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.helpers import clean_env
from tests.system.conftest import Runs, Stack, free_port, genpar

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_status_and_a_second_up(stack: Stack, served) -> None:
    status = genpar(stack.env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "prefect  running" in status.stdout and "mlflow   running" in status.stdout
    assert "serve    running" in status.stdout and "genpar-nightly-retrain" in status.stdout
    before = json.loads((stack.home / "stack" / "stack.json").read_text())
    again = genpar(stack.env, "up")  # default ports: the running stack answers first
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout and stack.prefect_url in again.stdout
    assert json.loads((stack.home / "stack" / "stack.json").read_text()) == before


def test_a_busy_port_is_named(stack: Stack, tmp_path: Path) -> None:
    busy = stack.prefect_url.rsplit(":", 1)[1]
    out = genpar(clean_env(tmp_path / "other"), "up", "--prefect-port", busy,
                 "--mlflow-port", str(free_port()))  # fmt: skip
    assert out.returncode == 1
    assert f"port {busy} on 127.0.0.1 is already in use" in out.stderr
    assert "prefect server" in out.stderr and "--prefect-port" in out.stderr
    assert not (tmp_path / "other" / "stack" / "stack.json").exists()


def test_down_with_nothing_running_and_with_a_stale_state(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "home")
    nothing = genpar(env, "down")
    assert nothing.returncode == 0 and "nothing to stop" in nothing.stdout
    assert genpar(env, "status").returncode == 3
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    created = psutil.Process(gone.pid).create_time()
    gone.wait()
    state = tmp_path / "home" / "stack" / "stack.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    servers = [
        {"name": n, "port": p, "log": "x.log", "pid": gone.pid, "create_time": created}
        for n, p in (("prefect", 4200), ("mlflow", 5000))
    ]
    state.write_text(json.dumps({"servers": servers}))
    status = genpar(env, "status")
    assert status.returncode == 1 and f"stale: pid {gone.pid} is gone" in status.stdout
    down = genpar(env, "down")
    assert down.returncode == 0 and "was not running any more" in down.stdout
    assert not state.exists()


def test_generate_samples_the_champion(stack: Stack, runs: Runs, tmp_path: Path) -> None:
    for flow_run in runs.nightly:
        stack.wait(flow_run)
    out = tmp_path / "samples"
    result = genpar(stack.env, "generate", "--model", "champion", "--n", "40", "--out", str(out),
                    timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote 40 samples from tiny version" in result.stdout
    meta = json.loads((out / "samples.json").read_text())
    images = np.concatenate([np.load(out / c["file"]) for c in meta["chunks"]])
    assert images.shape == (40, 1, 8, 8) and images.dtype == np.uint8
    assert (out / "grid.png").stat().st_size > 0
    again = genpar(stack.env, "generate", "--n", "4", "--out", str(out))
    assert again.returncode == 1 and "is not empty" in again.stderr
