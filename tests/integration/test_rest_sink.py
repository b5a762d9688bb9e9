"""Rank 0's REST sink (genpar_models/train/rest_sink.py) against a real `mlflow server`: what
it sends is what MlflowClient reads back, and a refused batch is kept, not lost."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from genpar_models.train.rest_sink import RestSink, speaks_rest
from genpar_models.train.sink import MlflowSink, make_sink
from tests.helpers import MlflowServer


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, int, str]]:
    return [(m.step, m.timestamp, repr(m.value)) for m in client.get_metric_history(run_id, key)]


def test_metrics_and_tags_arrive_as_mlflow_client_logs_them(mlflow_server: MlflowServer) -> None:
    client = MlflowClient(mlflow_server.uri)
    experiment = client.create_experiment("rest")
    runs = {}
    for kind in ("rest", "client"):
        run_id = client.create_run(experiment).info.run_id
        sink = (
            make_sink(True, mlflow_server.uri, run_id)
            if kind == "rest"
            else MlflowSink(mlflow_server.uri, run_id)
        )
        assert isinstance(sink, RestSink) == (kind == "rest")
        sink.set_tags({"genpar.world_size": 2})
        for step, loss in enumerate([1.5, 0.25, math.nan, math.inf, -math.inf], start=1):
            sink.log_metrics({"train/loss": loss, "train/kl": step / 10}, step)
        sink.replay([["train/loss", 3.0, 1, 0]])  # a checkpoint's pending row goes first
        sink._metrics = [(k, v, 1000 + st, st) for k, v, _, st in sink._metrics]  # same times
        assert sink.commit() and sink.unflushed == 0 and sink.pending() == []
        runs[kind] = run_id
    rest, reference = runs["rest"], runs["client"]
    for key in ("train/loss", "train/kl"):
        assert _history(client, rest, key) == _history(client, reference, key)
    assert [m.step for m in client.get_metric_history(rest, "train/loss")] == [0, 1, 2, 3, 4, 5]
    assert client.get_run(rest).data.tags["genpar.world_size"] == "2"


def test_a_refused_batch_is_kept_for_the_next_commit(mlflow_server: MlflowServer) -> None:
    sink = RestSink(mlflow_server.uri, "0" * 32)  # no such run: the server answers 404
    sink.log_metrics({"train/loss": 1.0}, 5)
    assert sink.commit() is False
    assert sink.pending() == [["train/loss", 1.0, sink.pending()[0][2], 5]]
    assert sink.unflushed == 1


def test_anything_but_a_plain_server_keeps_mlflows_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert speaks_rest("http://127.0.0.1:5000") and speaks_rest("https://mlflow.example/x")
    assert not speaks_rest(f"sqlite:///{tmp_path}/mlflow.db")
    assert not speaks_rest("http://user:secret@127.0.0.1:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "my_plugin")
    assert not speaks_rest("http://127.0.0.1:5000")
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH")
    monkeypatch.setenv("GENPAR_REST_SINK", "0")
    assert not speaks_rest("http://127.0.0.1:5000")
    monkeypatch.delenv("GENPAR_REST_SINK")
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text("[mlflow]\nmlflow_tracking_username=u\n")
    assert not speaks_rest("http://127.0.0.1:5000")
    db = f"sqlite:///{tmp_path}/mlflow.db"
    assert isinstance(make_sink(True, db, "r"), MlflowSink)


def test_credentials_from_the_environment_go_with_every_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What MLflow's client sends for MLFLOW_TRACKING_USERNAME/PASSWORD (the team stack's
    basic auth) or MLFLOW_TRACKING_TOKEN, seen by a server on 127.0.0.1 that records requests."""
    import base64
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[tuple[str, str | None, dict]] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers.get("Authorization"), body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{httpd.server_address[1]}/prefix/"
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "genpar")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
        basic = RestSink(uri, "run1")
        basic.log_metrics({"train/loss": 0.5}, 3)
        assert basic.commit()
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
        bearer = RestSink(uri, "run1")
        bearer.set_tags({"a": 1})
        assert bearer.commit()
    finally:
        httpd.shutdown()
    token = base64.b64encode(b"genpar:s3cret").decode()
    assert [(path, auth) for path, auth, _ in seen] == [
        ("/prefix/api/2.0/mlflow/runs/log-batch", f"Basic {token}"),
        ("/prefix/api/2.0/mlflow/runs/log-batch", "Bearer tok"),
    ]
    first, second = seen[0][2], seen[1][2]
    assert first["run_id"] == "run1" and first["tags"] == []
    assert [(m["key"], m["value"], m["step"]) for m in first["metrics"]] == [("train/loss", 0.5, 3)]
    assert second["metrics"] == [] and second["tags"] == [{"key": "a", "value": "1"}]
