"""`genpar migrate`: move a genpar home's MLflow records to another tracking server.

A team that outgrows the embedded defaults keeps its history: every run of every genpar
experiment (params, full metric histories, tags, artifacts, status and times, sweep parents
before their trials), then every registered model with its versions, version tags and aliases,
copied through MLflow's own client APIs, so the target may be any MLflow server (the team
stack's, on PostgreSQL with artifacts in S3) or store.

Idempotent: each copied run carries `genpar.migrated_from` (the source run id) and, once
complete, `genpar.migration=complete`; each copied version carries
`genpar.migrated_from_version`. A second migration copies nothing twice; one killed half way
soft-deletes the incomplete copy it finds and copies that run again whole.

A version whose source is a logged MLflow model (`models:/m-...`, genpar's pyfunc model) is
re-logged on the copied run from its `model/` artifact, so `mlflow.pyfunc.load_model` and
`genpar generate` work against the target; an older version points at the copied run's
`model/` artifact, as in the source.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException

from genpar_models.config import redact_uri
from tasks import mlflow_store as store
from tasks import registry, served_model

TAG_FROM = "genpar.migrated_from"
TAG_DONE = "genpar.migration"
TAG_FROM_VERSION = "genpar.migrated_from_version"
PARENT = "mlflow.parentRunId"


@dataclass
class MigrationReport:
    experiments: int = 0
    runs_copied: int = 0
    runs_present: int = 0  # copied by an earlier migration
    artifacts: int = 0  # files copied
    versions_copied: int = 0
    versions_present: int = 0
    aliases: int = 0
    run_map: dict[str, str] = field(default_factory=dict)  # source run id -> target run id

    def summary(self) -> str:
        return (
            f"{self.experiments} experiment(s); runs: {self.runs_copied} copied, "
            f"{self.runs_present} already there; {self.artifacts} artifact file(s); "
            f"model versions: {self.versions_copied} copied, {self.versions_present} already "
            f"there; {self.aliases} alias(es) set"
        )


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _existing_copies(target: MlflowClient, experiment_id: str) -> dict[str, object]:
    """Source run id -> the target run copied from it (complete or not), in one experiment."""
    found = {}
    token = None
    while True:
        page = target.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_FROM}` != ''",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        found |= {r.data.tags[TAG_FROM]: r for r in page}
        token = page.token
        if not token:
            return found


def _all_runs(source: MlflowClient, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = source.search_runs(
            [experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            # parents first, so a trial's mlflow.parentRunId can point at its copied parent
            return sorted(runs, key=lambda r: (PARENT in r.data.tags, r.info.start_time or 0))


def _copy_artifacts(source: MlflowClient, target: MlflowClient, src: str, dst: str) -> int:
    with tempfile.TemporaryDirectory(prefix="genpar-migrate-") as tmp:
        if not source.list_artifacts(src):
            return 0
        local = Path(source.download_artifacts(src, "", tmp))
        files = [p for p in local.rglob("*") if p.is_file()]
        if files:
            target.log_artifacts(dst, str(local))
        return len(files)


def _copy_run(
    source: MlflowClient, target: MlflowClient, run, experiment_id: str, report: MigrationReport
) -> str:
    """A whole copy of `run` in the target experiment; returns its id."""
    tags = dict(run.data.tags)
    if PARENT in tags:
        tags[PARENT] = report.run_map.get(tags[PARENT], tags[PARENT])
    tags[TAG_FROM] = run.info.run_id
    created = target.create_run(
        experiment_id,
        start_time=run.info.start_time,
        tags={TAG_FROM: run.info.run_id},
        run_name=run.info.run_name,
    )
    new_id = created.info.run_id
    params = [Param(k, v) for k, v in run.data.params.items()]
    for chunk in _batches(params, 100):
        target.log_batch(new_id, params=chunk)
    metrics = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in run.data.metrics
        for m in source.get_metric_history(run.info.run_id, key)
    ]
    for chunk in _batches(metrics, 1000):
        target.log_batch(new_id, metrics=chunk)
    report.artifacts += _copy_artifacts(source, target, run.info.run_id, new_id)
    run_tags = [RunTag(k, v) for k, v in tags.items() if k != "mlflow.runName"]
    for chunk in _batches(run_tags, 100):
        target.log_batch(new_id, tags=chunk)
    if run.info.status != "RUNNING":
        target.set_terminated(new_id, status=run.info.status, end_time=run.info.end_time)
    target.set_tag(new_id, TAG_DONE, "complete")  # last: only a whole copy says so
    return new_id


def _copy_runs(
    source: MlflowClient, target: MlflowClient, target_uri: str, report: MigrationReport,
    say: Callable[[str], None],
) -> None:  # fmt: skip
    for exp in source.search_experiments(view_type=ViewType.ACTIVE_ONLY):
        runs = _all_runs(source, exp.experiment_id)
        if not runs:
            continue
        exp_id = store.ensure_experiment(target, target_uri, exp.name)
        for key, value in exp.tags.items():
            if not key.startswith("mlflow."):
                target.set_experiment_tag(exp_id, key, value)
        report.experiments += 1
        copies = _existing_copies(target, exp_id)
        for run in runs:
            there = copies.get(run.info.run_id)
            if there is not None and there.data.tags.get(TAG_DONE) == "complete":
                report.run_map[run.info.run_id] = there.info.run_id
                report.runs_present += 1
                continue
            if there is not None:  # a migration stopped half way through this run
                target.delete_run(there.info.run_id)
            report.run_map[run.info.run_id] = _copy_run(source, target, run, exp_id, report)
            report.runs_copied += 1
            say(f"  {exp.name}: run {run.info.run_id} -> {report.run_map[run.info.run_id]}")


def _version_source(source: MlflowClient, target: MlflowClient, mv, new_run: str) -> str:
    """The copied version's model: genpar's pyfunc model logged again on the copied run, or
    (for a version that pointed at files) the copied run's `model/` artifact."""
    if not str(mv.source).startswith("models:/"):
        return f"{target.get_run(new_run).info.artifact_uri}/{registry.MODEL_ARTIFACT}"
    params = source.get_run(mv.run_id).data.params
    with tempfile.TemporaryDirectory(prefix="genpar-migrate-model-") as tmp:
        local = source.download_artifacts(mv.run_id, registry.MODEL_ARTIFACT, tmp)
        return served_model.log_served_model(
            target,
            new_run,
            local,
            binarize=params.get("data.binarize", "none"),
            max_samples=int(params.get("generate.max_samples_per_request", "10000")),
        )


def _copy_models(
    source: MlflowClient, target: MlflowClient, report: MigrationReport,
    say: Callable[[str], None],
) -> None:  # fmt: skip
    for model in source.search_registered_models():
        registry.ensure_registered_model(target, model.name, model.description or "")
        for key, value in (model.tags or {}).items():
            target.set_registered_model_tag(model.name, key, value)
        present = {
            v.tags.get(TAG_FROM_VERSION): v.version
            for v in target.search_model_versions(f"name = '{model.name}'")
        }
        mapped: dict[str, str] = {}
        versions = source.search_model_versions(f"name = '{model.name}'")
        for mv in sorted(versions, key=lambda v: int(v.version)):
            mark = f"{model.name}/{mv.version}"
            if mark in present:
                mapped[str(mv.version)] = str(present[mark])
                report.versions_present += 1
                continue
            new_run = report.run_map.get(mv.run_id)
            if new_run is None:
                say(f"  {mark}: its run {mv.run_id} is not in the source store; skipped")
                continue
            uri = _version_source(source, target, mv, new_run)
            with served_model.global_tracking_uri(target.tracking_uri):
                created = target.create_model_version(
                    model.name,
                    uri,
                    run_id=new_run,
                    tags={**mv.tags, TAG_FROM_VERSION: mark},
                    description=mv.description,
                    model_id=uri.removeprefix("models:/") if uri.startswith("models:/") else None,
                )
            mapped[str(mv.version)] = str(created.version)
            report.versions_copied += 1
            say(f"  {mark} -> version {created.version}")
        for alias, version in (model.aliases or {}).items():
            if str(version) in mapped:
                target.set_registered_model_alias(model.name, alias, mapped[str(version)])
                report.aliases += 1


def migrate(
    source_uri: str, target_uri: str, say: Callable[[str], None] = lambda _: None
) -> MigrationReport:
    """Copy every run, registered model, version and alias of `source_uri` to `target_uri`.

    Raises:
        TrackingError: either store is unreachable, or both are the same.
    """
    if source_uri.rstrip("/") == target_uri.rstrip("/"):
        raise store.TrackingError(
            f"migrate: the source and target are both {redact_uri(source_uri)}"
        )
    source, target = store.connect(source_uri), store.connect(target_uri)
    report = MigrationReport()
    say(f"migrating {redact_uri(source_uri)} -> {redact_uri(target_uri)}")
    try:
        _copy_runs(source, target, target_uri, report, say)
        _copy_models(source, target, report, say)
    except MlflowException as e:
        raise store.TrackingError(
            f"migration to {redact_uri(target_uri)} stopped: {e}. What was copied is kept; "
            "run the same command again to copy the rest."
        ) from None
    return report
