"""Metric sinks for the training ranks: rank 0 logs to MLflow in batches, the others do nothing.

The only MLflow calls inside the library live here and in rest_sink.py (rank 0's sink for an
MLflow server, which posts the same batches without importing mlflow). For any other store (the
embedded SQLite default) rank 0 on the flow's node appends each batch as a JSON line to the
file the launcher names in GENPAR_METRICS_RELAY (`FileSink`), and the flow process, which has
mlflow imported and the store open already, logs it (tasks/metrics_relay.py): importing mlflow
and opening the SQLite store cost rank 0 1.7 s before its first step, while rank 1 waited.

Metrics are buffered and sent with one `log_batch` when the trainer commits a checkpoint (and
at the end), so after an elastic restart the steps redone since that checkpoint are logged
once, not twice: the charts stay monotone. The batch is also saved in the checkpoint's
sidecar and replayed on resume, which closes the window between writing a checkpoint and
committing its metrics. If the tracking server is unreachable, the buffer is kept and retried
at the next commit; training never stops because of tracking.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Protocol

log = logging.getLogger(__name__)

MLFLOW_BATCH_LIMIT = 1000  # MLflow accepts at most 1000 metrics per log_batch call
MAX_BUFFERED = 200_000


class MetricSink(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def pending(self) -> list[list[Any]]: ...
    def replay(self, pending: list[list[Any]]) -> None: ...
    def commit(self, *, force: bool = False) -> bool: ...


class NullSink:
    """What every rank but 0 gets: accepts everything, records nothing."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def pending(self) -> list[list[Any]]:
        return []

    def replay(self, pending: list[list[Any]]) -> None:
        pass

    def commit(self, *, force: bool = False) -> bool:
        return True


Row = tuple[str, float, int, int]  # key, value, timestamp (ms), step


class BatchSink:
    """Buffers metrics and tags and sends them at each commit (`_send`, by the subclass)."""

    def __init__(self) -> None:
        self._metrics: list[Row] = []
        self._tags: dict[str, str] = {}
        self.unflushed = 0
        self._retry_at = 0.0  # monotonic time before which a failed server is not retried
        self._backoff_s = 0.0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._metrics.extend((key, float(value), now, step) for key, value in metrics.items())
        if len(self._metrics) > MAX_BUFFERED:  # tracking down for very long: keep the newest
            del self._metrics[: len(self._metrics) - MAX_BUFFERED]

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._tags.update({k: str(v) for k, v in tags.items()})

    def pending(self) -> list[list[Any]]:
        """The buffered metrics as [key, value, timestamp, step] rows (for the checkpoint)."""
        return [list(m) for m in self._metrics]

    def replay(self, pending: list[list[Any]]) -> None:
        """Re-buffer metrics saved with a checkpoint. The process may have died after the
        checkpoint but before its commit; re-logging an identical metric (same key, step,
        timestamp and value) is a no-op in MLflow's SQL stores, so this is exactly-once."""
        self._metrics[:0] = [(str(k), float(v), int(t), int(st)) for k, v, t, st in pending]

    def commit(self, *, force: bool = False) -> bool:
        """Send everything buffered; on failure keep it for a later commit and return False.

        After a failure the server is left alone for a growing interval (10 s doubling to
        5 min), so a dead server costs training one timeout per interval, not per checkpoint.
        """
        if not force and time.monotonic() < self._retry_at:
            self.unflushed = len(self._metrics)
            return False
        try:
            if self._tags:
                self._send([], dict(self._tags))
                self._tags.clear()
            while self._metrics:
                chunk = self._metrics[:MLFLOW_BATCH_LIMIT]
                self._send(chunk, {})
                del self._metrics[: len(chunk)]
        except Exception as e:  # noqa: BLE001 - any tracking failure must not stop training
            log.warning(
                "MLflow logging failed (%s); %d metrics kept for retry", e, len(self._metrics)
            )
            self.unflushed = len(self._metrics)
            self._backoff_s = min(max(2 * self._backoff_s, 10.0), 300.0)
            self._retry_at = time.monotonic() + self._backoff_s
            return False
        self.unflushed, self._backoff_s, self._retry_at = 0, 0.0, 0.0
        return True

    def _send(self, metrics: list[Row], tags: dict[str, str]) -> None:
        raise NotImplementedError


class MlflowSink(BatchSink):
    """Flushes to an existing MLflow run with MlflowClient.log_batch (any tracking URI)."""

    def __init__(self, uri: str, run_id: str) -> None:
        from mlflow import MlflowClient  # imported lazily: only rank 0 pays for it

        super().__init__()
        self._client = MlflowClient(tracking_uri=uri)
        self._run_id = run_id

    def _send(self, metrics: list[Row], tags: dict[str, str]) -> None:
        from mlflow.entities import Metric, RunTag

        self._client.log_batch(
            self._run_id,
            metrics=[Metric(key=k, value=v, timestamp=t, step=st) for k, v, t, st in metrics],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )


class FileSink(BatchSink):
    """Appends each batch as one JSON line (`{"metrics": [[key, value, ms, step], ...],
    "tags": {...}}`) to the relay file the flow process logs from (tasks/metrics_relay.py).
    Re-sent batches (a resume's replay) are identical metrics: no-ops in MLflow's SQL stores."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path
        with open(path, "ab+") as f:  # a rank killed mid-line left a fragment: end it there
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def _send(self, metrics: list[Row], tags: dict[str, str]) -> None:
        line = json.dumps({"metrics": [list(m) for m in metrics], "tags": tags}) + "\n"
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one append: a reader sees whole lines or none
        finally:
            os.close(fd)


RELAY_ENV = "GENPAR_METRICS_RELAY"


def make_sink(is_main: bool, uri: str | None, run_id: str | None) -> MetricSink:
    """Rank 0's sink: MLflow's REST API directly for a plain http(s) server (rest_sink.py), the
    flow's relay file when the launcher set one (GENPAR_METRICS_RELAY), else MlflowClient;
    every other rank's records nothing."""
    if not (is_main and uri and run_id):
        return NullSink()
    from genpar_models.train.rest_sink import RestSink, speaks_rest

    if speaks_rest(uri):
        return RestSink(uri, run_id)
    relay = os.environ.get(RELAY_ENV, "")  # "0": the user turned the relay off
    return FileSink(relay) if relay not in ("", "0") else MlflowSink(uri, run_id)
