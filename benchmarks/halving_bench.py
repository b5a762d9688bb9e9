"""Successive halving against the whole grid: does eta = 3 halving on a 9-point learning-rate
grid of digits-vae pick the configuration the full grid finds best, and with how many steps?

Per search seed (the trials' training seed, `seeds: [s]`; a grid itself has nothing to seed)
two real `genpar sweep`s run in one fresh GENPAR_HOME, so they share the shards and the
evaluation cache: the grid with every trial trained to `train.max_steps` (the full-budget
truth), and the same grid with successive halving at `rungs` (default RUNGS) keeping 1/3 at
each (9 -> 3 -> 1). Both rank by the full-budget `val/elbo` and halve on `val/elbo`. A promoted
trial continues from its rung checkpoint bit-exactly, so the survivor's final numbers are the
full run's. Steps spent are what each trial trained (its trial.json), against 9 x max_steps.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import Result
from benchmarks.orchestration_bench import create_prefect_database
from benchmarks.sweep_bench import REPO, _genpar

LRS = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05]
# eta-3 spacing (the second rung 3x the first) as late as the 40% step budget allows on a
# 250-step grid (500 and 1500 of 3,000 steps: 33% of the grid's steps); benchmarks/
# halving_schedules.py compares every 2-rung schedule offline.
RUNGS = [0.1667, 0.5]
SEEDS = [0, 1, 2, 3, 4]


def _halving(rungs: list[float]) -> str:
    return (
        f"early_stopping: {{metric: val/elbo, direction: maximize, rungs: {list(rungs)}, "
        "keep: 0.34}\n"
    )


def _sweep_file(
    work: Path, seed: int, halving: bool, lrs: list[float], rungs: list[float] = RUNGS
) -> Path:
    name = f"halving-s{seed}" if halving else f"grid-s{seed}"
    path = work / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nbase: {REPO / 'configs' / 'digits-vae.yaml'}\nsearch: grid\n"
        f"space:\n  train.lr: {lrs}\nseeds: [{seed}]\n"
        "objective: {metric: val/elbo, direction: maximize}\n"
        "trial_compute: {cpu_procs: 1, threads_per_proc: 1}\n"
        + (_halving(rungs) if halving else "")
    )
    return path


def sweep_runs(home: Path, name: str):
    """(an MlflowClient of `home`, the parent run, the child runs) of the digits-vae sweep
    called `name`."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits-vae").experiment_id
    (parent,) = client.search_runs(
        [exp],
        filter_string=f"tags.`genpar.sweep.role` = 'parent' and params.`sweep.name` = '{name}'",
    )
    children = client.search_runs(
        [exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    return client, parent, children


def _sweep_result(home: Path, name: str) -> tuple[str, int, dict[str, float]]:
    """(the best trial's lr, steps all its trials trained, each lr's objective) of the sweep
    called `name`."""
    _, parent, children = sweep_runs(home, name)
    best = parent.data.tags["genpar.sweep.best_run_id"]
    steps = 0
    for child in children:
        state = Path(child.data.tags["genpar.run_dir"]) / "trial.json"
        steps += int(json.loads(state.read_text()).get("step", 0))
    (lr,) = [c.data.params["train.lr"] for c in children if c.info.run_id == best]
    objective = {
        c.data.params["train.lr"]: c.data.metrics["val/elbo"]
        for c in children
        if "val/elbo" in c.data.metrics
    }
    return lr, steps, objective


def run(
    work: Path,
    quick: bool,
    max_steps: int | None = None,
    seeds: list[int] | None = None,
    rungs: list[float] | None = None,
) -> list[Result]:
    """`max_steps` shortens digits-vae's training (default: the config's 3,000 steps); `seeds`
    are the search seeds (default SEEDS, quick: [0]); `rungs` the halving schedule (RUNGS)."""
    work.mkdir(parents=True, exist_ok=True)
    prefect_home = work / "prefect"
    create_prefect_database(work / "home-warmup", prefect_home)
    seeds = list(seeds or ([0] if quick else SEEDS))
    rungs = list(rungs or RUNGS)
    steps_cap = 100 if quick else max_steps
    sets = ["--set", f"train.max_steps={steps_cap}"] if steps_cap else []
    picked, spent, grid_steps, rows, grids, picks = 0, 0, 0, [], {}, {}
    for seed in seeds:
        home = work / f"home-s{seed}"
        walls = {}
        for halving in (False, True):
            path = _sweep_file(work, seed, halving, LRS, rungs)
            walls[halving], _ = _genpar(["sweep", str(path), *sets], home, prefect_home)
        truth, full, grid = _sweep_result(home, f"grid-s{seed}")
        choice, used, _ = _sweep_result(home, f"halving-s{seed}")
        picked += choice == truth
        grids[seed], picks[seed] = grid, choice
        spent, grid_steps = spent + used, grid_steps + full
        # how far a miss is: the pick's full-budget val/elbo (nats) against the grid's best,
        # and the spread of the grid (best minus median), from the grid sweep's own trials
        values = sorted(grid.values())
        regret = grid[truth] - grid.get(choice, float("nan"))
        spread = grid[truth] - values[len(values) // 2]
        rows.append(
            f"seed {seed}: grid best lr {truth}, halving picked {choice} "
            f"(val/elbo {regret:.2f} nats below the best; best - median {spread:.2f}), "
            f"{used}/{full} steps, {walls[True]:.0f} s vs {walls[False]:.0f} s"
        )
    sec = (
        f"successive halving (digits-vae, 9-point lr grid, eta 3, rungs {rungs}, "
        f"search seed(s) {seeds})"
    )
    hits, contest = hindsight(grids)
    floor = None
    if hits is not None:
        name = "picking, per seed, the lr the other seeds' full grids rank best"
        floor = (hits / len(seeds), name)
    out = [
        Result(
            sec,
            "search seeds where halving picked the grid's best",
            picked,
            f"of {len(seeds)}",
            baseline=f"{len(seeds)} seeds",
            ratio=picked / len(seeds),
            target=0.8,
            note="; ".join(rows),
            floor=floor,
        ),
        Result(
            sec,
            "steps spent by halving",
            spent,
            "steps",
            baseline="the full grid's steps",
            ratio=spent / grid_steps,
            target=0.4,
            target_kind="max",
            note=f"train.max_steps={steps_cap or 'config (3000)'}",
        ),
    ]
    if contest is not None:
        (first, second), mean, std = contest
        table = "; ".join(
            f"lr {lr}: " + " ".join(f"{grids[s][lr]:.2f}" for s in seeds)
            for lr in sorted(grids[seeds[0]], key=float)
            if all(lr in grids[s] for s in seeds)
        )
        out.append(
            Result(
                sec,
                f"full-budget val/elbo of lr {first} minus lr {second} (the two best on average):"
                " standard deviation across seeds",
                std,
                "nats",
                baseline=f"its mean {mean:.2f} nats",
                ratio=std / abs(mean) if mean else float("inf"),
                note=f"a ratio above 1: which of the two is best flips with the seed. val/elbo per"
                f" lr, seeds {seeds}: {table}; halving's picks "
                + ", ".join(picks[s] for s in seeds),
            )
        )
    return out


def hindsight(
    grids: dict[int, dict[str, float]],
) -> tuple[int | None, tuple[tuple[str, str], float, float] | None]:
    """How well a pick made without a seed's own full-budget results can do, from the full grids
    of all seeds (the floor of the picks target): for how many seeds the lr with the best mean
    val/elbo over the *other* seeds' full grids is that seed's own best; and the two lrs best on
    average with the mean and standard deviation across seeds of their difference. (None, None)
    below two seeds."""
    import statistics

    seeds = sorted(grids)
    if len(seeds) < 2:
        return None, None
    lrs = [lr for lr in grids[seeds[0]] if all(lr in grids[s] for s in seeds)]
    hits = 0
    for s in seeds:
        others = [o for o in seeds if o != s]
        pick = max(lrs, key=lambda lr: statistics.fmean(grids[o][lr] for o in others))
        hits += pick == max(lrs, key=lambda lr: grids[s][lr])
    first, second = sorted(lrs, key=lambda lr: -statistics.fmean(grids[s][lr] for s in seeds))[:2]
    diffs = [grids[s][first] - grids[s][second] for s in seeds]
    return hits, ((first, second), statistics.fmean(diffs), statistics.stdev(diffs))
