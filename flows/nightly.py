"""The nightly retrain: train a challenger, and promote it only if it beats the champion.

Served as the `nightly-retrain` deployment on `retrain.cron` (see flows/deployments.py), run
once by hand with `genpar retrain CONFIG`. One night:

1. re-fingerprint the source: unchanged input reuses its shard set (unless
   `retrain.force_preprocess`);
2. find the champion (the registered model's `champion` alias) and score it again on
   today's test split with today's evaluation settings, so both models are judged by the
   same protocol (the evaluate flow, recorded on the champion's run);
3. train the challenger with the pipeline flow (warm-started from the champion's weights when
   `retrain.warm_start`); it is registered as a new version like every pipeline run;
4. decide: the first run with no champion promotes; otherwise the challenger must beat the
   champion on `retrain.primary_metric` by more than `retrain.min_improvement`;
5. record the decision, both scores and the reason in MLflow and in a Prefect artifact.

Two retrains of the same pipeline never overlap: the deployment has a concurrency limit of
one (further runs queue), and the flow itself holds the global concurrency limit
`genpar-retrain-<name>` (limit 1), which also covers runs started outside the deployment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prefect import flow
from prefect.concurrency.sync import concurrency

from flows.evaluate import evaluate_flow
from flows.pipeline import pipeline
from genpar_models.config import PipelineConfig
from genpar_models.eval.promotion import challenger_config
from tasks.artifacts import publish_retrain_report
from tasks.preflight import preflight
from tasks.promotion import decide_promotion, find_champion, fingerprint_source, record_decision


def retrain_limit_name(config: PipelineConfig) -> str:
    return f"genpar-retrain-{config.name}"


@contextlib.contextmanager
def retrain_slot(config: PipelineConfig) -> Iterator[None]:
    """Hold the pipeline's one retrain slot (created with limit 1 on first use)."""
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


@flow(
    name="genpar-nightly-retrain",
    flow_run_name="nightly-{config.name}-{config.model.name}-{config.data.source}",
)
def nightly_retrain(config: PipelineConfig = PipelineConfig()) -> dict[str, Any]:  # noqa: B008
    """Retrain; the challenger takes the `champion` alias only if it beats the champion on
    retrain.primary_metric by more than retrain.min_improvement (the first run promotes)."""
    with retrain_slot(config):
        uri = preflight(config)
        data = fingerprint_source(config)
        champion = find_champion(config, uri)
        contender = challenger_config(config, champion["ref"] if champion else None)
        defending = evaluate_flow(champion["ref"], contender) if champion else None
        challenger = pipeline(contender)
        decision = decide_promotion(config, challenger, defending)
        record_decision(config, uri, challenger, champion, decision)
        facts = {
            "data": data,
            "champion": champion,
            "challenger": challenger,
            "defending": defending,
            "challenger_config": contender.model_dump(mode="json"),
        }
        publish_retrain_report(config, uri, facts, decision)
    return {
        "decision": decision,
        "run_id": challenger["run_id"],
        "model_version": challenger["model_version"],
        "champion": champion,
    }
