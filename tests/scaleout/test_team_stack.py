"""The team stack end to end: a pipeline on every engine of it, the deployments through the
work pool with the nightly schedule firing on the worker, and a home migrated into it.
What landed is read back through PostgreSQL, S3, the Prefect API and the Dask scheduler."""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from distributed import Client
from mlflow import MlflowClient

from genpar_models.config import load_config
from tasks import registry
from tests.conftest import REPO, TINY
from tests.helpers import clean_env, small_mlflow_home
from tests.scaleout.conftest import (
    RUN_ID,
    SLOW,
    SharedRun,
    Team,
    genpar,
    kill_a_busy_dask_worker,
    wait_dask_workers,
)
from tests.system.conftest import GENPAR

pytestmark = [pytest.mark.scaleout, pytest.mark.system, pytest.mark.slow]


def _task_prefixes(team: Team) -> set[str]:
    with Client(f"tcp://127.0.0.1:{team.ports['dask']}", timeout="20s") as c:
        return set(c.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))


def test_a_pipeline_runs_on_every_engine_of_the_team_stack(
    team: Team, restarted_run: SharedRun
) -> None:
    """The session's shared tiny run (PostgreSQL restarted in its training: test_faults
    checks that part) on the stack's Dask cluster, MLflow, bucket and Prefect."""
    out = restarted_run.output
    assert restarted_run.returncode == 0, out[-8000:]
    assert "2 worker(s) see the genpar home" in out
    (run_id,) = set(RUN_ID.findall(out))
    assert run_id == restarted_run.run_id
    # preprocessing and generation ran on the stack's scheduler, not a LocalCluster
    assert {"process_partition", "generate_chunk"} <= _task_prefixes(team)
    # MLflow's rows are in PostgreSQL, its artifacts in the bucket
    ((status,),) = team.sql("mlflow", "SELECT status FROM runs WHERE run_uuid = %s", run_id)
    assert status == "FINISHED"
    ((metrics,),) = team.sql("mlflow", "SELECT count(*) FROM metrics WHERE run_uuid = %s", run_id)
    assert metrics > 10
    keys = [k for k in team.s3_keys() if run_id in k]
    assert any(k.endswith("model/model.safetensors") for k in keys), keys
    # the flow run is COMPLETED in Prefect's PostgreSQL database and through its API
    with team.mlflow_credentials():
        tags = MlflowClient(team.mlflow_url).get_run(run_id).data.tags
    flow_run = tags["prefect.flow_run_id"]
    ((state,),) = team.sql("prefect", "SELECT state_type FROM flow_run WHERE id = %s", flow_run)
    assert state == "COMPLETED"
    assert team.request("GET", f"/flow_runs/{flow_run}")["state_type"] == "COMPLETED"
    # evaluate downloads the model back from the bucket, through MLflow's proxy
    again = genpar(team.env, "evaluate", run_id, "--set", "evaluate.num_samples=200", timeout=SLOW)
    assert again.returncode == 0, again.stderr[:2000] + again.stdout[-3000:] + again.stderr[-3000:]


def test_deployments_run_on_the_work_pool_and_the_nightly_fires(
    team: Team, deployed: dict[str, dict]
) -> None:
    assert all(d["work_pool_name"] == "genpar" for d in deployed.values())
    nightly = deployed["nightly-retrain"]
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    # The nightly, on a tiny config, firing 15 s from now instead of at 02:00 (an hourly
    # schedule anchored then: no wait for a cron minute to come round, one run only): the
    # scheduler makes its run, the worker on the pool runs it.
    config = load_config(TINY, ["train.max_steps=20", "retrain.force=true"])
    team.request("PATCH", f"/deployments/{nightly['id']}",
                 {"parameters": {"config": config.model_dump(mode="json")}})  # fmt: skip
    soon = datetime.now(UTC) + timedelta(seconds=15)
    hourly_from_soon = {
        "schedule": {"interval": 3600, "anchor_date": soon.isoformat(), "timezone": "UTC"},
        "active": True,
        "max_scheduled_runs": 1,  # one run ahead at a time: the test keeps only the first
    }
    (schedule,) = team.request("POST", f"/deployments/{nightly['id']}/schedules",
                               [hourly_from_soon])  # fmt: skip
    try:
        run = _first_scheduled_run(team, nightly["id"], timeout=180)
    finally:  # deleting a schedule leaves its runs: the test removes any but the first
        team.request("DELETE", f"/deployments/{nightly['id']}/schedules/{schedule['id']}")
    for other in _own_runs(team, nightly["id"]):
        if other["id"] != run["id"] and other["state_type"] == "SCHEDULED":
            team.request("DELETE", f"/flow_runs/{other['id']}")
    done = team.wait_flow_run(run["id"], timeout=SLOW)
    assert done["state_type"] == "COMPLETED", done["state"]
    assert done["auto_scheduled"] and done["work_pool_name"] == "genpar"
    assert done["infrastructure_pid"], "no worker process ran it"
    # it made the first champion, recorded in the team's MLflow
    with team.mlflow_credentials():
        client = MlflowClient(team.mlflow_url)
        assert registry.alias_version(client, config.registered_model_name, "champion")


def _own_runs(team: Team, deployment_id: str) -> list[dict]:
    """The deployment's runs that the test's schedule made (not the 02:00 ones)."""
    body = {
        "flow_runs": {"deployment_id": {"any_": [deployment_id]}},
        "sort": "EXPECTED_START_TIME_ASC",
        "limit": 50,
    }
    runs = team.request("POST", "/flow_runs/filter", body)
    return [r for r in runs if r["auto_scheduled"] and "T02:00:00" not in r["expected_start_time"]]


def _first_scheduled_run(team: Team, deployment_id: str, timeout: float) -> dict:
    """The first run the test's schedule made, once a worker has taken it (a run still
    SCHEDULED goes with its schedule when that is deleted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in _own_runs(team, deployment_id) if r["state_type"] != "SCHEDULED"]
        if runs:
            return runs[0]
        time.sleep(1)
    raise AssertionError(f"no scheduled run of the nightly started within {timeout:.0f} s")


def test_an_embedded_home_migrates_into_the_team_stack(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "laptop"
    monkeypatch.setenv("GENPAR_HOME", str(home))
    source = small_mlflow_home("laptop")  # not the pipeline's names: no alias moves
    env = {**clean_env(home), **{k: v for k, v in team.client_env.items() if "MLFLOW" in k}}
    env.pop("MLFLOW_TRACKING_URI")
    out = subprocess.run(
        [GENPAR, "migrate", "--to", team.mlflow_url],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "runs: 2 copied" in out.stdout
    rows = team.sql(
        "mlflow",
        "SELECT run_uuid FROM tags WHERE key = 'genpar.migrated_from' AND value = %s",
        source["trial"],
    )
    (copied,) = {r[0] for r in rows}
    assert any(copied in k and k.endswith("notes/readme.txt") for k in team.s3_keys())
    with team.mlflow_credentials():
        client = MlflowClient(team.mlflow_url)
        champion = client.get_model_version_by_alias("laptop", "champion")
        assert champion.run_id == copied


def test_the_team_prefect_ui_asks_for_the_password_then_shows_the_pool(team: Team) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.system.conftest import ARTIFACTS, chromium_or_skip
    from tests.system.test_browser import ARGS

    executable = chromium_or_skip()
    ui = f"http://127.0.0.1:{team.ports['prefect']}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{ui}/work-pools")
            password = page.get_by_placeholder("admin:pass")
            password.fill("admin:wrong")
            page.get_by_role("button", name="Login").click()
            expect(page.get_by_text("Authentication failed.").first).to_be_visible()
            password.fill(team.creds["prefect_auth_string"])
            page.get_by_role("button", name="Login").click()
            page.goto(f"{ui}/work-pools")
            expect(page.get_by_role("link", name="genpar", exact=True)).to_be_visible()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "team-prefect-work-pools.png"), full_page=True)
        finally:
            browser.close()


def test_a_dask_worker_killed_during_preprocessing_changes_no_shard(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage completes on the survivors (Dask reschedules; the nanny restarts the dead
    worker) and the shard set is byte-identical to an undisturbed build."""
    from genpar_models.data.manifest import read_manifest
    from tasks.preprocess import build_shards

    monkeypatch.setenv("GENPAR_HOME", str(team.home))
    address = f"tcp://127.0.0.1:{team.ports['dask']}"
    cfg = load_config(TINY, [f"compute.dask_address={address}", "data.parallel=dask",
                             "data.max_samples=null", "data.shard_size=16"])  # fmt: skip
    undisturbed = read_manifest(build_shards(cfg, rebuild=True))
    killed: dict[str, str] = {}
    killer = threading.Thread(target=kill_a_busy_dask_worker, args=(address, killed), daemon=True)
    killer.start()
    time.sleep(1)  # the killer is connected and watching before the partitions go out
    disturbed = read_manifest(build_shards(cfg, rebuild=True))
    killer.join(timeout=10)
    assert killed, "no worker was ever busy: nothing was killed"
    wait_dask_workers(address, 2)
    assert disturbed.key == undisturbed.key
    assert disturbed.splits == undisturbed.splits  # every shard's sha256, split by split
    assert disturbed.normalisation == undisturbed.normalisation
