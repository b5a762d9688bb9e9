"""`genpar sweep` for real: Prefect flows, concurrent 2-trial torchrun jobs, a SQLite MLflow store.

One small sweep is shared (module fixture): a 2 x 2 grid of tiny trials where the two with a
batch larger than the train split fail in their ranks, successive halving at one rung keeps
one of the other two. The CLI test runs the same sweep at concurrency 1, SIGKILLs it while the
survivor trains on, runs it again, and must land on the same numbers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from genpar_models.config.sweep import load_sweep
from genpar_models.util.paths import default_tracking_uri
from tests.conftest import TINY
from tests.helpers import clean_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GENPAR = str(Path(sys.executable).with_name("genpar"))
# tiny, longer, so that a kill lands while the survivor trains on after the rung
OVERRIDES = [
    "train.max_steps=300",
    "train.checkpoint_every_steps=20",
    "train.log_every_steps=20",
    "train.val_every_steps=20",
]
SWEEP = f"""
name: sweep-test
base: {TINY}
search: grid
concurrency: CONCURRENCY
space:
  train.lr: [0.003, 0.03]
  train.batch_size_per_rank: [32, 4096]   # 4096 > the train split: those ranks fail
objective: {{metric: eval/fid, direction: minimize}}
early_stopping: {{metric: val/elbo, direction: maximize, rungs: [0.2], keep: 0.25}}
"""


def _sweep_file(directory: Path, concurrency: int) -> Path:
    path = directory / f"sweep-c{concurrency}.yaml"
    path.write_text(SWEEP.replace("CONCURRENCY", str(concurrency)))
    return path


def _children(client: MlflowClient, parent: str) -> dict[str, object]:
    exp = client.get_run(parent).info.experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    out: dict[str, object] = {}
    for r in runs:
        trial = r.data.tags["genpar.sweep.trial"]
        assert trial not in out, f"trial {trial} has two child runs"
        out[trial] = r
    return out


def _launches(run) -> int:
    return len(list((Path(run.data.tags["genpar.run_dir"]) / "torchrun").glob("launch-*")))


@pytest.fixture(scope="module")
def swept(prefect_server, tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path):
    """The shared sweep, run in this process at concurrency 2 with promote: (summary, client,
    home)."""
    import shutil

    from flows.sweep import sweep_flow

    home = tmp_path_factory.mktemp("sweep") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENPAR_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        db = Path(default_tracking_uri()[len("sqlite:///") :])
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mlflow_template, db)
        sweep = load_sweep(_sweep_file(home.parent, 2), OVERRIDES)
        summary = sweep_flow(sweep.model_copy(update={"promote": True}))
        yield summary, MlflowClient(default_tracking_uri()), home


def test_sweep_nests_runs_stops_losers_records_failures_and_registers_the_best(swept) -> None:
    summary, client, home = swept
    parent = client.get_run(summary["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.search"] == "grid"
    assert json.loads(parent.data.params["sweep.space"])["train.lr"] == [0.003, 0.03]
    children = _children(client, summary["run_id"])
    assert sorted(children) == ["t000", "t001", "t002", "t003"]
    status = {t: r.data.tags["genpar.sweep.status"] for t, r in children.items()}
    # the ranks of a batch larger than the split fail: recorded, and the sweep went on
    for t in ("t001", "t003"):
        assert children[t].info.status == "FAILED" and status[t] == "failed"
        assert "larger than the train split" in children[t].data.tags["genpar.error"]
    # one rung at 0.2 x 300 = step 60, keep 1/4 of 4: the better val/elbo goes on
    rung = {
        t: client.get_metric_history(children[t].info.run_id, "sweep/rung_score")
        for t in ("t000", "t002")
    }
    assert all([m.step for m in h] == [60] for h in rung.values())
    best_at_rung = max(("t000", "t002"), key=lambda t: rung[t][0].value)
    other = "t002" if best_at_rung == "t000" else "t000"
    assert children[best_at_rung].info.status == "FINISHED"
    assert status[best_at_rung] == "finished"
    assert children[other].info.status == "KILLED"
    assert status[other] == "stopped at rung 1 of 1 (step 60)"
    # the stopped trial keeps its rung checkpoint; the survivor continued from it (no restart)
    stopped_dir = Path(children[other].data.tags["genpar.run_dir"])
    assert (stopped_dir / "checkpoints" / "ckpt-00000060.safetensors").exists()
    survivor = children[best_at_rung]
    assert _launches(survivor) == 2 and survivor.data.tags["genpar.resumed_from_step"] == "60"
    steps = [m.step for m in client.get_metric_history(survivor.info.run_id, "train/loss")]
    assert steps == list(range(20, 301, 20))  # continuous across the rung, nothing twice
    assert "eval/fid" in survivor.data.metrics and "eval/fid" not in children[other].data.metrics
    # the parent: best trial, results table and plot; the best trial is registered
    assert parent.data.tags["genpar.sweep.best_trial"] == best_at_rung
    assert parent.data.tags["genpar.sweep.best_run_id"] == survivor.info.run_id
    assert parent.data.metrics["sweep/best_objective"] == survivor.data.metrics["eval/fid"]
    assert parent.data.metrics["sweep/failed_trials"] == 2
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"], "sweep")}
    assert {"sweep/results.md", "sweep/results.csv", "sweep/objective.png"} <= artifacts
    (version,) = client.search_model_versions("name='tiny'")
    assert version.run_id == survivor.info.run_id
    # --promote: no champion yet, so by the nightly's rule the best trial takes the alias
    assert summary["best"]["promotion"]["promote"] is True
    assert client.get_model_version_by_alias("tiny", "champion").version == version.version
    # one shard set, one feature extractor and one set of reference statistics for all
    # trials, built before any trial: the survivor's scorecard found both cached
    assert len([p for p in (home / "shards").iterdir() if not p.name.startswith("_")]) == 1
    assert len(list((home / "cache" / "eval" / "extractors").glob("*/*"))) == 1
    report = json.loads(
        (Path(survivor.data.tags["genpar.run_dir"]) / "eval/report.json").read_text()
    )
    assert report["cache"]["extractor"] == "cached" and report["cache"]["reference"] == "cached"
    assert summary["best"]["id"] == best_at_rung
    # the Prefect flow run: each trial (per rung) a task with its state, a table artifact of
    # the trials and a markdown artifact linking the parent run
    tasks, artifacts = _prefect_view(parent.data.tags["prefect.flow_run_id"])
    assert tasks["trial-t001-to-step-60"] == "FAILED" and tasks["failed-t001"] == "COMPLETED"
    assert tasks[f"trial-{best_at_rung}-to-step-300"] == "COMPLETED"
    assert f"trial-{other}-to-step-300" not in tasks and tasks[f"stop-{other}"] == "COMPLETED"
    table = json.loads(artifacts["table"].data)
    assert [r["trial"] for r in table][0] == best_at_rung and len(table) == 4
    assert summary["run_id"] in artifacts["markdown"].data


def _prefect_view(flow_run_id: str) -> tuple[dict[str, str], dict[str, object]]:
    """The flow run's task runs (name -> state type) and its artifacts by type."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])
            )
        )
    return {r.name: r.state.type.value for r in runs}, {a.type: a for a in artifacts}


FAIL_FAST = f"""
name: sweep-fail-fast
base: {TINY}
search: random
trials: 3
seed: 3
concurrency: 1
fail_fast: true
space:
  train.lr: {{low: 0.001, high: 0.01, log: true}}
  train.batch_size_per_rank: {{choices: [32, 4096]}}
objective: {{metric: eval/fid, direction: minimize}}
"""


def test_random_sweep_under_fail_fast_stops_at_the_first_failed_trial(swept, tmp_path) -> None:
    """A random sweep in the shared home (its shards and evaluation cache are reused): the
    seeded sampler's second trial fails in its ranks, so fail_fast starts no third trial, and
    the sweep fails naming the trial, with its runs recorded."""
    from flows.sweep import SweepFailed, sweep_flow
    from tasks.sweep import check_sweep

    _, client, _ = swept
    path = tmp_path / "fail-fast.yaml"
    path.write_text(FAIL_FAST)
    sweep = load_sweep(path)
    planned = check_sweep(sweep).trials
    assert [t.config.train.batch_size_per_rank for t in planned] == [32, 4096, 32]
    assert planned[0].config.train.lr != planned[2].config.train.lr  # drawn, not a grid
    with pytest.raises(SweepFailed, match=r"(?s)trial t001 failed \(fail_fast\).*train split"):
        sweep_flow(sweep)
    exp = client.get_experiment_by_name("tiny").experiment_id
    (parent,) = client.search_runs(
        [exp],
        filter_string="tags.`genpar.sweep.role` = 'parent' "
        "and params.`sweep.name` = 'sweep-fail-fast'",
    )
    assert parent.info.status == "FAILED" and parent.data.params["sweep.search"] == "random"
    children = _children(client, parent.info.run_id)
    assert sorted(children) == ["t000", "t001"]  # t002 never started
    assert children["t000"].info.status == "FINISHED"
    assert "eval/fid" in children["t000"].data.metrics
    assert children["t001"].info.status == "FAILED"
    assert "larger than the train split" in children["t001"].data.tags["genpar.error"]


def _ranks_alive(home: Path) -> list:
    import psutil

    alive = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "genpar_models.train" in cmd and str(home) in cmd and "pytest" not in cmd:
            alive.append(p)
    return alive


def _survivor_past_rung(home: Path) -> bool:
    return any(home.glob("runs/tiny/*/checkpoints/ckpt-00000080.json"))


def test_killed_sweep_resumes_and_matches_concurrency_2(swept, tmp_path: Path) -> None:
    """SIGKILL while the survivor trains on; the same command again finishes the sweep without
    training the rung trials again, resuming the survivor, reopening the parent: and at
    concurrency 1 it lands on the numbers the concurrency-2 sweep got."""
    summary2, client2, _ = swept
    home = tmp_path / "home"
    args = [GENPAR, "sweep", str(_sweep_file(tmp_path, 1))]
    for o in OVERRIDES:
        args += ["--set", o]
    proc = subprocess.Popen(
        args,
        env=clean_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 400
        while time.time() < deadline and not _survivor_past_rung(home):
            assert proc.poll() is None, "genpar sweep ended before the survivor trained on"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(3)
        assert not _ranks_alive(home), "training ranks outlived the killed sweep"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    client = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    (parent_id,) = {
        r.info.run_id
        for r in client.search_runs(
            [client.get_experiment_by_name("tiny").experiment_id],
            filter_string="tags.`genpar.sweep.role` = 'parent'",
        )
    }
    before = {t: _launches(r) for t, r in _children(client, parent_id).items()}

    again = subprocess.run(args, env=clean_env(home), capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    parents = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id],
        filter_string="tags.`genpar.sweep.role` = 'parent'",
    )
    assert [p.info.run_id for p in parents] == [parent_id]  # reopened, not a second one
    assert parents[0].info.status == "FINISHED"
    children = _children(client, parent_id)  # asserts one child run per trial
    best = parents[0].data.tags["genpar.sweep.best_trial"]
    other = "t002" if best == "t000" else "t000"
    assert _launches(children[other]) == before[other] == 1  # its rung was done: not retrained
    assert _launches(children[best]) == before[best] + 1  # resumed once more...
    assert int(children[best].data.tags["genpar.resumed_from_step"]) >= 80  # ...from its ckpt
    # the same survivor and the same numbers as at concurrency 2
    assert best == summary2["best"]["id"]
    children2 = _children(client2, summary2["run_id"])
    for t in ("t000", "t002"):
        ours = client.get_metric_history(children[t].info.run_id, "sweep/rung_score")
        theirs = client2.get_metric_history(children2[t].info.run_id, "sweep/rung_score")
        assert [m.value for m in ours][-1:] == [m.value for m in theirs]
    assert children[best].data.metrics["eval/fid"] == pytest.approx(
        children2[best].data.metrics["eval/fid"], rel=1e-6
    )


def test_runs_lists_a_sweeps_trials_ranked_by_its_objective(swept) -> None:
    from tasks.listing import list_runs

    summary, _, _ = swept
    rows, columns = list_runs(
        uri=None,
        experiment=None,
        sort=None,
        desc=False,
        metrics=None,
        limit=10,
        sweep=summary["run_id"],
    )
    assert columns[:4] == ["trial", "run", "status", "sweep"] and "eval/fid" in columns
    assert rows[0]["trial"] == summary["best"]["id"] and rows[0]["eval/fid"]
    assert sorted(r["trial"] for r in rows) == ["t000", "t001", "t002", "t003"]
    assert {r["train.lr"] for r in rows} == {"0.003", "0.03"}


def test_gc_frees_what_no_run_needs_after_a_sweep(swept) -> None:
    """Last in this module: it deletes files of the shared sweep's home."""
    from typer.testing import CliRunner

    from flows.cli import app

    summary, client, home = swept
    children = _children(client, summary["run_id"])
    ckpts = {
        t: sorted((Path(r.data.tags["genpar.run_dir"]) / "checkpoints").glob("ckpt-*.safetensors"))
        for t, r in children.items()
    }
    best = summary["best"]["id"]
    stopped = "t002" if best == "t000" else "t000"
    assert len(ckpts[stopped]) == 3 and len(ckpts[best]) == 3  # train.keep_checkpoints
    # an unfinished run (it resumes from its checkpoints), an unreferenced old shard set and a
    # cached model download
    exp = client.get_experiment_by_name("tiny").experiment_id
    open_dir = home / "runs" / "tiny" / "unfinished"
    (open_dir / "checkpoints").mkdir(parents=True)
    for step in (10, 20):
        (open_dir / "checkpoints" / f"ckpt-{step:08d}.safetensors").write_bytes(b"x")
    client.create_run(exp, tags={"genpar.run_dir": str(open_dir)})
    (shards,) = [p for p in (home / "shards").iterdir() if not p.name.startswith("_")]
    orphan = home / "shards" / "0123orphan"
    import shutil

    shutil.copytree(shards, orphan)
    os.utime(orphan / "manifest.json", (time.time() - 7200, time.time() - 7200))
    cached = home / "cache" / "models" / "somerun" / "model"
    cached.mkdir(parents=True)
    (cached / "model.safetensors").write_bytes(b"y" * 1000)

    dry = CliRunner().invoke(app, ["gc", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would remove" in dry.output and str(orphan) in dry.output
    assert all(p.exists() for c in ckpts.values() for p in c) and orphan.exists()

    done = CliRunner().invoke(app, ["gc"])
    assert done.exit_code == 0, done.output
    assert "removed" in done.output and "MiB" in done.output
    # the stopped trial keeps its newest checkpoint; the best trial is the champion (the
    # fixture's promote): its run is kept whole
    left = sorted(ckpts[stopped][0].parent.glob("ckpt-*.safetensors"))
    assert left == ckpts[stopped][-1:] and left[0].with_suffix(".json").exists()
    assert sorted(ckpts[best][0].parent.glob("ckpt-*.safetensors")) == ckpts[best]
    assert f"{children[best].data.tags['genpar.run_dir']}/checkpoints" not in done.output
    assert not orphan.exists() and shards.exists()  # the sweep's shards are referenced
    assert not (home / "cache" / "models" / "somerun").exists()
    assert len(list((open_dir / "checkpoints").iterdir())) == 2  # unfinished: untouched
    assert (
        Path(children[best].data.tags["genpar.run_dir"]) / "model" / "model.safetensors"
    ).exists()
