"""`genpar migrate`: a small genpar home's MLflow records copied to a real MLflow server on
127.0.0.1 whose artifacts are proxied (as the team stack's are), whole, and only once."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from tasks import mlflow_store as store
from tasks import registry
from tasks.migrate import TAG_DONE, TAG_FROM, TAG_FROM_VERSION
from tests.conftest import REPO
from tests.helpers import MODEL_DIR, MlflowServer, clean_env, small_mlflow_home

pytestmark = [pytest.mark.integration]

GENPAR = str(Path(sys.executable).with_name("genpar"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _migrate(home: Path, target: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GENPAR, "migrate", "--to", target],
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def _copies(client: MlflowClient) -> dict[str, object]:
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ACTIVE_ONLY)
    return {r.data.tags[TAG_FROM]: r for r in runs}


def test_a_home_moves_whole_and_once(
    tracked_home: Path, mlflow_template: Path, tmp_path: Path
) -> None:
    source = small_mlflow_home("tiny")
    server = MlflowServer(tmp_path / "team.db", mlflow_template, proxy_artifacts=True)
    server.start()
    try:
        # an earlier migration was killed while copying the trial: a copy without the mark
        target = MlflowClient(server.uri)
        exp = store.ensure_experiment(target, server.uri, "tiny")
        torn = store.create_run(target, exp, name="t000", tags={TAG_FROM: source["trial"]})
        target.log_metric(torn, "train/loss", 3.0, step=0)

        first = _migrate(tracked_home, server.uri)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "runs: 2 copied, 0 already there" in first.stdout
        assert "model versions: 2 copied, 0 already there; 1 alias(es) set" in first.stdout
        assert target.get_run(torn).info.lifecycle_stage == "deleted"  # copied again, whole
        copies = _copies(target)
        assert set(copies) == {source["parent"], source["trial"]}
        trial, parent = copies[source["trial"]], copies[source["parent"]]
        assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id  # re-pointed
        assert trial.data.tags[TAG_DONE] == "complete" and trial.info.status == "FINISHED"
        assert parent.info.status == "KILLED" and trial.info.run_name == "t000"
        assert trial.data.params == {"train.lr": "0.003", "data.binarize": "none"}
        history = target.get_metric_history(trial.info.run_id, "train/loss")
        assert [(m.step, m.value) for m in history] == [(0, 3.0), (10, 2.0), (20, 1.5)]
        (tmp_path / "dl").mkdir()
        down = Path(target.download_artifacts(trial.info.run_id, "", str(tmp_path / "dl")))
        assert (down / "notes" / "readme.txt").read_text() == "hello"
        assert _sha(down / "model" / "model.safetensors") == _sha(MODEL_DIR / "model.safetensors")
        # the registry: both versions, their tags, the alias on the copy of version 2, and
        # the champion resolving to weights downloaded back from the server
        versions = {v.version: v for v in target.search_model_versions("name = 'tiny'")}
        assert {v.tags[TAG_FROM_VERSION] for v in versions.values()} == {"tiny/1", "tiny/2"}
        assert all(v.run_id == trial.info.run_id for v in versions.values())
        champion = target.get_model_version_by_alias("tiny", registry.ALIAS)
        assert champion.tags[TAG_FROM_VERSION] == "tiny/2" and champion.source.startswith(
            "models:/"
        )
        assert target.get_logged_model(champion.source.removeprefix("models:/")).status == "READY"
        resolved = registry.resolve(
            target, "tiny@champion", default_name=None, cache=tmp_path / "c"
        )
        assert _sha(resolved.model_dir / "model.safetensors") == _sha(
            MODEL_DIR / "model.safetensors"
        )

        again = _migrate(tracked_home, server.uri)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "runs: 0 copied, 2 already there; 0 artifact file(s)" in again.stdout
        assert "model versions: 0 copied, 2 already there" in again.stdout
        assert {k: r.info.run_id for k, r in _copies(target).items()} == {
            k: r.info.run_id for k, r in copies.items()
        }
        assert len(target.search_model_versions("name = 'tiny'")) == 2
    finally:
        server.stop()


def test_without_a_target_it_says_what_to_name(home: Path) -> None:
    out = _migrate_no_target(home)
    assert out.returncode == 2
    assert "--to URI" in out.stderr


def _migrate_no_target(home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GENPAR, "migrate"], env=clean_env(home), capture_output=True, text=True, timeout=120
    )
