"""The scorecard in MLflow: metrics with their protocols, the extractor's own run, child runs.

Plain functions over an MlflowClient (the Prefect tasks call them). Where a scorecard goes:

- the pipeline records it on the training run itself (the nightly retrain promotes on it);
- `genpar evaluate` records it on the model's own run when that run has no scorecard yet or
  one of the same protocols (its metric history then grows by one step), and otherwise on a
  child run, so a run's latest metrics and its protocol tags always belong together.

Protocols are tags: `genpar.protocol.<kind>` = id and `genpar.protocol.<kind>.json` = the dict.
Each feature extractor gets one run in the `genpar-feature-extractors` experiment (found by
its fingerprint), holding its training loss and accuracy and its weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run

from genpar_models.eval.protocol import KINDS, TAG_PREFIX
from tasks import mlflow_store as store
from tasks import uploads

EXTRACTOR_EXPERIMENT = "genpar-feature-extractors"
TAG_EXTRACTOR_FP = "genpar.extractor_fp"
TAG_PARENT = "mlflow.parentRunId"
# (store URI, extractor fingerprint) -> its FINISHED run, found once per process: a finished
# extractor run never changes, and a sweep's trials (or a pipeline's stages) ask again.
_FINISHED_EXTRACTORS: dict[tuple[str, str], str] = {}


def run_protocols(run: Run) -> dict[str, dict[str, Any] | None]:
    """{kind: protocol dict or None} as recorded on a run's tags."""
    out: dict[str, dict[str, Any] | None] = {}
    for kind in KINDS:
        raw = run.data.tags.get(f"{TAG_PREFIX}{kind}.json")
        out[kind] = json.loads(raw) if raw else None
    return out


def _protocol_tags(report: dict[str, Any]) -> dict[str, str]:
    tags = {}
    for kind, protocol in report["protocols"].items():
        tags[f"{TAG_PREFIX}{kind}"] = report["protocol_ids"][kind]
        tags[f"{TAG_PREFIX}{kind}.json"] = json.dumps(protocol, sort_keys=True)
    return tags


def _same_protocols(run: Run, report: dict[str, Any]) -> bool:
    recorded = {k: run.data.tags.get(f"{TAG_PREFIX}{k}") for k in report["protocol_ids"]}
    return all(v is None or v == report["protocol_ids"][k] for k, v in recorded.items())


def _child_run(client: MlflowClient, parent: Run, report: dict[str, Any]) -> str:
    pid = report["protocol_ids"].get("quality", "")
    child = client.create_run(
        parent.info.experiment_id,
        run_name=f"evaluate-{pid}",
        tags={TAG_PARENT: parent.info.run_id, "genpar.evaluation_of": parent.info.run_id},
    )
    store.log_params(client, child.info.run_id, parent.data.params)  # lists like its parent
    return child.info.run_id


def extractor_run(
    client: MlflowClient, uri: str, report: dict[str, Any], kept: str | None = None
) -> str:
    """The extractor's MLflow run (created, with loss/accuracy and weights, the first time)."""
    info = report["extractor"]
    known = _FINISHED_EXTRACTORS.get((uri, info["fingerprint"]))
    if known:
        return known
    exp = client.get_experiment_by_name(EXTRACTOR_EXPERIMENT)
    exp_id = exp.experiment_id if exp else None
    if exp_id is None:
        location = store.artifact_location(uri, EXTRACTOR_EXPERIMENT)
        exp_id = client.create_experiment(EXTRACTOR_EXPERIMENT, artifact_location=location)
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`{TAG_EXTRACTOR_FP}` = '{info['fingerprint']}'"
    )
    finished = [r for r in found if r.info.status == "FINISHED"]
    if finished:
        _FINISHED_EXTRACTORS[(uri, info["fingerprint"])] = finished[0].info.run_id
        return finished[0].info.run_id
    if found:  # made before, but its upload failed (the store was away): upload again
        run_id = found[0].info.run_id
    else:
        dataset = report["protocols"]["quality"]["dataset"]
        run_id = client.create_run(
            exp_id,
            run_name=f"{info['kind']}-{dataset[:8]}",
            tags={TAG_EXTRACTOR_FP: info["fingerprint"], "genpar.dataset": dataset},
        ).info.run_id
        numbers = {k: v for k, v in info["summary"].items() if isinstance(v, int | float)}
        store.log_metrics(client, run_id, {f"extractor/{k}": v for k, v in numbers.items()})
        store.log_params(client, run_id, {"kind": info["kind"], "dataset": dataset})
    uploads.upload(client, run_id, info["directory"], "extractor", kept=kept)
    store.finish(client, run_id)  # FINISHED only with its weights: what marks it whole
    _FINISHED_EXTRACTORS[(uri, info["fingerprint"])] = run_id
    return run_id


def record_extractor(uri: str, extractor: Any, dataset: str) -> str:
    """The extractor's MLflow run ahead of any scorecard (a sweep, once for all its trials,
    before they start); `extractor` as `prepare` returns it, `dataset` the shard set's key."""
    info = {
        "kind": extractor.kind,
        "fingerprint": extractor.fingerprint,
        "directory": str(extractor.directory),
        "summary": extractor.summary,
    }
    report = {"extractor": info, "protocols": {"quality": {"dataset": dataset}}}
    return extractor_run(store.connect(uri), uri, report)


def record_scorecard(
    uri: str, run_id: str, report: dict[str, Any], report_dir: str, *, log_to: str
) -> str:
    """Log metrics, protocol and extractor tags and the report; return the run used."""
    client = store.connect(uri)
    child = False
    if log_to != "run":  # only the choice between the run and a child reads the run
        run = client.get_run(run_id)
        child = log_to == "child" or (log_to == "auto" and not _same_protocols(run, report))
    target = _child_run(client, run, report) if child else run_id
    metrics = report["metrics"]
    step = len(client.get_metric_history(target, next(iter(metrics))))
    kept = str(Path(report_dir).parent)  # the pipeline's run directory
    ext_run = extractor_run(client, uri, report, kept)
    tags = {
        **_protocol_tags(report),
        "genpar.eval.extractor": report["extractor"]["kind"],
        "genpar.eval.extractor_fp": report["extractor"]["fingerprint"],
        "genpar.eval.extractor_run": ext_run,
        "genpar.eval.cache": json.dumps(report["cache"]),
    }
    store.log_metrics(client, target, metrics, step=step, tags=tags)  # one batch
    uploads.upload(client, target, report_dir, "eval", kept=kept)
    if child:
        store.finish(client, target)
    return target
