"""Rank 0's metric sink for an MLflow server: its REST `runs/log-batch`, from the standard library.

Importing mlflow costs rank 0 about 0.9 s of CPU on 2 cores before its first step, and rank 1
waits for it at the first collective (issue 18): the whole job starts later. Against a server
the sink needs one endpoint, so it speaks it directly: `POST {uri}/api/2.0/mlflow/runs/log-batch`
with MLflow's JSON (non-finite values as "NaN"/"Infinity", as protobuf's JSON mapping writes
them), authenticated as MLflow's client would from the environment (MLFLOW_TRACKING_USERNAME
and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN; MLFLOW_TRACKING_INSECURE_TLS,
MLFLOW_TRACKING_SERVER_CERT_PATH; MLFLOW_HTTP_REQUEST_TIMEOUT). Whatever else MLflow's client
can be configured with (an auth plugin, a client certificate, a credentials file, credentials in
the URI) keeps MlflowClient (`speaks_rest` says which); so does GENPAR_REST_SINK=0.

A failed request is tried once more after half a second (a dropped connection, a 5xx), then
left to the sink's own backoff (sink.py): training never waits minutes on a server that is away.
"""

from __future__ import annotations

import base64
import json
import math
import os
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from genpar_models.train.sink import BatchSink, Row

ENDPOINT = "/api/2.0/mlflow/runs/log-batch"
# MLflow client settings this sink does not implement: with any of them, MlflowClient.
_UNSUPPORTED_ENV = ("MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_CLIENT_CERT_PATH")


def speaks_rest(uri: str) -> bool:
    """Whether rank 0 can log to `uri` without MLflow: a plain http(s) server URI, configured
    only with what this module implements."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" in parts.netloc:
        return False
    if os.environ.get("GENPAR_REST_SINK", "1") == "0":
        return False
    if any(os.environ.get(k) for k in _UNSUPPORTED_ENV):
        return False
    # MLflow reads a username/password from this file when the environment has none
    return not (Path.home() / ".mlflow" / "credentials").exists()


def _json_value(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


class RestSink(BatchSink):
    """Flushes to an existing MLflow run through the server's REST API."""

    def __init__(self, uri: str, run_id: str) -> None:
        super().__init__()
        self._url = uri.rstrip("/") + ENDPOINT
        self._run_id = run_id
        self._headers = {"Content-Type": "application/json"}
        user, password = (
            os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        )
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if user and password:
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {basic}"
        elif token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout_s = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120"))
        self._context = None
        if uri.startswith("https"):
            insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
            ca = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
            self._context = ssl.create_default_context(cafile=ca or None)
            if insecure:
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE

    def _send(self, metrics: list[Row], tags: dict[str, str]) -> None:
        body = {
            "run_id": self._run_id,
            "metrics": [
                {"key": k, "value": _json_value(v), "timestamp": t, "step": st}
                for k, v, t, st in metrics
            ],
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        data = json.dumps(body).encode()
        for attempt in (0, 1):
            try:
                self._post(data)
                return
            except OSError as e:  # URLError, HTTPError, timeouts, refused connections
                status = getattr(e, "code", None)
                if attempt or (status is not None and status < 500 and status != 429):
                    raise
                time.sleep(0.5)

    def _post(self, data: bytes) -> None:
        request = urllib.request.Request(self._url, data=data, headers=self._headers)
        try:
            with urllib.request.urlopen(
                request, timeout=self._timeout_s, context=self._context
            ) as response:
                response.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:500]
            raise urllib.error.HTTPError(
                e.url, e.code, f"{e.code} {e.reason} from {self._url}: {detail}", e.headers, None
            ) from None
