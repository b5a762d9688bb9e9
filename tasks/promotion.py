"""Prefect tasks of the nightly retrain: re-fingerprint the data, find the champion, say what
changed since it, decide, record.

The rule itself is the pure `genpar_models.eval.promotion.decide`; these tasks feed it and write
its outcome where people look: the registry alias `champion` moves only on a promotion, by
compare-and-set against the champion the night started with (tasks/champion.py), and both
scores, the rule, the margin and the reason land on the challenger's MLflow run (metrics
`retrain/…`, tags `genpar.retrain.…`) and on its model version. A night with nothing to do
leaves one small MLflow run of its own (`nightly-skipped-…`) holding its decision. Registry and
store calls retry with exponential backoff; bad config never retries.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from prefect import runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from genpar_models.config import PipelineConfig
from genpar_models.data.manifest import shard_set_key
from genpar_models.data.sources import plan_partitions
from genpar_models.errors import ConfigError
from genpar_models.eval.promotion import changes, decide, find_interval, unchanged
from genpar_models.eval.protocol import protocol_kind
from genpar_models.models.custom.loader import network_lineage
from genpar_models.util.lineage import lineage, lineage_tags, recorded_lineage
from genpar_models.util.paths import shards_root
from tasks import champion as alias
from tasks import mlflow_store as store
from tasks import registry
from tasks.common import retry_unless_user_error, run_logger
from tasks.preprocess import build_shards
from tasks.registry import ALIAS

_IO = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_unless_user_error,
    "cache_policy": NO_CACHE,
}


@task(name="fingerprint-source", task_run_name="fingerprint-{config.data.source}", **_IO)
def fingerprint_source(config: PipelineConfig) -> dict[str, Any]:
    """Fingerprint the source again; say whether its shard set exists (and will be reused).

    With retrain.force_preprocess the set is built again here and swapped in whole, so a run
    still reading the old set never finds it missing.
    """
    info, _ = plan_partitions(config.data)
    key = shard_set_key(info.fingerprint, config.data)
    final = shards_root() / key
    reuse = (final / "manifest.json").is_file()
    if reuse and config.retrain.force_preprocess:
        build_shards(config, rebuild=True)
        reuse = False
    run_logger().info(
        "source %s fingerprint %s: %s",
        info.uri,
        info.fingerprint[:12],
        "shard set exists, reusing it"
        if reuse
        else "rebuilding (forced)"
        if config.retrain.force_preprocess
        else "new input, preprocessing",
    )
    return {"fingerprint": info.fingerprint, "shards_key": key, "reused": reuse}


@task(name="find-champion", task_run_name="find-champion-{config.name}", **_IO)
def find_champion(config: PipelineConfig, uri: str) -> dict[str, Any] | None:
    """The version holding the `champion` alias of the pipeline's registered model, or None;
    with what its run recorded: source fingerprint, run identity and lineage."""
    client = store.connect(uri)
    name = config.registered_model_name
    version = registry.alias_version(client, name, ALIAS)
    if version is None:
        run_logger().info("registered model %r has no %s yet", name, ALIAS)
        return None
    mv = client.get_model_version(name, version)
    run = client.get_run(mv.run_id)
    run_logger().info("champion: %s version %s (run %s)", name, version, mv.run_id)
    return {
        "name": name,
        "version": version,
        "run_id": mv.run_id,
        "experiment_id": run.info.experiment_id,
        "ref": f"models:/{name}/{version}",
        "source_fingerprint": run.data.tags.get("genpar.source_fingerprint"),
        "run_identity": run.data.tags.get(store.TAG_RUN_IDENTITY),
        "lineage": recorded_lineage(run.data.tags),
    }


@task(name="what-changed", task_run_name="what-changed-{contender.name}", cache_policy=NO_CACHE)
def what_changed(
    contender: PipelineConfig, data: dict[str, Any], champion: dict[str, Any] | None
) -> list[str]:
    """What differs between the champion's run and tonight's challenger: data fingerprint,
    run identity (compute included) and lineage, in words; [] when nothing does."""
    if champion is None:
        return ["no champion yet"]
    today = {
        "fingerprint": data["fingerprint"],
        "identity": contender.run_identity(),
        "lineage": lineage() | network_lineage(contender.model.name),  # your own network's code
    }
    recorded = {
        "fingerprint": champion["source_fingerprint"],
        "identity": champion["run_identity"],
        "lineage": champion["lineage"],
    }
    found = changes(recorded, today)
    said = "; ".join(found) or "nothing"
    run_logger().info("changed since the champion (version %s): %s", champion["version"], said)
    return found


def _score(metrics: dict[str, float], metric: str, whose: str) -> float:
    if metric not in metrics:
        known = ", ".join(sorted(k for k in metrics if k.startswith("eval/"))) or "none"
        raise ConfigError(
            f"retrain.primary_metric={metric!r} is not among the {whose}'s evaluation metrics "
            f"({known})"
        )
    return float(metrics[metric])


def read_protocols(report_json: Path) -> dict[str, Any]:
    """{kind: protocol} of an evaluation report.json ({} when it cannot be read)."""
    try:
        return json.loads(report_json.read_text()).get("protocols") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def _protocols(
    metric: str, challenger: dict[str, Any], defending: dict[str, Any] | None
) -> tuple[dict | None, dict | None] | None:
    """The two protocols `metric` was measured under (None: the metric needs none)."""
    kind = protocol_kind(metric)
    if kind is None or defending is None:
        return None
    ours = read_protocols(Path(challenger["run_dir"]) / "eval" / "report.json")
    return ours.get(kind), (defending.get("protocols") or {}).get(kind)


@task(name="decide-promotion", task_run_name="decide-{config.name}", cache_policy=NO_CACHE)
def decide_promotion(
    config: PipelineConfig, challenger: dict[str, Any], defending: dict[str, Any] | None
) -> dict[str, Any]:
    """Apply the promotion rule to the challenger's and the champion's primary metric, after
    checking that both were measured under the same protocol."""
    metric = config.retrain.primary_metric
    ours = _score(challenger["metrics"], metric, "challenger")
    theirs = _score(defending["metrics"], metric, "champion") if defending else None
    decision = decide(
        ours,
        theirs,
        config.retrain,
        interval=find_interval(challenger["metrics"], metric),
        protocols=_protocols(metric, challenger, defending),
    )
    run_logger().info("%s (rule %s): %s", decision.action, decision.rule, decision.reason)
    return decision.as_dict()


def _nightly_by() -> str:
    return f"nightly retrain (flow run {runtime.flow_run.name or runtime.flow_run.id or '-'})"


def _move_alias(
    client: Any, name: str, version: str, champion: dict[str, Any] | None, reason: str
) -> str | None:
    """Compare-and-set the alias; None when it moved, else why it was not moved."""
    try:
        alias.move(
            client,
            name,
            version,
            expected=champion["version"] if champion else None,
            action="nightly",
            reason=reason,
            by=_nightly_by(),
            flow_run=str(runtime.flow_run.id or "") or None,
        )
    except alias.AliasMoved as e:
        return str(e)
    return None


def _decision_tags(decision: dict[str, Any], champion: dict[str, Any] | None) -> dict[str, str]:
    return {
        "genpar.retrain.decision": decision["action"],
        "genpar.retrain.reason": decision["reason"],
        "genpar.retrain.rule": decision["rule"],
        "genpar.retrain.primary_metric": decision["metric"],
        "genpar.retrain.protocol": decision["protocol"] or "none",
        "genpar.retrain.champion_version": champion["version"] if champion else "none",
        "genpar.retrain.champion_run_id": champion["run_id"] if champion else "none",
        "genpar.retrain.flow_run_id": str(runtime.flow_run.id or ""),
    }


@task(name="record-decision", task_run_name="record-decision-{config.name}", **_IO)
def record_decision(
    config: PipelineConfig,
    uri: str,
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    decision: dict[str, Any],
) -> dict[str, Any]:
    """Move the alias on a promotion (compare-and-set against the night's champion); log the
    decision and both scores on the challenger. Returns the decision as it stands: a
    promotion becomes "kept champion" when the alias moved during the night."""
    client = store.connect(uri)
    name, version = config.registered_model_name, challenger["model_version"]
    if decision["promote"]:
        moved = _move_alias(client, name, version, champion, decision["reason"])
        if moved is not None:
            reason = f"{decision['reason']}; but not promoted: {moved}"
            decision = {**decision, "promote": False, "action": "kept champion", "reason": reason}
    numbers = {
        "retrain/promoted": float(decision["promote"]),
        "retrain/challenger_score": decision["challenger"],
        "retrain/champion_score": decision["champion"],
        "retrain/improvement": decision["improvement"],
        "retrain/min_improvement": decision["min_improvement"],
        "retrain/challenger_ci_low": decision["challenger_ci_low"],
        "retrain/challenger_ci_high": decision["challenger_ci_high"],
    }
    store.log_metrics(
        client, challenger["run_id"], {k: v for k, v in numbers.items() if v is not None}
    )
    store.set_tags(client, challenger["run_id"], _decision_tags(decision, champion))
    client.set_model_version_tag(name, version, "retrain.decision", decision["action"])
    client.set_model_version_tag(name, version, "retrain.reason", decision["reason"][:5000])
    run_logger().info(
        "%s: %s version %s%s",
        decision["action"],
        name,
        version,
        f" is now @{ALIAS}"
        if decision["promote"]
        else f"; @{ALIAS} stays on version {champion['version'] if champion else '-'}",
    )
    return decision


@task(name="record-unchanged", task_run_name="record-unchanged-{config.name}", **_IO)
def record_unchanged(
    config: PipelineConfig,
    uri: str,
    data: dict[str, Any],
    champion: dict[str, Any],
    contender: PipelineConfig,
) -> dict[str, Any]:
    """A night with nothing to do: its decision on a small MLflow run of its own (no model,
    no version) and on the champion's version. Returns the decision and that run."""
    decision = unchanged(
        champion["version"], data["fingerprint"], contender.run_identity(), config.retrain
    ).as_dict()
    client = store.connect(uri)
    exp_id = store.ensure_experiment(client, uri, config.experiment_name)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tags = {
        **_decision_tags(decision, champion),
        "genpar.source_fingerprint": data["fingerprint"],
        store.TAG_RUN_IDENTITY: contender.run_identity(),
        **lineage_tags(lineage() | network_lineage(contender.model.name)),
    }
    if runtime.flow_run.id:
        tags[store.TAG_FLOW_RUN] = str(runtime.flow_run.id)
    run_id = store.create_run(client, exp_id, name=f"nightly-skipped-{stamp}", tags=tags)
    store.log_metrics(client, run_id, {"retrain/promoted": 0.0, "retrain/skipped": 1.0})
    store.finish(client, run_id)
    name = config.registered_model_name
    client.set_model_version_tag(name, champion["version"], "retrain.last_unchanged", stamp)
    run_logger().info("skipped: %s", decision["reason"])
    return {"decision": decision, "run_id": run_id, "experiment_id": exp_id}
