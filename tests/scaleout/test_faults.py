"""Faults of the team stack, each while work is in flight: PostgreSQL restarted, the object
store away, a Dask worker killed during generation, the Prefect worker killed. Each run ends
as promised (completes, or fails naming what was away and resumes on a re-run), and what it
recorded is read back from PostgreSQL, the bucket and Prefect's API: nothing lost, nothing
recorded twice."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import psutil
import pytest

from genpar_models.config import load_config
from tests.conftest import REPO, TINY
from tests.scaleout.conftest import (
    SLOW,
    Background,
    SharedRun,
    Team,
    genpar,
    kill_a_busy_dask_worker,
    run_dir,
    wait_checkpoint,
    wait_dask_workers,
)

pytestmark = [pytest.mark.scaleout, pytest.mark.system, pytest.mark.slow]

# where the fault lands after the first checkpoint and the test needs no more than a few
# seconds of training left after it (about 6 s on 2 ranks), not a fault spanning a restart
SHORT = ["train.max_steps=400", "train.checkpoint_every_steps=100", "train.log_every_steps=10"]


def _nothing_recorded_twice(team: Team, run_id: str, flow_run_id: str | None = None) -> None:
    doubled = team.sql(
        "mlflow",
        "SELECT key, step, count(*) FROM metrics WHERE run_uuid = %s "
        "GROUP BY key, step HAVING count(*) > 1",
        run_id,
    )
    assert doubled == [], f"metrics recorded twice: {doubled}"
    ((versions,),) = team.sql("mlflow", "SELECT count(*) FROM model_versions WHERE run_id = %s",
                              run_id)  # fmt: skip
    assert versions == 1
    if flow_run_id:
        tasks = team.sql(
            "prefect",
            "SELECT task_key, dynamic_key, count(*) FROM task_run WHERE flow_run_id = %s "
            "GROUP BY task_key, dynamic_key HAVING count(*) > 1",
            flow_run_id,
        )
        assert tasks == [], f"task runs recorded twice: {tasks}"


def _flow_run_of(team: Team, run_id: str) -> str:
    ((flow_run,),) = team.sql(
        "mlflow", "SELECT value FROM tags WHERE run_uuid = %s AND key = 'prefect.flow_run_id'",
        run_id,
    )  # fmt: skip
    return flow_run


def test_postgresql_restarted_mid_run_loses_and_doubles_nothing(
    team: Team, restarted_run: SharedRun
) -> None:
    run_id = restarted_run.run_id
    assert restarted_run.returncode == 0, restarted_run.output[-5000:]
    # Prefect and MLflow (both on the restarted database) saw the whole run
    ((status,),) = team.sql("mlflow", "SELECT status FROM runs WHERE run_uuid = %s", run_id)
    assert status == "FINISHED"
    flow_run = _flow_run_of(team, run_id)
    ((state,),) = team.sql("prefect", "SELECT state_type FROM flow_run WHERE id = %s", flow_run)
    assert state == "COMPLETED"
    # every logged training step arrived once: the ones sent while the database was down too
    steps = [s for (s,) in team.sql(
        "mlflow", "SELECT step FROM metrics WHERE run_uuid = %s AND key = 'train/loss' "
        "ORDER BY step", run_id)]  # fmt: skip
    assert steps == list(range(10, 801, 10))
    # the restart landed mid-training: steps were logged before it and after it was back
    ((after,),) = team.sql("mlflow", "SELECT count(*) FROM metrics WHERE run_uuid = %s AND "
                           "key = 'train/loss' AND timestamp > %s", run_id,
                           restarted_run.back_ms)  # fmt: skip
    assert 0 < after < len(steps), f"{after} of {len(steps)} steps after the restart"
    _nothing_recorded_twice(team, run_id, flow_run)


def test_the_object_store_away_fails_the_run_by_name_and_a_rerun_logs_everything(
    team: Team, tmp_path: Path
) -> None:
    sets = [a for s in SHORT for a in ("--set", s)]
    quick = {"GENPAR_ARTIFACT_RETRY_S": "4"}  # the default waits 120 s
    run = Background(team, tmp_path, "run", str(TINY), *sets, env=quick)
    run_id = run.run_id()
    wait_checkpoint(team, run_id)
    psutil.Process(team.server_pid("s3")).terminate()  # the bucket's server goes away
    assert run.wait() != 0
    out = run.output()
    error = out[out.rindex("error: ") :]
    assert "the artifact store (s3://genpar-artifacts at http://127.0.0.1" in error, error
    assert "MLflow run " in error and "in 4 s" in error  # this run's, or its extractor's
    directory = run_dir(team, run_id)
    assert f"stay in {directory}" in error and "Run the same command again" in error
    # nothing was thrown away: the final checkpoint and the exported model are on disk
    assert (directory / "checkpoints" / "ckpt-00000400.safetensors").exists()
    assert (directory / "model" / "model.safetensors").exists()
    ((status,),) = team.sql("mlflow", "SELECT status FROM runs WHERE run_uuid = %s", run_id)
    assert status == "FAILED"

    back = genpar(team.env, "restart", "s3", timeout=SLOW)
    assert back.returncode == 0, back.stdout + back.stderr
    again = Background(team, tmp_path, "run", str(TINY), *sets, env=quick)
    assert again.wait() == 0, again.output()[-5000:]
    assert f"resuming MLflow run {run_id}" in again.output()  # the same run, not a new one
    keys = {k for k in team.s3_keys() if run_id in k}
    for artifact in ("model/model.safetensors", "eval/report.json", "samples/grid.png",
                     "data/manifest.json"):  # fmt: skip
        assert any(k.endswith(artifact) for k in keys), (artifact, sorted(keys))
    ((status,),) = team.sql("mlflow", "SELECT status FROM runs WHERE run_uuid = %s", run_id)
    assert status == "FINISHED"
    _nothing_recorded_twice(team, run_id)


def _sample_digests(directory: Path) -> dict[str, str]:
    info = json.loads((directory / "samples.json").read_text())
    return {
        c["file"]: hashlib.sha256((directory / c["file"]).read_bytes()).hexdigest()
        for c in info["chunks"]
    }


def test_a_dask_worker_killed_during_generation_changes_no_sample(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunks of the killed worker are rescheduled on the survivor (the nanny restarts
    the dead one) and every chunk file is byte-identical to an undisturbed run's."""
    import torch

    from genpar_models.models.export import build_model, export_model
    from tasks.generate import generate_to_dir

    monkeypatch.setenv("GENPAR_HOME", str(team.home))
    address = f"tcp://127.0.0.1:{team.ports['dask']}"
    cfg = load_config(REPO / "configs" / "mnist-vae.yaml", [
        f"compute.dask_address={address}", "generate.parallel=dask",
        "generate.num_samples=12000", "generate.chunk_size=300",
    ])  # fmt: skip
    torch.manual_seed(0)  # an untrained network samples as deterministically as a trained one
    model = build_model(cfg.model, (1, 28, 28))
    model_dir = export_model(tmp_path / "model", module=model, spec=model.model_spec(),
                             meta={"step": 0}).parent  # fmt: skip
    generate_to_dir(cfg, str(model_dir), tmp_path / "undisturbed")
    killed: dict[str, str] = {}
    killer = threading.Thread(target=kill_a_busy_dask_worker, args=(address, killed), daemon=True)
    killer.start()
    time.sleep(1)  # the killer is connected and watching before the chunks go out
    generate_to_dir(cfg, str(model_dir), tmp_path / "disturbed")
    killer.join(timeout=10)
    assert killed, "no worker was ever busy: nothing was killed"
    wait_dask_workers(address, 2)
    undisturbed = _sample_digests(tmp_path / "undisturbed")
    assert len(undisturbed) == 40
    assert _sample_digests(tmp_path / "disturbed") == undisturbed


def test_the_prefect_worker_killed_mid_run_crashes_it_and_a_rerun_resumes(
    team: Team, deployed: dict[str, dict]
) -> None:
    """The worker and the flow run it runs die together (a lost machine): nothing is left to
    report a final state, so the stack's automation marks the run CRASHED once its heartbeats
    stop; after `genpar restart worker`, the same deployment run again resumes training from
    the dead run's checkpoint, on the same MLflow run."""
    pipeline = deployed["pipeline"]
    config = load_config(TINY, SHORT)
    body = {"parameters": {"config": config.model_dump(mode="json")}}
    first = team.request("POST", f"/deployments/{pipeline['id']}/create_flow_run", body)
    deadline = time.monotonic() + SLOW
    run_id = None
    while run_id is None and time.monotonic() < deadline:
        found = team.sql(
            "mlflow", "SELECT run_uuid FROM tags WHERE key = 'prefect.flow_run_id' AND value = %s",
            first["id"],
        )  # fmt: skip
        run_id = found[0][0] if found else None
        time.sleep(1)
    assert run_id, "the deployment's run never opened its MLflow run"
    wait_checkpoint(team, run_id)
    worker = psutil.Process(team.server_pid("worker"))
    family = [worker, *worker.children(recursive=True)]
    assert len(family) > 1, "the flow run is not running under the worker"
    for p in family:  # SIGKILL, all at once: no hook, no final state can run
        p.kill()
    crashed = team.wait_flow_run(first["id"], timeout=180)
    assert crashed["state_type"] == "CRASHED", crashed["state"]
    assert "No heartbeat" in crashed["state"]["message"]

    back = genpar(team.env, "restart", "worker", timeout=SLOW)
    assert back.returncode == 0, back.stdout + back.stderr
    second = team.request("POST", f"/deployments/{pipeline['id']}/create_flow_run", body)
    done = team.wait_flow_run(second["id"], timeout=SLOW)
    assert done["state_type"] == "COMPLETED", done["state"]
    assert _flow_run_of(team, run_id) == second["id"]  # the same MLflow run, resumed
    result = json.loads((run_dir(team, run_id) / "result.json").read_text())
    assert result["step"] == 400 and result["resumed_from_step"] >= 100
    _nothing_recorded_twice(team, run_id, second["id"])
