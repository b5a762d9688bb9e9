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
    """The shared sweep, run in this process at concurrency 2: (summary, client, home)."""
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
        summary = sweep_flow(sweep)
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
    # one shard set and one feature extractor for all trials
    assert len([p for p in (home / "shards").iterdir() if not p.name.startswith("_")]) == 1
    assert summary["best"]["id"] == best_at_rung


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
    for t in (stopped, best):  # the newest checkpoint of each is kept
        left = sorted((ckpts[t][0].parent).glob("ckpt-*.safetensors"))
        assert left == ckpts[t][-1:]
        assert left[0].with_suffix(".json").exists()
    assert not orphan.exists() and shards.exists()  # the sweep's shards are referenced
    assert not (home / "cache" / "models" / "somerun").exists()
    assert len(list((open_dir / "checkpoints").iterdir())) == 2  # unfinished: untouched
    assert (
        Path(children[best].data.tags["genpar.run_dir"]) / "model" / "model.safetensors"
    ).exists()
