"""Task parallelism: a sweep of N tiny trials against N sequential `genpar run`s of the same
configs, in the same benchmark run, and genpar's own overhead per trial.

Both sides are real subprocesses of the console script on a fresh GENPAR_HOME with a warm
Prefect database: `genpar sweep` (trials 1 rank x 1 thread, as many at once as the machine
fits) and `genpar run` once per trial config (the same lr, the same 1 x 1 compute). The
overhead per trial comes from timestamps inside the run (tasks/sweep.py records them in each
trial's trial.json): trial task start to torchrun start, plus torchrun end to trial task end
minus the evaluation's own seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
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


def _genpar(args: list[str], home: Path, prefect_home: Path) -> float:
    genpar = str(Path(sys.executable).with_name("genpar"))
    with stopwatch() as t:
        subprocess.run(
            [genpar, *args],
            env=_env(home, prefect_home),
            check=True,
            capture_output=True,
            cwd=REPO,
        )
    return t["s"]


def trial_overheads(home: Path) -> list[float]:
    """genpar's seconds per finished trial outside torchrun and evaluation."""
    out = []
    for state in home.glob("runs/*/*/trial.json"):
        outcome = json.loads(state.read_text()).get("outcome")
        if not outcome:
            continue
        t = outcome["timing"]
        inside = t["torchrun_end"] - t["torchrun_start"]
        evaluation = outcome["metrics"].get("eval/seconds", 0.0)
        out.append(t["task_end"] - t["task_start"] - inside - evaluation)
    return out


def run(work: Path, quick: bool) -> list[Result]:
    work.mkdir(parents=True, exist_ok=True)
    prefect_home = work / "prefect"
    lrs = LRS[:2] if quick else LRS
    create_prefect_database(work / "home-warmup", prefect_home)
    sweep_home = work / "home-sweep"
    sweep_s = _genpar(["sweep", str(_sweep_file(work, lrs))], sweep_home, prefect_home)
    sequential = 0.0
    for i, lr in enumerate(lrs):
        sets = [f"train.lr={lr}", "compute.cpu_procs=1", "compute.threads_per_proc=1"]
        args = ["run", str(REPO / "configs" / "tiny.yaml")]
        for s in sets:
            args += ["--set", s]
        sequential += _genpar(args, work / f"home-run-{i}", prefect_home)
    overheads = trial_overheads(sweep_home)
    sec = f"sweep ({len(lrs)} tiny trials, 1 rank x 1 thread each)"
    return [
        Result(sec, f"{len(lrs)} sequential genpar run", sequential, "s"),
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
        Result(
            sec,
            "genpar overhead per trial (median; outside torchrun and evaluation)",
            median(overheads) if overheads else float("nan"),
            "s",
            baseline="1 s budget",
            ratio=(median(overheads) if overheads else float("nan")) / 1.0,
            target=1.0,
            target_kind="max",
            note=f"max {max(overheads):.2f} s" if overheads else "no finished trial",
        ),
    ]
