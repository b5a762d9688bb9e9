"""Orchestration overhead: what `genpar run` costs beyond the stages' own compute, and where.

End to end: the real `genpar run CONFIG` in a subprocess (fresh GENPAR_HOME, warm Prefect
database): tiny and digits in Prefect's ephemeral mode, digits against a running local stack
(`genpar up`: Prefect and MLflow servers), and tiny against a running `prefect server`. tiny's
budget holds after the first run on a machine, so its timed run is its home's second; the
first (which trains the evaluation's extractor and writes the shards) is shown beside it.
Compute: the training loop (result.json), and preprocessing, evaluation and generation timed
inside their tasks' library calls. The overhead's rows are timed inside the run too, and add
up to it: the flow run's and every task run's start and end from Prefect's own database, the
launch and exit of the `genpar run` process, the Dask cluster's start-up and close (one per
flow run at most, `dask/...` metrics).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from benchmarks import orchestration_floor
from benchmarks.common import Result, interleaved, median, stopwatch

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
    return timed_genpar_run(config, home, prefect_home, api_url)[0]


def timed_genpar_run(
    config: str, home: Path, prefect_home: Path, api_url: str | None = None
) -> tuple[float, float, float]:
    """`genpar run CONFIG` in a subprocess: (wall seconds, epoch at launch, epoch at its exit)."""
    genpar = str(Path(sys.executable).with_name("genpar"))
    started = time.time()
    with stopwatch() as t:
        subprocess.run(
            [genpar, "run", config],
            env=_env(home, prefect_home, api_url),
            check=True,
            capture_output=True,
            cwd=REPO,
        )
    return t["s"], started, time.time()


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


def flow_run_times(prefect_home: Path) -> tuple[float, float]:
    """Epoch start and end of the newest flow run, from Prefect's SQLite database."""
    db = sqlite3.connect(prefect_home / "prefect.db")
    start, end = db.execute(
        "SELECT start_time, end_time FROM flow_run ORDER BY created DESC LIMIT 1"
    ).fetchone()
    return _ts(start), _ts(end)


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
    """The summary of the newest run in `home`."""
    newest = max(home.glob("runs/*/*/summary.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(newest.read_text())


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


# issue 18: configs/tiny.yaml end to end, after the first run on a machine (that one trains
# the evaluation's extractor and writes the shards: it is timed and shown beside)
TINY_BUDGET_S = 15.0


def breakdown(
    config: str, work: Path, label: str, stack: bool = False, warm: bool = False
) -> list[Result]:
    """One run of `config` (ephemeral Prefect, or with `stack` against a running local stack:
    `genpar up`'s Prefect and MLflow servers), decomposed into compute and named overheads.
    With `warm`, the timed run is the home's second: the first (caches filled) is shown too.

    Every row is timed inside the run: the launch and exit of `genpar run`, the flow run's and
    each task run's start and end in Prefect's database, the training loop (result.json) and
    the Dask cluster (`dask/...` metrics). The rows add up to the wall time: before the flow
    run + the task runs + Prefect between them + after the flow run."""
    home = work / f"home-{label}"
    prefect_home = home / "prefect" if stack else work / "prefect"
    # issue 18's budgets for the digits pipeline: 12 s embedded, 8 s against a running stack
    budget = (8.0 if stack else 12.0) if "digits" in config else None
    floors: dict[str, list[float]] = {}
    with local_stack(home) if stack else contextlib.nullcontext():
        first = genpar_run(config, home, prefect_home) if warm else None
        wall, launched, exited = timed_genpar_run(config, home, prefect_home)
        # Read from Prefect's database first: the floor's own flow runs become the newest.
        tasks = task_durations(prefect_home)
        flow_start, flow_end = flow_run_times(prefect_home)
        starter = cluster_starter(prefect_home)
        if budget:  # beside the run it bounds, in the same Prefect database and stack
            floors = measure_floors(_env(home, prefect_home), stack)
    summary = run_summary(home)
    result = json.loads((Path(summary["run_dir"]) / "result.json").read_text())
    # The run's one Dask cluster at most, timed inside it: started within the task of the
    # stage that first needed it, closed by the flow after generation.
    metrics = summary["metrics"]
    started, startup = int(metrics["dask/clusters_started"]), metrics["dask/startup_s"]
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
    # The close runs in the flow between tasks: it is part of the flow's time, not a task's.
    in_tasks = sum(compute.values()) + sum(parts.values()) - metrics["dask/close_s"]
    parts["other tasks (evaluation and run report logging)"] = sum(tasks.values()) - in_tasks
    parts["CLI start until the flow run starts (imports, Prefect server)"] = flow_start - launched
    parts["Prefect between task runs (task bookkeeping, results)"] = (
        flow_end - flow_start - sum(tasks.values()) - metrics["dask/close_s"]
    )
    parts["after the flow run (summary, exit)"] = exited - flow_end
    overhead = wall - sum(compute.values())
    where = "a running local stack" if stack else "ephemeral Prefect"
    sec = f"orchestration ({Path(config).stem}, {where})"
    unaccounted = overhead - sum(parts.values())
    floor_rows, floor = [], None
    if floors:
        medians = {k: median(v) for k, v in floors.items()}
        floor_s = sum(medians.values())
        floor = (floor_s / budget, "an empty Prefect flow + a trivial 2-rank torchrun")
        floor_rows = [
            *[
                Result(sec, f"floor: {k}", v, "s", note=_spread(floors[k]))
                for k, v in medians.items()
            ],
            Result(
                sec,
                "floor: the two together (what any Prefect + torchrun pipeline pays)",
                floor_s,
                "s",
                note=f"genpar's overhead is {overhead - floor_s:.1f} s above it",
            ),
        ]
    wall_rows = [Result(sec, "end-to-end wall", wall, "s")]
    if first is not None:
        wall_rows = [
            Result(
                sec, "first run in a fresh home (extractor trained, shards written)", first, "s"
            ),
            Result(
                sec,
                "end-to-end wall, the home's second run",
                wall,
                "s",
                baseline=f"{TINY_BUDGET_S:.0f} s budget",
                ratio=wall / TINY_BUDGET_S,
                target=1.0,
                target_kind="max",
            ),
        ]
    return [
        *wall_rows,
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
            baseline=f"{budget:.0f} s budget" if budget else None,
            ratio=overhead / budget if budget else None,
            target=1.0 if budget else None,
            target_kind="max",
            note=f"rows below add up to it within {abs(unaccounted):.2f} s",
            floor=floor,
        ),
        *[Result(sec, f"- {k}", v, "s") for k, v in parts.items()],
        *floor_rows,
    ]


FLOOR_REPEATS = 3


def measure_floors(env: dict[str, str], stack: bool) -> dict[str, list[float]]:
    """The overhead's floor (benchmarks/orchestration_floor.py), each part `FLOOR_REPEATS`
    times in alternation: seconds by part."""
    flow = "empty Prefect flow, fresh process" + (
        " (against the stack)" if stack else " (ephemeral: its server's start included)"
    )
    return interleaved(
        {
            flow: lambda: orchestration_floor.empty_flow_s(env, stack),
            "trivial 2-rank torchrun (gloo, one barrier)": lambda: (
                orchestration_floor.trivial_torchrun_s(env)
            ),
        },
        FLOOR_REPEATS,
    )


def _spread(values: list[float]) -> str:
    return f"median of {len(values)}: " + ", ".join(f"{v:.2f}" for v in values)


@contextlib.contextmanager
def local_stack(home: Path) -> Iterator[None]:
    """`genpar up` in `home` on free ports (its Prefect database created and migrated before
    anything is timed), `genpar down` after."""
    genpar = str(Path(sys.executable).with_name("genpar"))
    env = {**_env(home, home / "prefect"), "GENPAR_HOME": str(home)}
    ports = [str(_free_port()), str(_free_port())]
    up = [genpar, "up", "--prefect-port", ports[0], "--mlflow-port", ports[1]]
    subprocess.run(up, env=env, check=True, capture_output=True, cwd=REPO)
    try:
        yield
    finally:
        subprocess.run([genpar, "down"], env=env, check=True, capture_output=True, cwd=REPO)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(work: Path, quick: bool) -> list[Result]:
    work.mkdir(parents=True, exist_ok=True)
    prefect_home = work / "prefect"
    tiny = str(REPO / "configs" / "tiny.yaml")
    if not quick:  # the first start creates Prefect's database (~20 s): keep it out of the figures
        create_prefect_database(work / "home-warmup", prefect_home)
    results = breakdown(tiny, work, "tiny", warm=not quick)
    if quick:
        return results
    ephemeral = results[1].value  # the second run's end-to-end wall
    digits = str(REPO / "configs" / "digits-vae.yaml")
    results += breakdown(digits, work, "digits")
    results += breakdown(digits, work, "digits-stack", stack=True)
    server, url = prefect_server(work / "prefect-server")
    try:
        genpar_run(tiny, work / "home-server", work / "prefect-server", url)  # fills caches
        with_server = genpar_run(tiny, work / "home-server", work / "prefect-server", url)
    finally:
        os.killpg(server.pid, 15)
        server.wait()
    sec = "orchestration (tiny): ephemeral Prefect vs a running server"
    results += [
        Result(sec, "genpar run, ephemeral Prefect (a home's second run)", ephemeral, "s"),
        Result(
            sec,
            "genpar run, running Prefect server (a home's second run)",
            with_server,
            "s",
            baseline="ephemeral",
            ratio=with_server / ephemeral,
            note=f"saves {ephemeral - with_server:.1f} s per run",
        ),
    ]
    return results
