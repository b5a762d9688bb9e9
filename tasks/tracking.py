"""Prefect tasks that open, feed and close the pipeline's MLflow run."""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path
from typing import Any

from prefect import runtime, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from genpar_models.config import PipelineConfig, dump_config
from genpar_models.data.manifest import read_manifest
from genpar_models.models.custom.loader import network_lineage
from genpar_models.util import atomic
from genpar_models.util.lineage import lineage, lineage_tags
from tasks import mlflow_store as store
from tasks import registry, runlock, served_model, uploads
from tasks.common import retry_unless_user_error, run_logger


class RunHandle(BaseModel):
    """The small value that names a pipeline run for the later stages."""

    model_config = ConfigDict(frozen=True)

    uri: str
    experiment_id: str
    run_id: str
    run_dir: str
    train_key: str
    resumed: bool = False


def _flow_run_tags() -> dict[str, str]:
    tags = {}
    if runtime.flow_run.id:
        tags = {
            store.TAG_FLOW_RUN: str(runtime.flow_run.id),
            "prefect.flow_run_name": str(runtime.flow_run.name),
        }
        if runtime.flow_run.ui_url:
            tags["prefect.flow_run_url"] = str(runtime.flow_run.ui_url)
    return tags


def _open_run(config: PipelineConfig, uri: str, shards_dir: str) -> tuple[Any, str, Path, bool]:
    client = store.connect(uri)
    exp_id = store.ensure_experiment(client, uri, config.experiment_name)
    key = config.train_key(read_manifest(shards_dir).key)
    if config.train.resume:
        for run_id, run_dir in store.resumable_runs(client, exp_id, key):
            if runlock.try_acquire(run_dir):
                return client, run_id, run_dir, True
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{config.model.name}-{config.data.source}-{stamp}"
    run_id = store.create_run(client, exp_id, name=name, tags={store.TAG_TRAIN_KEY: key})
    run_dir = store.run_dir_for(config.experiment_name, run_id)
    runlock.try_acquire(run_dir)
    return client, run_id, run_dir, False


@task(
    name="start-run",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def start_run(config: PipelineConfig, uri: str, shards_dir: str) -> RunHandle:
    """Open the MLflow run (or reopen an interrupted one of the same job), log params and tags."""
    client, run_id, run_dir, resumed = _open_run(config, uri, shards_dir)
    manifest = read_manifest(shards_dir)
    changed = store.log_params(client, run_id, config.flat())
    store.set_tags(
        client,
        run_id,
        {
            store.TAG_RUN_DIR: str(run_dir),
            store.TAG_RUN_IDENTITY: config.run_identity(),
            **lineage_tags(lineage() | network_lineage(config.model.name)),
            "genpar.shards_key": manifest.key,
            "genpar.model": config.model.name,
            "genpar.dataset": config.data.source,
            **_flow_run_tags(),
            **({"genpar.params_changed_on_resume": ",".join(changed)} if changed else {}),
        },
    )
    if resumed:
        client.update_run(run_id, status="RUNNING")
    atomic.write_text(run_dir / "config.yaml", dump_config(config.redacted()))
    log = run_logger()
    log.info("%s MLflow run %s (run dir %s)", "resuming" if resumed else "started", run_id, run_dir)
    return RunHandle(
        uri=uri,
        experiment_id=client.get_run(run_id).info.experiment_id,
        run_id=run_id,
        run_dir=str(run_dir),
        train_key=config.train_key(manifest.key),
        resumed=resumed,
    )


@task(
    name="record-dataset",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def record_dataset(run: RunHandle, shards_dir: str) -> None:
    """Log the shard manifest as the run's dataset input, plus counts and skipped samples
    (once: a resumed run has them), and the manifest as an artifact."""
    import pandas as pd
    from mlflow.data import from_pandas
    from mlflow.entities import DatasetInput, InputTag

    client = store.connect(run.uri)
    manifest = read_manifest(shards_dir)
    rows = [
        {"split": s, "shard": e.images, "count": e.count, "sha256": e.sha256_images}
        for s, entry in manifest.splits.items()
        for e in entry.shards
    ]
    with warnings.catch_warnings():  # schema hints and source guessing: noise for a manifest
        warnings.simplefilter("ignore", UserWarning)
        ds = from_pandas(
            pd.DataFrame(rows),
            source=shards_dir,
            name=f"shards-{manifest.key}",
            digest=manifest.key[:16],
        )._to_mlflow_entity()
    counts = {
        **{f"data/{s}_samples": float(e.count) for s, e in manifest.splits.items()},
        "data/skipped_samples": float(manifest.skipped["count"]),
    }
    # a resumed run (same train key, hence the same shards) recorded them when it started
    recorded = client.get_run(run.run_id).data.metrics if run.resumed else {}
    if not counts.keys() <= recorded.keys():
        context = InputTag("mlflow.data.context", "training")
        client.log_inputs(run.run_id, datasets=[DatasetInput(ds, tags=[context])])
        store.log_metrics(client, run.run_id, counts)
    store.set_tags(
        client, run.run_id, {"genpar.source_fingerprint": manifest.source["fingerprint"]}
    )
    uploads.upload(client, run.run_id, Path(shards_dir) / "manifest.json", "data")


@task(
    name="log-artifacts",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def log_artifacts(
    config: PipelineConfig, run: RunHandle, artifacts: dict[str, str], metrics: dict[str, float]
) -> None:
    """Log the final metrics and every artifact (local file or directory -> artifact path)."""
    client = store.connect(run.uri)
    store.log_metrics(client, run.run_id, metrics, step=config.train.max_steps)
    kept = run.run_dir
    uploads.upload(client, run.run_id, Path(run.run_dir) / "config.yaml", kept=kept)
    for artifact_path, local in artifacts.items():
        if Path(local).exists():
            uploads.upload(client, run.run_id, local, artifact_path or None, kept=kept)


@task(
    name="register-model",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def register_model(config: PipelineConfig, run: RunHandle, metrics: dict[str, float]) -> str:
    """Log the run's model as an MLflow pyfunc model and register it as a new version (tagged
    with its eval metrics, lineage and run identity), once: a retry or a resumed run gets the
    version it already has."""
    client = store.connect(run.uri)
    tags = {k: f"{v:.6g}" for k, v in metrics.items() if k.startswith("eval/")}
    tags |= lineage_tags(lineage() | network_lineage(config.model.name))
    tags |= {store.TAG_RUN_IDENTITY: config.run_identity()}

    def log_model() -> str:
        return uploads.with_artifact_retry(
            client,
            run.run_id,
            "the served model (model/)",
            lambda: served_model.log_served_model(
                client,
                run.run_id,
                Path(run.run_dir) / "model",
                binarize=config.data.binarize,
                max_samples=config.generate.max_samples_per_request,
            ),
            kept=run.run_dir,
        )

    version = registry.register_once(  # a retry must not add a second version
        client,
        run.run_id,
        name=config.registered_model_name,
        tags=tags,
        description=f"{config.model.name} on {config.data.source}, run {run.run_id}",
        log_model=log_model,
    )
    store.set_tags(
        client,
        run.run_id,
        {"genpar.registered_model": config.registered_model_name, "genpar.model_version": version},
    )
    run_logger().info("registered %s version %s", config.registered_model_name, version)
    return version


@task(name="finish-run", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def finish_run(
    run: RunHandle, metrics: dict[str, float], version: str | None = None
) -> dict[str, Any]:
    """Mark the run FINISHED, release the run lock, and write the run's summary.json."""
    client = store.connect(run.uri)
    store.finish(client, run.run_id, "FINISHED")
    runlock.release(Path(run.run_dir))
    summary = {
        "run_id": run.run_id,
        "experiment_id": run.experiment_id,
        "run_dir": run.run_dir,
        "tracking_uri": store.redact(run.uri),
        "artifact_uri": client.get_run(run.run_id).info.artifact_uri,
        "model_version": version,
        "metrics": metrics,
    }
    atomic.write_json(Path(run.run_dir) / "summary.json", summary, sort_keys=False)
    return summary


def mark_failed(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow state hook: the MLflow run of a failed/crashed/cancelled flow run is marked FAILED."""
    try:
        config = PipelineConfig.model_validate(flow_run.parameters.get("config") or {})
        client = store.connect(store.resolve_uri(config))
    except Exception as e:  # noqa: BLE001 - a hook must never raise over the real error
        run_logger().warning("could not mark the MLflow run failed: %s", e)
        return
    for run_id in store.runs_of_flow_run(client, str(flow_run.id)):
        run = client.get_run(run_id)
        if run.info.status == "RUNNING":
            store.set_tags(client, run_id, {"genpar.error": str(state.message)[:4000]})
            store.finish(client, run_id, "FAILED")
        runlock.release(Path(run.data.tags.get(store.TAG_RUN_DIR, ".")))


@task(name="plot-curves", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def plot_training_curves(run: RunHandle, config: PipelineConfig) -> str:
    """Loss curves from the run's metric history in MLflow, as plots/loss_curves.png."""
    return draw_training_curves(run, config)


def draw_training_curves(run: RunHandle, config: PipelineConfig) -> str:
    """plot_training_curves' work, callable from any thread (a sweep trial draws them while
    its scorecard runs)."""
    from genpar_models.eval.plots import plot_curves

    client = store.connect(run.uri)
    keys = [k for k in client.get_run(run.run_id).data.metrics if k.startswith(("train/", "val/"))]
    histories = {
        k: [(m.step, m.value) for m in client.get_metric_history(run.run_id, k)] for k in keys
    }
    path = Path(run.run_dir) / "plots" / "loss_curves.png"
    return str(
        plot_curves(histories, path, f"{config.name}: {config.model.name} on {config.data.source}")
    )
