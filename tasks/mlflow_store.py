"""MLflow bookkeeping for the pipeline (plain functions; the Prefect tasks call these).

One MLflow run per pipeline run, in an experiment named after the pipeline. The default
store is an absolute SQLite URI under the genpar home; it is created (and migrated) once here,
in the parent, before torchrun ranks or Dask workers touch it (concurrent first opens corrupt
it: shared/STACK.md section 2.2). With SQLite, each experiment's artifact location is pinned
next to the database, because MLflow's default (`./mlartifacts`) depends on the cwd.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from mlflow import MlflowClient
from mlflow.entities import Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from genpar_models.config import PipelineConfig, redact_uri
from genpar_models.errors import ConfigError, GenparError
from genpar_models.util import lease
from genpar_models.util.paths import default_tracking_uri, runs_root

# MLflow's HTTP client retries each call 7 times with exponential backoff (minutes per call
# against a dead server). genpar retries at the task level (Prefect retries, rank 0's backoff,
# log_pending), so each call should fail fast. A user's own settings win.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

TAG_TRAIN_KEY = "genpar.train_key"
TAG_RUN_DIR = "genpar.run_dir"
TAG_RUN_IDENTITY = "genpar.run_identity"  # config/identity.py: run_identity
TAG_FLOW_RUN = "prefect.flow_run_id"
PARAM_VALUE_LIMIT = 6000


class TrackingError(GenparError):
    """The tracking store is unreachable or refused an operation."""


redact = redact_uri  # credentials never reach logs, params or artifacts


def resolve_uri(cfg: PipelineConfig) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else SQLite under the genpar home; absolute,
    and without credentials: a password in $MLFLOW_TRACKING_URI moves to
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD of this process (and so of the
    processes it starts), so the URI genpar stores and logs never holds it."""
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    uri = move_credentials_to_env(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    elif "://" not in uri and not uri.startswith("databricks"):
        raise ConfigError(
            f"tracking.uri={redact(uri)!r}: use an absolute sqlite:////path/mlflow.db, "
            "an http(s):// tracking server, or leave it empty for the genpar default"
        )
    return uri


def move_credentials_to_env(uri: str) -> str:
    """`scheme://user:password@host...` -> `scheme://host...`, the credentials set (unless
    already set) as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, which MLflow's client
    sends as basic auth."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(user))
    if password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(password))
    if os.environ.get("MLFLOW_TRACKING_URI") == uri:
        os.environ["MLFLOW_TRACKING_URI"] = urlunsplit(parts._replace(netloc=host))
    return urlunsplit(parts._replace(netloc=host))


def load_password_secret(cfg: PipelineConfig) -> None:
    """tracking.password_secret (a Prefect Secret block) into MLFLOW_TRACKING_PASSWORD, when
    that is not set already; called where a flow run starts."""
    name = cfg.tracking.password_secret
    if not name or os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return
    from prefect.blocks.system import Secret

    try:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = str(Secret.load(name).get())
    except ValueError as e:
        raise ConfigError(
            f"tracking.password_secret={name!r}: no such Prefect Secret block ({e})"
        ) from e


def _check_http(uri: str) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
            if r.status != 200:
                raise TrackingError(f"MLflow server {redact(uri)} answered /health with {r.status}")
    except (urllib.error.URLError, OSError) as e:
        raise TrackingError(f"MLflow tracking server {redact(uri)} is unreachable: {e}") from None


# SQLite stores this process has opened (created and migrated) already: the next `connect`
# skips the lease and the probe query (8-30 ms each, paid several times per sweep trial).
_OPENED: set[str] = set()


def connect(uri: str) -> MlflowClient:
    """Open (and for SQLite create and migrate) the store once; fail clearly if unreachable."""
    if uri.startswith(("http://", "https://")):
        _check_http(uri)
    if uri in _OPENED and Path(uri[len("sqlite:///") :]).is_file():
        return MlflowClient(tracking_uri=uri)
    with _creation_lock(uri):
        try:
            # The client opens its store at once (MLflow 3: TrackingServiceClient's __init__),
            # which creates and migrates a new SQLite store: inside the lease, not before it.
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
        except MlflowException as e:
            raise TrackingError(f"MLflow store {redact(uri)} is not usable: {e}") from None
    if uri.startswith("sqlite:///"):
        _OPENED.add(uri)
    return client


@contextlib.contextmanager
def _creation_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, a lease on `<db>.lease` while the store is opened: two pipelines
    sharing a GENPAR_HOME that start together otherwise race in MLflow's schema migration
    ("table _alembic_tmp_tags already exists", seen in CI). A lease, not flock, so that hosts
    sharing the genpar home exclude each other too (genpar_models/util/lease.py)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///") :])
    with lease.held(db.with_name(db.name + ".lease"), what="opening the MLflow store"):
        yield


def artifact_location(uri: str, experiment: str) -> str | None:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "artifacts" / experiment).as_uri()
    return None  # a tracking server decides (its --default-artifact-root)


def ensure_experiment(client: MlflowClient, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {name!r} is deleted; restore it or rename")
        return exp.experiment_id
    try:
        return client.create_experiment(
            name, artifact_location=artifact_location(uri, name), tags={"genpar": "1"}
        )
    except MlflowException:  # created concurrently by another run: use theirs
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def run_dir_for(experiment: str, run_id: str) -> Path:
    return runs_root() / experiment / run_id


def resumable_runs(
    client: MlflowClient, experiment_id: str, train_key: str
) -> list[tuple[str, Path]]:
    """Unfinished runs of the same training job that left checkpoints, newest first."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_TRAIN_KEY}` = '{train_key}'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    out = []
    for r in runs:
        run_dir = Path(r.data.tags.get(TAG_RUN_DIR, ""))
        if r.info.status != "FINISHED" and any((run_dir / "checkpoints").glob("ckpt-*.json")):
            out.append((r.info.run_id, run_dir))
    return out


def create_run(client: MlflowClient, experiment_id: str, *, name: str, tags: dict[str, str]) -> str:
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def log_params(
    client: MlflowClient,
    run_id: str,
    params: dict[str, Any],
    existing: dict[str, str] | None = None,
    tags: dict[str, Any] | None = None,
) -> list[str]:
    """Log params not yet on the run; return keys whose existing value differs (not re-logged).

    `existing`: the run's params when the caller has them (a run just created has none; a
    search result carries them), saving a `get_run`. `tags` go in the same first batch."""
    if existing is None:
        existing = client.get_run(run_id).data.params
    new, changed = [], []
    for key, value in params.items():
        text = "None" if value is None else str(value)
        text = text[:PARAM_VALUE_LIMIT]
        if key not in existing:
            new.append(Param(key, text))
        elif existing[key] != text:
            changed.append(key)
    batch_tags = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
    for i in range(0, max(len(new), 1) if new or batch_tags else 0, 100):  # <= 100 a batch
        client.log_batch(run_id, params=new[i : i + 100], tags=batch_tags if i == 0 else [])
    return changed


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def log_metrics(
    client: MlflowClient,
    run_id: str,
    metrics: dict[str, float],
    step: int = 0,
    tags: dict[str, Any] | None = None,
) -> None:
    """Log metrics at `step` (and `tags`, <= 100, in the first batch: one call, not two)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    batch_tags = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
    for i in range(0, max(len(batch), 1) if batch or batch_tags else 0, 1000):
        client.log_batch(run_id, metrics=batch[i : i + 1000], tags=batch_tags if i == 0 else [])


def finish(client: MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.from_string(status)))


def runs_of_flow_run(client: MlflowClient, flow_run_id: str) -> list[str]:
    """MLflow runs tagged with a Prefect flow run id, across genpar experiments."""
    exps = [e.experiment_id for e in client.search_experiments(filter_string="tags.genpar = '1'")]
    if not exps:
        return []
    runs = client.search_runs(exps, filter_string=f"tags.`{TAG_FLOW_RUN}` = '{flow_run_id}'")
    return [r.info.run_id for r in runs]


def log_pending(
    uri: str,
    run_id: str,
    pending: list[list[Any]],
    *,
    where: Path,
    delays_s: tuple[float, ...] = (2, 5, 10, 20, 30),
) -> None:
    """Send metrics that training could not deliver, retrying with backoff.

    Raises:
        TrackingError: still unreachable; names the server and the file holding the metrics.
    """
    from mlflow.entities import Metric

    batch = [Metric(k, float(v), int(t), int(s)) for k, v, t, s in pending]
    error: Exception | None = None
    for delay in (0.0, *delays_s):
        time.sleep(delay)
        try:
            client = MlflowClient(tracking_uri=uri)
            for i in range(0, len(batch), 1000):
                client.log_batch(run_id, metrics=batch[i : i + 1000])
            return
        except Exception as e:  # noqa: BLE001 - any failure here means: try again later
            error = e
    raise TrackingError(
        f"training finished and its checkpoint is kept, but {len(batch)} metrics could not "
        f"reach MLflow at {redact(uri)} ({error}); they are saved in {where}. Run the same "
        "command again once the server is back: the run resumes and records them."
    )
