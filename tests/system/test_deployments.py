"""Deployments as a user runs them: served by `genpar serve`, triggered through the Prefect API.

The pipeline deployment runs with a changed parameter; two nightly retrains are triggered at
the same moment with a margin no challenger can clear: the deployment's concurrency limit
runs them one after the other, the first (no champion yet) promotes, the second keeps the
champion because of the margin, and the registry alias says so.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from mlflow import MlflowClient

from tests.system.conftest import UNBEATABLE, Runs, Stack

pytestmark = [pytest.mark.system, pytest.mark.slow]


def _time(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_deployments_carry_form_schedule_and_concurrency(stack: Stack, served) -> None:
    pipeline = stack.deployment("genpar-pipeline/pipeline")
    schema = pipeline["parameter_openapi_schema"]
    train = schema["definitions"]["TrainConfig"]["properties"]
    assert train["max_steps"]["description"] == "Optimizer steps in total (all epochs)."
    assert pipeline["parameters"]["config"]["name"] == "tiny"  # the served config's values
    assert pipeline["entrypoint"] == "flows.pipeline.pipeline"
    nightly = stack.deployment("genpar-nightly-retrain/nightly-retrain")
    (schedule,) = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "UTC"
    assert schedule["active"]
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert nightly["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    evaluate = stack.deployment("genpar-evaluate/evaluate")
    assert evaluate["parameters"] == {"model": "tiny@champion"}
    # the server's scheduler plans the nightly runs (it silently does not with SQLAlchemy 2.1)
    upcoming = _scheduled_runs(stack, nightly["id"])
    assert upcoming, "no scheduled nightly-retrain runs"
    assert all(_time(r["expected_start_time"]).strftime("%H:%M") == "02:00" for r in upcoming)


def _scheduled_runs(stack: Stack, deployment_id: str, timeout_s: float = 90) -> list[dict]:
    body = {
        "deployments": {"id": {"any_": [deployment_id]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
    }
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [r for r in stack.post("/flow_runs/filter", body) if r["auto_scheduled"]]
        if runs or time.monotonic() > deadline:
            return runs
        time.sleep(3)


def test_pipeline_deployment_runs_with_a_changed_parameter(stack: Stack, runs: Runs) -> None:
    run = stack.wait(runs.pipeline)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["name"] == "tiny-vae-digits"  # pipeline, model and dataset in the name
    tasks = stack.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [runs.pipeline]}}})
    names = {t["name"] for t in tasks}
    assert {"preprocess-digits", "train-vae-digits", "evaluate-vae-digits"} <= names
    client = MlflowClient(stack.mlflow_url)
    (mlrun,) = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{runs.pipeline}'",
    )
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["train.max_steps"] == "20"  # the change reached the run
    (artifact,) = stack.artifacts_of(runs.pipeline)
    assert artifact["key"] == "tiny-pipeline" and artifact["type"] == "markdown"
    assert f"registered as version {mlrun.data.tags['genpar.model_version']}" in artifact["data"]
    assert f"{stack.mlflow_url}/#/experiments/" in artifact["data"]
    assert mlrun.info.run_id in artifact["data"]


def test_nightly_retrain_promotes_first_then_decides_by_the_margin(
    stack: Stack, runs: Runs
) -> None:
    first, second = sorted(
        (stack.wait(i) for i in runs.nightly), key=lambda r: _time(r["start_time"])
    )
    assert [first["state_type"], second["state_type"]] == ["COMPLETED", "COMPLETED"]
    assert _time(first["end_time"]) <= _time(second["start_time"])  # never overlapped

    client = MlflowClient(stack.mlflow_url)
    exp = client.get_experiment_by_name("tiny").experiment_id
    decided = {
        r.data.tags["genpar.retrain.flow_run_id"]: r
        for r in client.search_runs([exp], filter_string="tags.`genpar.retrain.decision` != ''")
    }
    promoted, kept = decided[first["id"]], decided[second["id"]]
    metric = promoted.data.tags["genpar.retrain.primary_metric"]
    assert promoted.data.tags["genpar.retrain.decision"] == "promoted"
    assert "no champion yet" in promoted.data.tags["genpar.retrain.reason"]
    assert promoted.data.metrics["retrain/promoted"] == 1.0
    assert kept.data.tags["genpar.retrain.decision"] == "kept champion"
    assert kept.data.metrics["retrain/promoted"] == 0.0
    assert kept.data.metrics["retrain/min_improvement"] == UNBEATABLE
    assert kept.data.metrics["retrain/challenger_score"] == kept.data.metrics[metric]
    assert kept.data.metrics["retrain/champion_score"] > 0  # the champion, scored again
    assert (
        f"not more than min_improvement {UNBEATABLE:g}" in kept.data.tags["genpar.retrain.reason"]
    )
    assert (
        kept.data.tags["genpar.retrain.champion_version"]
        == (promoted.data.tags["genpar.model_version"])
    )

    champion = client.get_model_version_by_alias("tiny", "champion")
    assert champion.run_id == promoted.info.run_id  # the alias stayed with the first

    (first_report,) = [
        a for a in stack.artifacts_of(first["id"]) if a["key"] == "tiny-nightly-retrain"
    ]
    (second_report,) = [
        a for a in stack.artifacts_of(second["id"]) if a["key"] == "tiny-nightly-retrain"
    ]
    assert "**Decision: promoted**" in first_report["data"]
    assert "**Decision: kept**" in second_report["data"]
    assert "#/compare-runs?runs=" in second_report["data"]  # challenger vs champion
    assert kept.info.run_id in second_report["data"] and champion.run_id in second_report["data"]
