"""The flow process logs rank 0's metrics to a store the ranks would otherwise open themselves.

For a tracking store that is not a plain MLflow server (the embedded SQLite default, or any URI
rest_sink.py does not speak), rank 0 on the flow's node appends its batches to a relay file
(genpar_models/train/sink.py, `FileSink`) instead of importing mlflow and opening the store:
that cost rank 0 1.7 s before its first step on 2 cores (import 1.1 s, SQLite store 0.6 s),
and rank 1 waited for it at the first collective. The flow process has mlflow imported and the
store open already and only waits for torchrun, so a thread here logs each new line while the
job runs (within `POLL_S` of rank 0's commit: the MLflow UI's charts stay live) and the rest
when it ends, before the task reads result.json.

The relay file and the offset logged up to live in the run's `torchrun/` directory, so a flow
killed between a rank's write and its logging leaves the lines for the next launch of that run
to log; a line logged twice (a crash after logging, before the offset moved; a resume's replay)
holds identical metrics, which MLflow's SQL stores keep once. GENPAR_METRICS_RELAY=0 makes rank
0 log to the store itself, as before.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from genpar_models.train.rest_sink import speaks_rest
from genpar_models.train.sink import MLFLOW_BATCH_LIMIT, RELAY_ENV
from genpar_models.util import atomic
from tasks import mlflow_store as store

log = logging.getLogger(__name__)

POLL_S = 0.5
TAG_BATCH_LIMIT = 100  # MLflow's limit of tags per log_batch


def relay_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "torchrun" / "metrics-relay.jsonl"


def wanted(uri: str | None) -> bool:
    """Whether rank 0's metrics for `uri` go through the flow process."""
    return bool(uri) and not speaks_rest(uri) and os.environ.get(RELAY_ENV, "1") != "0"


class MetricsRelay:
    """Logs the relay file's complete lines to `run_id` in `uri`, from `offset` on."""

    def __init__(self, uri: str, run_id: str, path: Path) -> None:
        self.uri, self.run_id, self.path = uri, run_id, path
        self._offset_path = path.with_name(path.name + ".offset")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self.logged = 0  # metrics logged by this relay (a line logged twice counts twice)

    def env(self) -> dict[str, str]:
        """What the ranks' environment needs: where rank 0 appends."""
        return {RELAY_ENV: str(self.path)}

    def __enter__(self) -> MetricsRelay:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._thread = threading.Thread(target=self._loop, name="metrics-relay", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is None:
            self.drain(final=True)
            return
        try:  # the job failed: log what it got to, and let its own error be the one raised
            self.drain()
        except Exception as e:  # noqa: BLE001 - the lines stay for the run's next launch
            log.warning("could not log rank 0's last metrics from %s (%s)", self.path, e)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.drain()
            except Exception as e:  # noqa: BLE001 - the end of the job tries again, with retries
                log.warning(
                    "logging rank 0's metrics from %s failed (%s); will retry", self.path, e
                )

    def _offset(self) -> int:
        try:
            return int(self._offset_path.read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def _save_offset(self, offset: int) -> None:
        atomic.write_text(self._offset_path, str(offset))

    def drain(self, *, final: bool = False) -> None:
        """Log every complete line after the saved offset, then move the offset past them.

        With `final`, metrics that still cannot be logged go through store.log_pending's
        retries, which raise TrackingError naming the store and this file."""
        offset = self._offset()
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next pass
        if end == 0:
            return
        metrics: list[list[Any]] = []
        tags: dict[str, str] = {}
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                batch = json.loads(line)
                metrics += batch["metrics"]
                tags.update(batch["tags"])
            except (ValueError, KeyError, TypeError) as e:  # a killed rank's fragment
                log.warning(
                    "%s: skipped an unreadable line after byte %d (%s)", self.path, offset, e
                )
        try:
            self._log(metrics, tags)
        except Exception:
            if not final:
                raise
            store.log_pending(self.uri, self.run_id, metrics, where=self.path)
            self._log([], tags)
        self.logged += len(metrics)
        self._save_offset(offset + end)

    def _log(self, metrics: list[list[Any]], tags: dict[str, str]) -> None:
        from mlflow.entities import Metric, RunTag

        if self._client is None:
            self._client = store.connect(self.uri)
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), TAG_BATCH_LIMIT):
            self._client.log_batch(self.run_id, tags=items[i : i + TAG_BATCH_LIMIT])
        rows = [Metric(str(k), float(v), int(t), int(s)) for k, v, t, s in metrics]
        for i in range(0, len(rows), MLFLOW_BATCH_LIMIT):
            self._client.log_batch(self.run_id, metrics=rows[i : i + MLFLOW_BATCH_LIMIT])
