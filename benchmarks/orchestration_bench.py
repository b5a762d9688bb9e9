"""Orchestration overhead: what `genpar run` costs beyond the stages' own compute, and where.

End to end: the real `genpar run CONFIG` in a subprocess (fresh GENPAR_HOME, warm Prefect
database), ephemeral Prefect versus a running `prefect server`. Compute: the training loop
(result.json), and preprocessing, evaluation and generation timed inside their tasks'
library calls. Per-task wall times come from Prefect's own database; the Dask cluster's
start-up and close (one per flow run at most) are timed inside the run (`dask/...` metrics).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks.common import Result, stopwatch

REPO = Path(__file__).resolve().parents[1]
TRACKING_TASKS = (
    "start-run",
    "record-dataset",
    "plot-curves",
    "log-artifacts",
    "register-model",
    "finish-run",
)


def _env(home: Path, prefect_home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        GENPAR_HOME=str(home),
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=api_url or "",
    )
    if not api_url:
        env.pop("PREFECT_API_URL")
    return env


def genpar_run(config: str, home: Path, prefect_home: Path, api_url: str | None = None) -> float:
    genpar = str(Path(sys.executable).with_name("genpar"))
    with stopwatch() as t:
        subprocess.run(
            [genpar, "run", config],
            env=_env(home, prefect_home, api_url),
            check=True,
            capture_output=True,
            cwd=REPO,
        )
    return t["s"]


def create_prefect_database(home: Path, prefect_home: Path) -> None:
    """Start and stop Prefect's ephemeral server once, which creates and migrates its database."""
    start_stop = (
        "from prefect.server.api.server import SubprocessASGIServer as S; "
        "s = S(); s.start(); s.stop()"
    )
    subprocess.run(
        [sys.executable, "-c", start_stop],
        env={**_env(home, prefect_home), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"},
        check=True,
        capture_output=True,
        cwd=REPO,
    )


def task_durations(prefect_home: Path) -> dict[str, float]:
    """Wall seconds per task of the newest flow run, read from Prefect's SQLite database."""
    db = sqlite3.connect(prefect_home / "prefect.db")
    (flow_run,) = db.execute("SELECT id FROM flow_run ORDER BY created DESC LIMIT 1").fetchone()
    rows = db.execute(
        "SELECT name, start_time, end_time FROM task_run WHERE flow_run_id = ?", (flow_run,)
    ).fetchall()
    return {name: _ts(end) - _ts(start) for name, start, end in rows if start and end}


def cluster_starter(prefect_home: Path) -> str | None:
    """The stage of the newest flow run that started its Dask cluster (its log says so)."""
    db = sqlite3.connect(prefect_home / "prefect.db")
    (flow_run,) = db.execute("SELECT id FROM flow_run ORDER BY created DESC LIMIT 1").fetchone()
    row = db.execute(
        "SELECT message FROM log WHERE flow_run_id = ? AND message LIKE ?",
        (flow_run, "%: started the flow run's Dask cluster%"),
    ).fetchone()
    return row[0].split(":")[0] if row else None


def task_time(durations: dict[str, float], task: str) -> float:
    """Seconds spent in task runs of `task` (run names are `task` plus a suffix)."""
    return sum(v for k, v in durations.items() if k == task or k.startswith(task + "-"))


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_summary(home: Path) -> dict:
    (summary,) = home.glob("runs/*/*/summary.json")
    return json.loads(summary.read_text())


def prefect_server(prefect_home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _env(prefect_home.parent, prefect_home)
    prefect = str(Path(sys.executable).with_name("prefect"))
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("prefect server did not start")


def breakdown(config: str, work: Path, label: str) -> list[Result]:
    """One ephemeral run of `config`, decomposed into compute and named overheads."""
    prefect_home = work / "prefect"
    home = work / f"home-{label}"
    wall = genpar_run(config, home, prefect_home)
    tasks = task_durations(prefect_home)
    summary = run_summary(home)
    result = json.loads((Path(summary["run_dir"]) / "result.json").read_text())
    # The run's one Dask cluster at most, timed inside it: started within the task of the
    # stage that first needed it, closed by the flow after generation.
    metrics = summary["metrics"]
    started, startup = int(metrics["dask/clusters_started"]), metrics["dask/startup_s"]
    starter = cluster_starter(prefect_home)
    stages = {"preprocessing": "preprocess", "evaluation": "evaluate", "generation": "generate"}
    compute = {"training loop": result["wall_s"]}
    for row, stage in stages.items():
        compute[row] = task_time(tasks, stage) - (startup if starter == stage else 0.0)
    parts = {
        "torchrun + rank start-up/teardown": task_time(tasks, "train") - result["wall_s"],
        f"Dask cluster start-up and close ({started} started)": startup + metrics["dask/close_s"],
        "MLflow logging tasks": sum(task_time(tasks, t) for t in TRACKING_TASKS),
        "preflight (machine, tracking store)": task_time(tasks, "preflight"),
    }
    overhead = wall - sum(compute.values())
    parts["Prefect start-up, imports, task bookkeeping"] = overhead - sum(parts.values())
    sec = f"orchestration ({Path(config).stem}, ephemeral Prefect)"
    budget = "digits" in config  # issue 18's budget: at most 12 s for the digits pipeline
    return [
        Result(sec, "end-to-end wall", wall, "s"),
        Result(
            sec,
            "stages' own compute",
            sum(compute.values()),
            "s",
            note="; ".join(f"{k} {v:.1f} s" for k, v in compute.items()),
        ),
        Result(
            sec,
            "orchestration overhead",
            overhead,
            "s",
            baseline="12 s budget" if budget else None,
            ratio=overhead / 12.0 if budget else None,
            target=1.0 if budget else None,
            target_kind="max",
        ),
        *[Result(sec, f"- {k}", v, "s") for k, v in parts.items()],
    ]


def run(work: Path, quick: bool) -> list[Result]:
    work.mkdir(parents=True, exist_ok=True)
    prefect_home = work / "prefect"
    tiny = str(REPO / "configs" / "tiny.yaml")
    if not quick:  # the first start creates Prefect's database (~20 s): keep it out of the figures
        create_prefect_database(work / "home-warmup", prefect_home)
    results = breakdown(tiny, work, "tiny")
    if quick:
        return results
    ephemeral = results[0].value  # that run's end-to-end wall
    results += breakdown(str(REPO / "configs" / "digits-vae.yaml"), work, "digits")
    server, url = prefect_server(work / "prefect-server")
    try:
        with_server = genpar_run(tiny, work / "home-server", work / "prefect-server", url)
    finally:
        os.killpg(server.pid, 15)
        server.wait()
    sec = "orchestration (tiny): ephemeral Prefect vs a running server"
    results += [
        Result(sec, "genpar run, ephemeral Prefect", ephemeral, "s"),
        Result(
            sec,
            "genpar run, running Prefect server",
            with_server,
            "s",
            baseline="ephemeral",
            ratio=with_server / ephemeral,
            note=f"saves {ephemeral - with_server:.1f} s per run",
        ),
    ]
    return results
