"""The `genpar` console script as a user runs it: ephemeral Prefect, real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from tests.conftest import TINY
from tests.helpers import clean_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GENPAR = str(Path(sys.executable).with_name("genpar"))


def _genpar(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GENPAR, *args], env=clean_env(home), capture_output=True, text=True, timeout=timeout
    )


def test_help_and_config_errors(tmp_path: Path) -> None:
    out = _genpar(tmp_path, "--help")
    assert out.returncode == 0
    for command in ("run", "runs", "config", "ui", "home"):
        assert command in out.stdout
    run_help = _genpar(tmp_path, "run", "--help")
    assert "--set" in run_help.stdout and "GENPAR_HOME" in run_help.stdout
    bad = _genpar(tmp_path, "run", str(TINY), "--set", "train.lr=-1")
    assert bad.returncode == 2 and "train.lr" in bad.stderr and "greater than 0" in bad.stderr
    typo = _genpar(tmp_path, "config", str(TINY), "--set", "trian.lr=1")
    assert typo.returncode == 2 and "unknown key 'trian'" in typo.stderr
    shown = _genpar(tmp_path, "config", str(TINY), "--set", "train.max_steps=7")
    assert shown.returncode == 0 and "max_steps: 7" in shown.stdout
    assert not (tmp_path / "shards").exists()  # config errors cost no work


def _ranks_alive(home: Path) -> list[psutil.Process]:
    """Training ranks of runs under `home` (their --spec lies there), not other genpar jobs."""
    alive = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "genpar_models.train" in cmd and str(home) in cmd and "pytest" not in cmd:
            alive.append(p)
    return alive


def test_killed_run_resumes_when_the_same_command_runs_again(tmp_path: Path) -> None:
    home = tmp_path / "home"
    args = [
        GENPAR,
        "run",
        str(TINY),
        "--set",
        "train.max_steps=400",
        "--set",
        "train.checkpoint_every_steps=25",
        "--set",
        "train.log_every_steps=25",
    ]
    proc = subprocess.Popen(
        args,
        env=clean_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list(home.glob("runs/*/*/checkpoints/ckpt-*.json")):
            assert proc.poll() is None, "genpar run ended before its first checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # the flow process dies without any cleanup
        proc.wait()
        time.sleep(5)
        assert not _ranks_alive(home), "training ranks outlived the killed flow process"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the ephemeral Prefect server, if orphaned
    (run_dir,) = home.glob("runs/tiny/*")

    again = _genpar(home, *args[1:])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming MLflow run {run_dir.name}" in again.stdout + again.stderr
    client = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(run_dir.name)
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["genpar.resumed_from_step"]) >= 25
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == list(range(25, 401, 25))  # continuous, nothing logged twice
    assert not (run_dir / "torchrun.pid").exists() and not _ranks_alive(home)

    listing = _genpar(home, "runs", "--sort", "eval/elbo", "--desc")
    assert listing.returncode == 0 and run_dir.name[:12] in listing.stdout
