"""Prefect tasks of the nightly retrain: re-fingerprint the data, find the champion, decide, record.

The rule itself is the pure `genpar_models.eval.promotion.decide`; these tasks feed it and write
its outcome where people look: the registry alias `champion` moves only on a promotion, and
both scores, the margin and the reason land on the challenger's MLflow run (metrics
`retrain/…`, tags `genpar.retrain.…`) and on its model version. Registry and store calls
retry with exponential backoff; bad config never retries.
"""

from __future__ import annotations

from typing import Any

from prefect import runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from genpar_models.config import PipelineConfig
from genpar_models.data.manifest import shard_set_key
from genpar_models.data.sources import plan_partitions
from genpar_models.errors import ConfigError
from genpar_models.eval.promotion import decide
from genpar_models.util.paths import shards_root
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
    """The version holding the `champion` alias of the pipeline's registered model, or None."""
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
    }


def _score(metrics: dict[str, float], metric: str, whose: str) -> float:
    if metric not in metrics:
        known = ", ".join(sorted(k for k in metrics if k.startswith("eval/"))) or "none"
        raise ConfigError(
            f"retrain.primary_metric={metric!r} is not among the {whose}'s evaluation metrics "
            f"({known})"
        )
    return float(metrics[metric])


@task(name="decide-promotion", task_run_name="decide-{config.name}", cache_policy=NO_CACHE)
def decide_promotion(
    config: PipelineConfig, challenger: dict[str, Any], defending: dict[str, Any] | None
) -> dict[str, Any]:
    """Apply the promotion rule to the challenger's and the champion's primary metric."""
    metric = config.retrain.primary_metric
    ours = _score(challenger["metrics"], metric, "challenger")
    theirs = _score(defending["metrics"], metric, "champion") if defending else None
    decision = decide(ours, theirs, config.retrain)
    run_logger().info("%s: %s", decision.action, decision.reason)
    return decision.as_dict()


@task(name="record-decision", task_run_name="record-decision-{config.name}", **_IO)
def record_decision(
    config: PipelineConfig,
    uri: str,
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    decision: dict[str, Any],
) -> None:
    """Move the alias on a promotion; log the decision and both scores on the challenger."""
    client = store.connect(uri)
    name, version = config.registered_model_name, challenger["model_version"]
    if decision["promote"]:
        client.set_registered_model_alias(name, ALIAS, version)
    numbers = {
        "retrain/promoted": float(decision["promote"]),
        "retrain/challenger_score": decision["challenger"],
        "retrain/champion_score": decision["champion"],
        "retrain/improvement": decision["improvement"],
        "retrain/min_improvement": decision["min_improvement"],
    }
    store.log_metrics(
        client, challenger["run_id"], {k: v for k, v in numbers.items() if v is not None}
    )
    tags = {
        "genpar.retrain.decision": decision["action"],
        "genpar.retrain.reason": decision["reason"],
        "genpar.retrain.primary_metric": decision["metric"],
        "genpar.retrain.champion_version": champion["version"] if champion else "none",
        "genpar.retrain.champion_run_id": champion["run_id"] if champion else "none",
        "genpar.retrain.flow_run_id": str(runtime.flow_run.id or ""),
    }
    store.set_tags(client, challenger["run_id"], tags)
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
