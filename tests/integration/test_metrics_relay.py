"""Rank 0's metrics through the flow process (tasks/metrics_relay.py): a real SQLite MLflow
store, real torchrun jobs, the relay file as rank 0 writes it."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from genpar_models.config import PipelineConfig
from genpar_models.train.runspec import RunSpec, TrackingTarget
from genpar_models.train.sink import RELAY_ENV, FileSink
from tasks.metrics_relay import MetricsRelay, relay_path, wanted
from tests.helpers import launch, make_shard_set


def _store(tmp_path: Path, template: Path, name: str) -> tuple[str, MlflowClient, str]:
    db = tmp_path / f"{name}.db"
    shutil.copy(template, db)
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    return uri, client, client.create_run(client.create_experiment(name)).info.run_id


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_relay_logs_whole_lines_once_and_what_a_killed_flow_left(
    tmp_path: Path, mlflow_template: Path
) -> None:
    """Lines are logged while the job runs, a line still being written waits, a killed rank's
    fragment is skipped, and a new relay (the flow started again) logs what the old one had
    not, and nothing twice."""
    uri, client, run_id = _store(tmp_path, mlflow_template, "relay")
    path = relay_path(tmp_path / "run")
    relay = MetricsRelay(uri, run_id, path)
    with relay:
        sink = FileSink(str(path))
        sink.log_metrics({"train/loss": 2.0, "train/nan": math.nan}, step=5)
        sink.set_tags({"genpar.note": "hello"})
        sink.commit()
        deadline = time.monotonic() + 10
        while not client.get_metric_history(run_id, "train/loss"):  # live, before the end
            assert time.monotonic() < deadline, "the relay logged nothing while running"
            time.sleep(0.1)
        with open(path, "ab") as f:
            f.write(b'{"metrics": [["train/loss", 9.0, 1, 7]]')  # a rank killed mid-line
    assert client.get_run(run_id).data.tags["genpar.note"] == "hello"
    assert math.isnan(client.get_metric_history(run_id, "train/nan")[0].value)
    assert _history(client, run_id, "train/loss") == [(5, 2.0)]  # the fragment never counted

    sink = FileSink(str(path))  # the restarted rank ends the fragment before appending
    sink.log_metrics({"train/loss": 1.0}, step=10)
    sink.commit()
    assert path.read_bytes().count(b"\n") == 4  # tags, metrics, the ended fragment, metrics
    MetricsRelay(uri, run_id, path).drain()  # the next launch of the run, in a new flow
    assert _history(client, run_id, "train/loss") == [(5, 2.0), (10, 1.0)]
    path.with_name(path.name + ".offset").unlink()  # logged, but the offset never moved
    again = MetricsRelay(uri, run_id, path)
    again.drain()
    assert again.logged == 3 and _history(client, run_id, "train/loss") == [(5, 2.0), (10, 1.0)]


def test_relay_is_for_stores_rank_0_would_open_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    assert wanted("sqlite:////tmp/x/mlflow.db")
    assert not wanted("http://127.0.0.1:5000")  # rank 0 posts to a server itself (rest_sink)
    assert not wanted(None)
    monkeypatch.setenv(RELAY_ENV, "0")
    assert not wanted("sqlite:////tmp/x/mlflow.db")


@pytest.mark.timeout(240)
def test_rank_0_through_the_flow_logs_what_it_logged_itself(
    tmp_path: Path, tiny: PipelineConfig, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same 2-rank job with the relay and with rank 0 opening the SQLite store itself
    (GENPAR_METRICS_RELAY=0): the same metrics at the same steps with the same values, and
    result.json says which sink ran."""
    train = tiny.train.model_copy(update={"max_steps": 20, "log_every_steps": 5})
    cfg = tiny.model_copy(update={"train": train})
    shards = str(make_shard_set(tmp_path / "shards", cfg, n=300))
    logged: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for relay in ("1", "0"):
        monkeypatch.setenv(RELAY_ENV, relay)
        uri, client, run_id = _store(tmp_path, mlflow_template, f"relay{relay}")
        spec = RunSpec(
            config=cfg,
            shards_dir=shards,
            run_dir=str(tmp_path / f"run{relay}"),
            train_key="k",
            tracking=TrackingTarget(uri=uri, run_id=run_id),
        )
        launch(spec)
        result = json.loads(spec.result_path.read_text())
        assert result["metrics_sink"] == ("FileSink" if relay == "1" else "MlflowSink")
        assert result["metrics_flushed"] and not result["pending_metrics"]
        keys = sorted(client.get_run(run_id).data.metrics)
        logged[relay] = {k: _history(client, run_id, k) for k in keys if "per_s" not in k}
    assert relay_path(tmp_path / "run1").stat().st_size > 0
    assert not relay_path(tmp_path / "run0").exists()
    skip = {"train/wall_s"}  # timings differ run to run
    assert {k: v for k, v in logged["1"].items() if k not in skip} == {
        k: v for k, v in logged["0"].items() if k not in skip
    }
    assert [s for s, _ in logged["1"]["train/loss"]] == [5, 10, 15, 20]
