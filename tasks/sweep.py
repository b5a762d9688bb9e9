"""Prefect tasks of a sweep: plan and check it, share the data work, open the parent MLflow run,
train a trial to a rung (or to the end, then score it), and record stopped and failed trials.

MLflow holds the sweep's state, so a re-run after a crash finds it again: the parent run is
tagged with the sweep's key (genpar_models/sweep/plan.py: sweep_key) and each child run with
`mlflow.parentRunId` and its trial id. A trial's run directory keeps `trial.json`: the score it
had at each rung and whether it finished, so a re-run never trains a finished trial again and
recomputes the same rung decisions from the recorded scores.

This module is longer than 300 lines: the sweep's rounds, trials and their MLflow runs
share state that a split would pass around.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunTag
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from genpar_models.config import PipelineConfig, dump_config
from genpar_models.config.sweep import SweepConfig
from genpar_models.data.manifest import read_manifest
from genpar_models.errors import ConfigError
from genpar_models.sweep import halving, objective
from genpar_models.sweep.plan import (
    Trial,
    check_machine_fit,
    check_space_keys,
    initial_trials,
    sweep_key,
    trial_units,
)
from genpar_models.util import atomic
from genpar_models.util.lineage import lineage_tags
from tasks import mlflow_store as store
from tasks import runlock, slots, uploads
from tasks.common import retry_unless_user_error, run_logger
from tasks.evaluate import eval_device, evaluate
from tasks.launcher import cuda_device_count
from tasks.preprocess import build_shards
from tasks.scorecard import record_extractor, record_scorecard
from tasks.tracking import RunHandle, _flow_run_tags, draw_training_curves
from tasks.train import train_model

TAG_SWEEP_KEY = "genpar.sweep.key"
TAG_ROLE = "genpar.sweep.role"
TAG_TRIAL = "genpar.sweep.trial"
TAG_STATUS = "genpar.sweep.status"
TAG_PARENT = "mlflow.parentRunId"
STATE_FILE = "trial.json"


class SweepPlan(BaseModel):
    """What a checked sweep runs: its trials (for TPE the first round), concurrency, rungs."""

    model_config = ConfigDict(frozen=True)

    key: str
    concurrency: int
    units_per_trial: int
    capacity: int
    trials: list[Trial]
    rungs: dict[str, list[int]]  # trial id -> rung steps ([] without early stopping)

    @property
    def base(self) -> PipelineConfig:
        return self.trials[0].config


class SweepRun(BaseModel):
    model_config = ConfigDict(frozen=True)

    uri: str
    experiment_id: str
    experiment: str
    run_id: str
    run_dir: str
    resumed: bool = False


def check_sweep(sweep: SweepConfig) -> SweepPlan:
    """Everything that can be wrong with a sweep file, before any work.

    Raises:
        ConfigError: naming the field (space key, concurrency, rungs, objective, a trial).
    """
    check_space_keys(sweep)
    trials = initial_trials(sweep)
    concurrency = check_machine_fit(sweep, cuda_device_count())
    first = trials[0].config
    objective.check_metric(first, "objective.metric", sweep.objective.metric)
    rungs: dict[str, list[int]] = {t.id: [] for t in trials}
    if sweep.early_stopping:
        objective.check_metric(first, "early_stopping.metric", sweep.early_stopping.metric)
        rungs = {
            t.id: halving.rung_steps(t.config.train.max_steps, sweep.early_stopping.rungs)
            for t in trials
        }
    per_trial, capacity, _ = trial_units(sweep, cuda_device_count())
    return SweepPlan(
        key=sweep_key(sweep),
        concurrency=concurrency,
        units_per_trial=per_trial,
        capacity=capacity,
        trials=trials,
        rungs=rungs,
    )


@task(name="plan-sweep", retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE)
def plan_sweep(sweep: SweepConfig) -> SweepPlan:
    """Check the sweep and list its trials; reserve this host's trial slots limit."""
    plan = check_sweep(sweep)
    slots.ensure_limit(plan.capacity)
    run_logger().info(
        "sweep %s: %d trial(s) (%s search), %d at once, %d %s slot(s) each",
        sweep.name,
        len(plan.trials),
        sweep.search,
        plan.concurrency,
        plan.units_per_trial,
        "GPU" if cuda_device_count() else "core",
    )
    return plan


@task(
    name="share-data", retries=1, retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE
)
def share_data(trials: list[Trial], uri: str) -> dict[str, str]:
    """One shard set per distinct data config, and one feature extractor (with its MLflow run)
    and set of reference statistics per (shard set, evaluate config), before any trial
    starts; {trial id: shards}."""
    from genpar_models.eval.scorecard import prepare

    log, by_data, shards, prepared = run_logger(), {}, {}, set()
    for trial in trials:
        data_key = trial.config.data.model_dump_json()
        if data_key not in by_data:
            by_data[data_key] = str(build_shards(trial.config))
        shards[trial.id] = by_data[data_key]
        eval_key = (shards[trial.id], trial.config.evaluate.model_dump_json())
        if eval_key not in prepared:
            extractor, _ = prepare(
                shards[trial.id], trial.config.evaluate, device=eval_device(trial.config)
            )
            record_extractor(uri, extractor, read_manifest(shards[trial.id]).key)
            prepared.add(eval_key)
    log.info(
        "%d shard set(s) and %d evaluation cache(s) for %d trial(s)",
        len(by_data),
        len(prepared),
        len(trials),
    )
    return shards


def _sweep_params(sweep: SweepConfig, plan: SweepPlan) -> dict[str, Any]:
    es = sweep.early_stopping
    return {
        "sweep.name": sweep.name,
        "sweep.search": sweep.search,
        "sweep.seed": sweep.seed,
        "sweep.trials": len(plan.trials) if sweep.search != "tpe" else sweep.trials,
        "sweep.space": json.dumps(
            {
                k: sweep.space[k]
                if isinstance(sweep.space[k], list)
                else sweep.space[k].model_dump()
                for k in sweep.space
            }
        ),
        "sweep.seeds": json.dumps(sweep.seeds),
        "sweep.objective": f"{sweep.objective.direction} {sweep.objective.metric}",
        "sweep.early_stopping": json.dumps(es.model_dump() if es else None),
        "sweep.trial_compute": json.dumps(sweep.trial_compute.model_dump()),
    }


@task(name="open-sweep-run", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def open_sweep_run(sweep: SweepConfig, plan: SweepPlan, uri: str) -> SweepRun:
    """The parent MLflow run: an unfinished one of the same sweep is reopened, else a new one."""
    client = store.connect(uri)
    experiment = plan.base.experiment_name
    exp_id = store.ensure_experiment(client, uri, experiment)
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{TAG_SWEEP_KEY}` = '{plan.key}' and tags.`{TAG_ROLE}` = 'parent'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    for run in found:
        run_dir = Path(run.data.tags.get(store.TAG_RUN_DIR, ""))
        if run.info.status != "FINISHED" and runlock.try_acquire(run_dir):
            client.update_run(run.info.run_id, status="RUNNING")
            run_logger().info("reopened sweep run %s", run.info.run_id)
            return SweepRun(
                uri=uri,
                experiment_id=exp_id,
                experiment=experiment,
                run_id=run.info.run_id,
                run_dir=str(run_dir),
                resumed=True,
            )
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = store.create_run(
        client,
        exp_id,
        name=f"{sweep.name}-{stamp}",
        tags={TAG_SWEEP_KEY: plan.key, TAG_ROLE: "parent"},
    )
    run_dir = store.run_dir_for(experiment, run_id)
    runlock.try_acquire(run_dir)
    store.log_params(client, run_id, _sweep_params(sweep, plan))
    store.set_tags(
        client, run_id, {store.TAG_RUN_DIR: str(run_dir), **lineage_tags(), **_flow_run_tags()}
    )
    atomic.write_json(run_dir / "sweep.json", sweep.model_dump(mode="json", by_alias=True))
    run_logger().info("started sweep run %s (run dir %s)", run_id, run_dir)
    return SweepRun(
        uri=uri, experiment_id=exp_id, experiment=experiment, run_id=run_id, run_dir=str(run_dir)
    )


def _open_trial_run(parent: SweepRun, trial: Trial, shards_dir: str) -> RunHandle:
    """The trial's child run (found by parent and trial id, else created with both tags at
    once, so a crash never leaves an untagged duplicate); params and tags logged."""
    client = store.connect(parent.uri)
    config = trial.config
    shards_key = read_manifest(shards_dir).key
    key = config.train_key(shards_key)
    found = _find_child(parent, trial.id, client)
    if found is not None:
        run_id, existing = found.info.run_id, found.data.params
        if found.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
    else:
        run_id, existing = (
            store.create_run(
                client,
                parent.experiment_id,
                name=f"{parent.run_id[:8]}-{trial.id}",
                tags={
                    TAG_PARENT: parent.run_id,
                    TAG_TRIAL: trial.id,
                    TAG_ROLE: "trial",
                    store.TAG_TRAIN_KEY: key,
                },
            ),
            {},
        )
    run_dir = store.run_dir_for(parent.experiment, run_id)
    runlock.try_acquire(run_dir)
    tags = {
        store.TAG_RUN_DIR: str(run_dir),
        store.TAG_RUN_IDENTITY: config.run_identity(),
        "genpar.sweep.params": json.dumps(trial.params),
        "genpar.shards_key": shards_key,
        "genpar.model": config.model.name,
        "genpar.dataset": config.data.source,
        **lineage_tags(),
        **_flow_run_tags(),
    }
    store.log_params(client, run_id, config.flat(), existing=existing, tags=tags)
    atomic.write_text(run_dir / "config.yaml", dump_config(config.redacted()))
    return RunHandle(
        uri=parent.uri,
        experiment_id=parent.experiment_id,
        run_id=run_id,
        run_dir=str(run_dir),
        train_key=key,
    )


def read_state(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {"rungs": {}}


def _write_state(run_dir: str | Path, state: dict[str, Any]) -> None:
    atomic.write_json(Path(run_dir) / STATE_FILE, state, sort_keys=False)


def _score(metrics: dict[str, float], metric: str, trial: Trial) -> float:
    if metric not in metrics:
        raise ConfigError(
            f"trial {trial.id}: training logged no {metric} (it logged: "
            f"{', '.join(sorted(metrics))})"
        )
    return float(metrics[metric])


@task(name="trial", task_run_name="trial-{trial.id}-to-step-{stop_at}", cache_policy=NO_CACHE)
def run_trial(
    trial: Trial,
    shards_dir: str,
    parent: SweepRun,
    stop_at: int,
    rung_metric: str | None,
    objective_metric: str,
    units: int,
) -> dict[str, Any]:
    """Train the trial to `stop_at` (resuming its checkpoint); at a rung (`rung_metric` set)
    record its score there, at the end score it (the full scorecard) and finish its run."""
    t_start, log = time.time(), run_logger()
    run = _open_trial_run(parent, trial, shards_dir)
    state = read_state(run.run_dir)
    if state.get("status") == "finished":
        log.info("trial %s finished before: not trained again", trial.id)
        return state["outcome"]
    timing = {"task_start": t_start}
    if state.get("step", 0) < stop_at:
        pool = cuda_device_count() if trial.config.compute.device != "cpu" else 0
        with slots.trial_slots(units, f"{parent.run_id}/{trial.id}", pool) as gpus:
            env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))} if gpus else None
            result = train_model(
                trial.config,
                shards_dir,
                run,
                stop_at_step=stop_at,
                extra_env=env,
                cuda_devices=len(gpus) if gpus else None,
            )
        timing |= result["timing"]
        state.update(step=result["step"], metrics=result["metrics"])
    if rung_metric is not None:
        score = _score(state["metrics"], rung_metric, trial)
        client = store.connect(run.uri)
        if str(stop_at) not in state["rungs"]:  # a re-run finds it recorded already
            state["rungs"][str(stop_at)] = score
            _write_state(run.run_dir, state)
            store.log_metrics(client, run.run_id, {"sweep/rung_score": score}, step=stop_at)
        store.set_tags(
            client,
            run.run_id,
            {TAG_STATUS: f"at step {stop_at} ({rung_metric}={score:.5g})"},
        )
        runlock.release(Path(run.run_dir))
        return {
            "id": trial.id,
            "run_id": run.run_id,
            "status": "rung",
            "score": score,
            "timing": timing | {"task_end": time.time()},
        }
    _write_state(run.run_dir, state)
    outcome = _finish_trial(trial, shards_dir, run, state, objective_metric)
    outcome["timing"] = timing | {"task_end": time.time()}
    _write_state(run.run_dir, {**state, "status": "finished", "outcome": outcome})
    return outcome


def _finish_trial(
    trial: Trial, shards_dir: str, run: RunHandle, state: dict, objective_metric: str
) -> dict[str, Any]:
    """The full scorecard on the trial's run, its model and curves as artifacts; FINISHED.

    The curves are drawn (from the run's metric history) in a thread while the scorecard
    runs; what the scorecard logs is not part of them."""
    run_dir = Path(run.run_dir)
    model_dir, eval_dir = str(run_dir / "model"), str(run_dir / "eval")
    with ThreadPoolExecutor(1, thread_name_prefix=f"curves-{trial.id}") as pool:
        curves = pool.submit(draw_training_curves, run, trial.config)
        report = evaluate(trial.config, shards_dir, model_dir, eval_dir)
        plots = curves.result()
    metrics = {**state["metrics"], **report["metrics"]}
    value = _score(metrics, objective_metric, trial)
    record_trial(trial, run, report, plots, int(state["step"]))
    return {
        "id": trial.id,
        "run_id": run.run_id,
        "status": "finished",
        "objective": value,
        "params": trial.params,
        "metrics": {k: v for k, v in metrics.items() if k.startswith(("eval/", "val/"))},
    }


@task(
    name="record-trial",
    task_run_name="record-{trial.id}",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def record_trial(trial: Trial, run: RunHandle, report: dict, plots: str, step: int) -> None:
    """A scored trial's bookkeeping in one task: the scorecard, the artifacts (config, model,
    curves, result.json), train/final_step and the status tag in one batch; FINISHED."""
    run_dir = Path(run.run_dir)
    record_scorecard(run.uri, run.run_id, report, str(run_dir / "eval"), log_to="run")
    client = store.connect(run.uri)
    artifacts = {
        None: run_dir / "config.yaml",
        "model": run_dir / "model",
        "plots": Path(plots),
        "train": run_dir / "result.json",
    }
    for artifact_path, local in artifacts.items():
        if local.exists():
            uploads.upload(client, run.run_id, local, artifact_path, kept=str(run_dir))
    now = int(time.time() * 1000)
    client.log_batch(
        run.run_id,
        metrics=[Metric("train/final_step", float(step), now, trial.config.train.max_steps)],
        tags=[RunTag(TAG_STATUS, "finished")],
    )
    store.finish(client, run.run_id, "FINISHED")
    runlock.release(run_dir)
    run_logger().info("trial %s recorded on MLflow run %s", trial.id, run.run_id)


def warm_plotting() -> threading.Thread:
    """Import matplotlib and draw once, in a thread, while the sweep prepares its data: the
    first trial to finish would otherwise pay it (0.5-1 s on 2 busy cores)."""

    def draw() -> None:
        import io

        from genpar_models.eval.plots import _figure

        fig = _figure((1, 1))
        fig.subplots().plot([0, 1], [0, 1], label="warm")
        fig.savefig(io.BytesIO(), format="png", dpi=10)

    thread = threading.Thread(target=draw, name="warm-plotting", daemon=True)
    thread.start()
    return thread


@task(name="stop-trial", task_run_name="stop-{trial_id}", retries=2, cache_policy=NO_CACHE)
def stop_trial(parent: SweepRun, trial_id: str, rung: int, of: int, step: int) -> None:
    """A trial successive halving stopped: its run says at which rung; checkpoint kept."""
    run = _find_child(parent, trial_id)
    if run is None:
        return
    client = store.connect(parent.uri)
    store.set_tags(
        client, run.info.run_id, {TAG_STATUS: f"stopped at rung {rung} of {of} (step {step})"}
    )
    store.finish(client, run.info.run_id, "KILLED")


@task(name="fail-trial", task_run_name="failed-{trial_id}", retries=2, cache_policy=NO_CACHE)
def fail_trial(parent: SweepRun, trial_id: str, error: str) -> str:
    """A trial whose task failed: FAILED in MLflow, with its error; returns its run id."""
    run = _find_child(parent, trial_id)
    if run is None:
        return ""
    client = store.connect(parent.uri)
    store.set_tags(client, run.info.run_id, {TAG_STATUS: "failed", "genpar.error": error[:4000]})
    store.finish(client, run.info.run_id, "FAILED")
    runlock.release(Path(run.data.tags.get(store.TAG_RUN_DIR, ".")))
    return run.info.run_id


def _find_child(parent: SweepRun, trial_id: str, client: Any = None) -> Any:
    client = client or store.connect(parent.uri)
    found = client.search_runs(
        [parent.experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent.run_id}' "
        f"and tags.`{TAG_TRIAL}` = '{trial_id}'",
        max_results=1,
    )
    return found[0] if found else None
