"""The sweep flow: many configurations of one base config trained at once, the losers stopped
early, one parent MLflow run with a child per trial; a re-run after a crash continues.

Run it with `genpar sweep SWEEP.yaml`, or from the Prefect UI (the `sweep` deployment; its one
parameter is the typed `SweepConfig`). One sweep:

1. plan and check it (every trial's config, the machine fit, rungs, the objective) before any
   work; reserve this host's trial slots (tasks/slots.py);
2. one shard set per distinct data config, one feature extractor and reference statistics;
3. open (or reopen) the parent run;
4. grid/random: all trials; TPE: rounds of `concurrency` proposals. Each round trains its
   trials rung by rung (synchronous successive halving, genpar_models/sweep/halving.py): all
   live trials to the rung, the best `keep` fraction on, the rest stopped; survivors train to
   the end and get the full scorecard. At most `concurrency` trial tasks run at once, each
   holding its `trial_compute` worth of the host's slots while torchrun trains;
5. the results table, a plot and the best trial on the parent run, a Prefect table artifact;
   the best trial's model registered (and with `promote`, the champion alias by retrain.rule).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture

from flows.evaluate import evaluate_flow
from genpar_models.config.sweep import SweepConfig, resolve_base
from genpar_models.errors import GenparError
from genpar_models.sweep import halving
from genpar_models.sweep.plan import Trial, expand_seeds, tpe_points
from tasks.cluster import flow_cluster
from tasks.preflight import preflight
from tasks.promotion import decide_promotion, find_champion, record_decision
from tasks.sweep import (
    SweepPlan,
    SweepRun,
    fail_trial,
    open_sweep_run,
    plan_sweep,
    run_trial,
    share_data,
    stop_trial,
    warm_plotting,
)
from tasks.sweep_report import finish_sweep, mark_sweep_failed, register_best, trial_config


class SweepFailed(GenparError):
    """A trial failed under fail_fast."""


def _run_trials(
    trials: list[Trial],
    submit: Callable[[Trial], PrefectFuture],
    width: int,
    parent: SweepRun,
    fail_fast: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Submit the trials in order with at most `width` running; returns (outcomes of those
    that completed, failures). A failed trial is recorded FAILED at once; under fail_fast no
    further trial starts and the sweep fails once the running ones end."""
    pending, running, completed, failed = list(trials), {}, [], []
    while pending or running:
        while pending and len(running) < width and not (fail_fast and failed):
            trial = pending.pop(0)
            running[trial.id] = submit(trial)
        finished = [i for i, f in running.items() if f.wrapped_future.done()]
        if not finished:
            if not running:
                break
            time.sleep(0.1)
            continue
        for trial_id in finished:
            future = running.pop(trial_id)
            # The final state the task returned: `.state` alone reads the API, which the
            # task's last state change may not have reached yet (a trial that returns at
            # once, resumed from its recorded rung, would read as still Running).
            future.wait()
            state = future.state
            if state.is_completed():
                completed.append(future.result())
            else:
                error = str(state.message)
                run_id = fail_trial(parent, trial_id, error)
                failed.append(
                    {"id": trial_id, "status": "failed", "error": error, "run_id": run_id}
                )
    if fail_fast and failed:
        raise SweepFailed(f"trial {failed[0]['id']} failed (fail_fast): {failed[0]['error']}")
    return completed, failed


def _train_round(
    sweep: SweepConfig,
    plan: SweepPlan,
    parent: SweepRun,
    trials: list[Trial],
    shards: dict[str, str],
) -> list[dict[str, Any]]:
    """Trials rung by rung to the end; returns an outcome per trial (finished/stopped/failed)."""
    es, outcomes, alive = sweep.early_stopping, {}, list(trials)
    rungs = {
        t.id: halving.rung_steps(t.config.train.max_steps, es.rungs) if es else [] for t in trials
    }
    for rung in range(len(es.rungs) + 1 if es else 1):
        final = not es or rung == len(es.rungs)

        def submit(t: Trial, final: bool = final, rung: int = rung) -> PrefectFuture:
            stop_at = t.config.train.max_steps if final else rungs[t.id][rung]
            return run_trial.submit(
                t,
                shards[t.id],
                parent,
                stop_at,
                None if final else es.metric,
                sweep.objective.metric,
                plan.units_per_trial,
            )

        done, failed = _run_trials(alive, submit, plan.concurrency, parent, sweep.fail_fast)
        outcomes |= {o["id"]: o for o in failed}
        if final:
            outcomes |= {o["id"]: o for o in done}
            break
        scores = {o["id"]: o["score"] for o in done} | {o["id"]: None for o in failed}
        keep = set(halving.survivors(scores, es.keep, es.direction))
        for t in alive:
            if t.id in keep or t.id not in scores or scores[t.id] is None:
                continue
            step = rungs[t.id][rung]
            stop_trial(parent, t.id, rung + 1, len(es.rungs), step)
            outcomes[t.id] = {
                "id": t.id,
                "status": "stopped",
                "score": scores[t.id],
                "detail": f"stopped at rung {rung + 1} (step {step})",
            }
        alive = [t for t in alive if t.id in keep]
    return [outcomes[t.id] | {"params": t.params} for t in trials if t.id in outcomes]


def _search(
    sweep: SweepConfig, plan: SweepPlan, parent: SweepRun, shards: dict[str, str]
) -> list[dict[str, Any]]:
    """grid/random: one round of every trial; TPE: rounds of `concurrency` proposals, each
    told the finished trials' objectives before the next is proposed."""
    if sweep.search != "tpe":
        return _train_round(sweep, plan, parent, plan.trials, shards)
    outcomes: list[dict[str, Any]] = []
    batch = plan.trials
    while True:
        outcomes += _train_round(sweep, plan, parent, batch, shards | share_data(batch, parent.uri))
        points = len(_history(sweep, outcomes))
        left = (sweep.trials or 0) - points
        if left <= 0:
            return outcomes
        proposed = tpe_points(sweep, _history(sweep, outcomes), min(plan.concurrency, left))
        batch = expand_seeds(sweep, proposed, first_index=points)


def _history(sweep: SweepConfig, outcomes: list[dict[str, Any]]) -> list[tuple[dict, float | None]]:
    """One (space point, objective) per configuration: the mean over its seeds' finished
    trials, None when none finished (failed or stopped)."""
    grouped: dict[str, tuple[dict, list[float]]] = {}
    for o in outcomes:
        point = {k: v for k, v in o["params"].items() if k in sweep.space}
        key = o["id"].split("-s")[0]
        grouped.setdefault(key, (point, []))
        if o.get("objective") is not None:
            grouped[key][1].append(o["objective"])
    return [(p, sum(v) / len(v) if v else None) for p, v in grouped.values()]


def _promote(parent: SweepRun, best: dict[str, Any], uri: str) -> dict[str, Any]:
    """The nightly's rule: score the champion again under the best trial's protocol, and move
    the alias only if the best trial beats it by the base's retrain.rule."""
    config, _ = trial_config(parent, best["run_id"])
    champion = find_champion(config, uri)
    defending = evaluate_flow(champion["ref"], config) if champion else None
    decision = decide_promotion(config, best, defending)
    return record_decision(config, uri, best, champion, decision)


@flow(
    name="genpar-sweep",
    flow_run_name="sweep-{sweep.name}",
    on_failure=[mark_sweep_failed],
    on_crashed=[mark_sweep_failed],
    on_cancellation=[mark_sweep_failed],
)
def sweep_flow(sweep: SweepConfig) -> dict[str, Any]:
    """Train a sweep's trials concurrently with successive halving; one parent MLflow run."""
    sweep = resolve_base(sweep)
    warm_plotting()  # matplotlib's first import and draw, off the trials' path
    plan = plan_sweep(sweep)
    uri = preflight(plan.base)
    with flow_cluster():  # the shard sets share one, closed before any trial trains
        shards = share_data(plan.trials, uri)
    parent = open_sweep_run(sweep, plan, uri)
    outcomes = _search(sweep, plan, parent, shards)
    best = register_best(sweep, parent, outcomes)
    if best and sweep.promote:
        best["promotion"] = _promote(parent, best, uri)
    return finish_sweep(sweep, parent, outcomes, best)
