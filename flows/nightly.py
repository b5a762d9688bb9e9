"""The nightly retrain: train a challenger, and promote it only if it beats the champion.

Served as the `nightly-retrain` deployment on `retrain.cron` (see flows/deployments.py), run
once by hand with `genpar retrain CONFIG`. One night:

1. re-fingerprint the source: unchanged input reuses its shard set (unless
   `retrain.force_preprocess`);
2. find the champion (the registered model's `champion` alias) and compare what its run
   recorded with tonight: data fingerprint, run identity (compute included) and lineage. When
   nothing changed, a retrain would reproduce the champion (training is deterministic), so
   the night trains nothing, records "unchanged since the champion, version N" and ends
   (`retrain.force: true` trains anyway);
3. otherwise score the champion again on today's test split with today's evaluation settings
   (the evaluate flow, recorded on the champion's run), so both are measured under one
   protocol, and train the challenger with the pipeline flow (warm-started from the
   champion's weights when `retrain.warm_start`); it is registered as a new version;
4. decide by `retrain.rule` (margin or interval; genpar_models/eval/promotion.py), after
   checking that both scores share a protocol; the alias moves by compare-and-set against
   the champion the night started with;
5. record the decision in MLflow and in a Prefect artifact, and notify `retrain.notify_url`
   (failed nights notify from the flow's failure hook).

Two retrains of one registered model never overlap: the flow holds the global concurrency
limit `genpar-retrain-<registered model>` (limit 1), which also covers runs started outside
the deployment and two pipelines that share a registered model; the deployment itself also
has a concurrency limit of one (further runs queue).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from typing import Any

from prefect import flow
from prefect.concurrency.sync import concurrency

from flows.evaluate import evaluate_flow
from flows.pipeline import pipeline
from genpar_models.config import PipelineConfig
from genpar_models.eval.promotion import challenger_config
from tasks.artifacts import night_links, publish_retrain_report
from tasks.cluster import flow_cluster
from tasks.notify import notify_failure, notify_night
from tasks.preflight import preflight
from tasks.promotion import (
    decide_promotion,
    find_champion,
    fingerprint_source,
    record_decision,
    record_unchanged,
    what_changed,
)


def retrain_limit_name(config: PipelineConfig) -> str:
    """One slot per registered model (names allow letters, digits, `-`, `_`, `.`)."""
    name = config.registered_model_name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:80] or "model"
    if slug != name:  # two names that slug alike must not share a slot
        slug += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"genpar-retrain-{slug}"


@contextlib.contextmanager
def retrain_slot(config: PipelineConfig) -> Iterator[None]:
    """Hold the registered model's one retrain slot (created with limit 1 on first use)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = retrain_limit_name(config)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another retrain created it first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
    with concurrency(name, occupy=1, strict=True):
        yield


def _nothing_to_do(
    config: PipelineConfig, uri: str, data: dict, champion: dict, contender: PipelineConfig
) -> dict[str, Any]:
    """Unchanged since the champion: record that, report it, notify; train nothing."""
    skipped = record_unchanged(config, uri, data, champion, contender)
    decision = skipped.pop("decision")
    facts = {"data": data, "champion": champion, "challenger": None, "changes": []}
    facts |= {"decision_run": skipped, "links": night_links(uri, None, champion)}
    publish_retrain_report(config, uri, facts, decision)
    notify_night(config, facts, decision, return_state=True)  # a lost POST never fails it
    return {"decision": decision, "run_id": None, "model_version": None, "champion": champion}


def _contest(
    config: PipelineConfig,
    uri: str,
    data: dict,
    champion: dict | None,
    contender: PipelineConfig,
    changes: list[str],
) -> dict[str, Any]:
    """Score the champion again, train the challenger, decide, record, report, notify."""
    defending = evaluate_flow(champion["ref"], contender) if champion else None
    challenger = pipeline(contender)
    decision = decide_promotion(config, challenger, defending)
    decision = record_decision(config, uri, challenger, champion, decision)
    facts = {
        "data": data,
        "champion": champion,
        "challenger": challenger,
        "defending": defending,
        "changes": changes,
        "challenger_config": contender.model_dump(mode="json"),
        "links": night_links(uri, challenger, champion),
    }
    publish_retrain_report(config, uri, facts, decision)
    notify_night(config, facts, decision, return_state=True)
    return {
        "decision": decision,
        "run_id": challenger["run_id"],
        "model_version": challenger["model_version"],
        "champion": champion,
    }


@flow(
    name="genpar-nightly-retrain",
    flow_run_name="nightly-{config.name}-{config.model.name}-{config.data.source}",
    on_failure=[notify_failure],
    on_crashed=[notify_failure],
)
def nightly_retrain(config: PipelineConfig = PipelineConfig()) -> dict[str, Any]:  # noqa: B008
    """Retrain unless nothing changed since the champion; the challenger takes the `champion`
    alias only if it beats the champion by retrain.rule (the first run promotes)."""
    # The champion's evaluation hands its Dask cluster on to the challenger's preprocessing
    # (the pipeline closes it before training).
    with retrain_slot(config), flow_cluster():
        uri = preflight(config)
        data = fingerprint_source(config)
        champion = find_champion(config, uri)
        contender = challenger_config(config, champion["ref"] if champion else None)
        changes = what_changed(contender, data, champion)
        if champion and not changes and not config.retrain.force:
            return _nothing_to_do(config, uri, data, champion, contender)
        return _contest(config, uri, data, champion, contender, changes)
