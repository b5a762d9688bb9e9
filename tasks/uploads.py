"""Uploads to a run's artifact store, retried for a bounded time, failing by name.

An artifact store that is away (an S3 outage behind MLflow's proxy, a full disk) must neither
hang a run for MLflow's own retry schedule (minutes per call) nor lose anything: the caller's
files stay where they are, and the error names the store, the run, what was being stored and
where the local files are kept, so a re-run of the same command (which resumes the run) logs
them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from genpar_models.errors import GenparError
from genpar_models.util.env import env_seconds
from tasks.mlflow_store import TrackingError, redact

# How long an artifact upload is retried before the run fails naming the artifact store.
ARTIFACT_RETRY_ENV = "GENPAR_ARTIFACT_RETRY_S"
ARTIFACT_RETRY_DEFAULT_S = 120.0
# Where a proxying MLflow server keeps artifacts (its client cannot ask): named in errors.
ARTIFACT_STORE_ENV = "GENPAR_ARTIFACT_STORE"


class ArtifactStoreError(TrackingError):
    """The run's artifact store (behind MLflow) did not take an artifact in the retry budget."""


def artifact_retry_s() -> float:
    return env_seconds(ARTIFACT_RETRY_ENV, ARTIFACT_RETRY_DEFAULT_S)


def with_artifact_retry(
    client: MlflowClient, run_id: str, what: str, send: Any, *, kept: Any = None
) -> Any:
    """`send()` (an upload to the run's artifact store), retried with backoff for up to
    GENPAR_ARTIFACT_RETRY_S seconds (default 120).

    Raises:
        ArtifactStoreError: still refused at the deadline; names the store, the run, what
            was being stored and where the local files are kept (`kept`).
    """
    from tasks.common import run_logger  # Prefect: only once an upload runs (CLI start-up)

    budget = artifact_retry_s()
    deadline = time.monotonic() + budget
    delay, attempts = 1.0, 0
    while True:
        attempts += 1
        try:
            return send()
        except (GenparError, FileNotFoundError, PermissionError, IsADirectoryError):
            raise  # not the store's fault: the same every time
        except Exception as e:  # noqa: BLE001 - the store or the network: try again
            error = e
        if time.monotonic() + delay > deadline:
            break
        run_logger().warning(
            "could not store %s (attempt %d: %s); retrying in %.0f s",
            what, attempts, _short(error), delay,
        )  # fmt: skip
        time.sleep(delay)
        delay = min(delay * 2, 15.0)
    try:
        where = client.get_run(run_id).info.artifact_uri
    except Exception:  # noqa: BLE001 - the error below names the run either way
        where = f"the artifacts of run {run_id}"
    behind = os.environ.get(ARTIFACT_STORE_ENV)  # what MLflow's proxy writes to, when known
    store_name = f"{behind}, behind {where}" if behind else where
    keep = f" Nothing is lost: the checkpoint and every local file stay in {kept}." if kept else ""
    if kept is None:
        keep = " Nothing is lost: the files stay where they are."
    raise ArtifactStoreError(
        f"the artifact store ({store_name}) did not take {what} in {budget:.0f} s "
        f"({attempts} attempts) for MLflow run {run_id} at {redact(client.tracking_uri)}: "
        f"{_short(error)}.{keep} Run the same command again once the store is back: the run "
        f"resumes and logs them ({ARTIFACT_RETRY_ENV} sets the wait)."
    ) from error


def _short(error: BaseException, limit: int = 400) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def upload(
    client: MlflowClient, run_id: str, local: str | Path, artifact_path: str | None = None,
    *, kept: Any = None,
) -> None:  # fmt: skip
    """Log a file, or a directory's files, as artifacts of the run (`with_artifact_retry`)."""
    path = Path(local)
    if not path.exists():  # the caller's mistake, not the store's: never retried
        raise FileNotFoundError(f"{path}: no such file or directory to log as an artifact")
    send = client.log_artifacts if path.is_dir() else client.log_artifact
    if path.is_dir():
        what = f"the files of {path} (as {artifact_path or '.'}/)"
    else:
        what = f"{artifact_path}/{path.name}" if artifact_path else path.name
    with_artifact_retry(
        client, run_id, what, lambda: send(run_id, str(path), artifact_path), kept=kept
    )  # fmt: skip
