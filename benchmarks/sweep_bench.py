"""Task parallelism: a sweep of N tiny trials against N sequential `genpar run`s of the same
configs, in the same benchmark run, and genpar's own overhead per trial.

Both sides are real subprocesses of the console script with a warm Prefect database, each on
its own fresh GENPAR_HOME: `genpar sweep` (trials 1 rank x 1 thread, as many at once as the
machine fits) and `genpar run` once per trial config, one after the other in one home (the
same lr, the same 1 x 1 compute; the second run on finds the shards and the evaluation cache
the first built, as a user's second run would). The overhead per trial comes from timestamps
inside the run (tasks/sweep.py records them in each trial's trial.json): trial task start to
torchrun start, plus torchrun end to trial task end minus the evaluation's own seconds. Where
the sweep's time goes is read from the same timestamps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Result, median, stopwatch
from benchmarks.orchestration_bench import _env, create_prefect_database

REPO = Path(__file__).resolve().parents[1]
LRS = [0.0005, 0.001, 0.002, 0.003, 0.005, 0.008, 0.01, 0.02]


def _sweep_file(work: Path, lrs: list[float]) -> Path:
    path = work / "bench-sweep.yaml"
    path.write_text(
        f"name: bench\nbase: {REPO / 'configs' / 'tiny.yaml'}\nsearch: grid\n"
        f"space:\n  train.lr: {lrs}\n"
        "objective: {metric: eval/fid, direction: minimize}\n"
        "trial_compute: {cpu_procs: 1, threads_per_proc: 1}\n"
    )
    return path


def _genpar(args: list[str], home: Path, prefect_home: Path) -> tuple[float, float]:
    """Run the console script; returns (wall seconds, epoch time it started)."""
    genpar = str(Path(sys.executable).with_name("genpar"))
    # on a loaded machine Prefect's temporary server can need more than its default 20 s to
    # start (the command then fails); its start-up still counts in the wall time
    env = {**_env(home, prefect_home), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    started = time.time()
    with stopwatch() as t:
        done = subprocess.run([genpar, *args], env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(
            f"genpar {' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return t["s"], started


def _outcomes(home: Path) -> list[tuple[Path, dict]]:
    out = []
    for state in sorted(home.glob("runs/*/*/trial.json")):
        outcome = json.loads(state.read_text()).get("outcome")
        if outcome:
            out.append((state.parent, outcome))
    return out


def trial_overheads(home: Path) -> list[float]:
    """genpar's seconds per finished trial outside torchrun and evaluation: trial task start
    to torchrun start, plus torchrun end to trial task end less the scorecard's seconds."""
    out = []
    for _, outcome in _outcomes(home):
        t = outcome["timing"]
        inside = t["torchrun_end"] - t["torchrun_start"]
        evaluation = outcome["metrics"].get("eval/seconds", 0.0)
        out.append(t["task_end"] - t["task_start"] - inside - evaluation)
    return out


def where_time_goes(home: Path, started: float, wall: float) -> dict[str, float]:
    """The sweep's wall split by its trials' timestamps (seconds)."""
    done = _outcomes(home)
    first = min(o["timing"]["task_start"] for _, o in done)
    last = max(o["timing"]["task_end"] for _, o in done)
    torchrun = sum(o["timing"]["torchrun_end"] - o["timing"]["torchrun_start"] for _, o in done)
    loops = sum(json.loads((d / "result.json").read_text())["wall_s"] for d, _ in done)
    return {
        "start-up to the first trial (CLI, Prefect, plan, shared shards + feature extractor)": (
            first - started
        ),
        "trials, first start to last end (concurrent)": last - first,
        "wind-down (register the best, results table and plot, parent run)": (
            started + wall - last
        ),
        "sum over trials: training loops": loops,
        "sum over trials: torchrun and rank start-up/teardown": torchrun - loops,
        "sum over trials: scorecards": sum(o["metrics"].get("eval/seconds", 0.0) for _, o in done),
    }


def run(work: Path, quick: bool) -> list[Result]:
    work.mkdir(parents=True, exist_ok=True)
    prefect_home = work / "prefect"
    lrs = LRS[:2] if quick else LRS
    create_prefect_database(work / "home-warmup", prefect_home)
    sweep_home = work / "home-sweep"
    sweep_s, started = _genpar(["sweep", str(_sweep_file(work, lrs))], sweep_home, prefect_home)
    runs = []
    for lr in lrs:
        sets = [f"train.lr={lr}", "compute.cpu_procs=1", "compute.threads_per_proc=1"]
        args = ["run", str(REPO / "configs" / "tiny.yaml")]
        for s in sets:
            args += ["--set", s]
        runs.append(_genpar(args, work / "home-runs", prefect_home)[0])
    sequential = sum(runs)
    overheads = trial_overheads(sweep_home)
    parts = where_time_goes(sweep_home, started, sweep_s)
    sec = f"sweep ({len(lrs)} tiny trials, 1 rank x 1 thread each)"
    over = median(overheads) if overheads else float("nan")
    return [
        Result(
            sec,
            f"{len(lrs)} sequential genpar run",
            sequential,
            "s",
            note=f"first {runs[0]:.1f} s, then median {median(runs[1:] or runs):.1f} s per run",
        ),
        Result(
            sec,
            "genpar sweep",
            sweep_s,
            "s",
            baseline="sequential runs",
            ratio=sequential / sweep_s,
            target=3.0,
            note="ratio = speed-up",
        ),
        *[Result(sec, f"- {k}", v, "s") for k, v in parts.items()],
        Result(
            sec,
            "genpar overhead per trial (median; outside torchrun and evaluation)",
            over,
            "s",
            baseline="1 s budget",
            ratio=over / 1.0,
            target=1.0,
            target_kind="max",
            note=f"max {max(overheads):.2f} s" if overheads else "no finished trial",
        ),
    ]
