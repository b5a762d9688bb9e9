"""The deployments `genpar serve` serves, built from one pipeline config::

    genpar-pipeline/pipeline                 the pipeline; on demand (UI form, API, CLI)
    genpar-evaluate/evaluate                 score a model, default <name>@champion; on demand
    genpar-nightly-retrain/nightly-retrain   on retrain.cron in retrain.timezone, one at a time
    genpar-sweep/sweep                       a sweep of the config; on demand (UI form)
    genpar-generate/generate                 samples of the champion (a conditional model's
                                             class: `label`); on demand (UI form)

The config's values become the deployments' default parameters, so the Prefect UI's run form
opens with them (the typed `PipelineConfig` gives it its fields, defaults and descriptions).
Flows are referenced by module path (`flows.pipeline.pipeline`), so runs work from any working
directory once genpar is installed. The same deployments, for a work pool and
`prefect deploy`, are in infra/prefect.yaml.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import prefect
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.evaluate import evaluate_flow
from flows.generate import generate_flow
from flows.nightly import nightly_retrain
from flows.pipeline import pipeline
from flows.sweep import sweep_flow
from genpar_models.config import PipelineConfig
from genpar_models.config.sweep import SweepConfig
from infra import serving

PIPELINE, EVALUATE, NIGHTLY, SWEEP = "pipeline", "evaluate", "nightly-retrain", "sweep"
GENERATE = "generate"


def default_sweep(config: PipelineConfig) -> SweepConfig:
    """The sweep form's defaults: the config's learning rate and its neighbours, x3 apart."""
    lr = config.train.lr
    return SweepConfig(
        name=f"{config.name}-lr",
        base=config.model_dump(mode="json"),
        space={"train.lr": [lr / 3, lr, lr * 3]},
    )


def build_deployments(config: PipelineConfig) -> list[RunnerDeployment]:
    """The deployments, with `config` as their default parameters."""
    params = {"config": config.model_dump(mode="json")}
    common: dict[str, Any] = {
        "tags": ["genpar", config.name],
        "entrypoint_type": EntrypointType.MODULE_PATH,
    }
    return [
        pipeline.to_deployment(
            name=PIPELINE,
            parameters=params,
            description=f"Run the {config.name} pipeline once: preprocess, train, evaluate, "
            "generate, register. Change any field of the config in the run form.",
            **common,
        ),
        evaluate_flow.to_deployment(
            name=EVALUATE,
            parameters={"model": f"{config.registered_model_name}@champion"},
            description="Evaluate a logged model (default: the champion) on its test split.",
            **common,
        ),
        nightly_retrain.to_deployment(
            name=NIGHTLY,
            parameters=params,
            schedules=[Cron(config.retrain.cron, timezone=config.retrain.timezone)],
            # A second retrain waits for the first instead of overlapping it.
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            ),
            description=f"Retrain {config.name} unless nothing changed since the champion; "
            f"promote the challenger to @champion only if it beats the champion on "
            f"{config.retrain.primary_metric} by rule {config.retrain.rule} (margin "
            f"{config.retrain.min_improvement:g}).",
            **common,
        ),
        sweep_flow.to_deployment(
            name=SWEEP,
            parameters={"sweep": default_sweep(config).model_dump(mode="json", by_alias=True)},
            description=f"Sweep {config.name}: train the space's configurations at once with "
            "successive halving; one parent MLflow run with a child per trial.",
            **common,
        ),
        generate_flow.to_deployment(
            name=GENERATE,
            parameters={
                "model": f"{config.registered_model_name}@champion",
                "config": config.model_dump(mode="json"),
                "n": config.generate.num_samples,
                "out": f"samples-{config.name}",
                "label": config.generate.label,
                "balanced_labels": config.generate.balanced_labels,
            },
            description="Sample a logged model (default: the champion) into a directory on "
            "the worker; a conditional model samples class `label` (all classes, balanced, "
            "when null), with the labels beside the samples.",
            **common,
        ),
    ]


def deployment_names(deployments: list[RunnerDeployment]) -> list[str]:
    return [f"{d.flow_name}/{d.name}" for d in deployments]


def serve_deployments(
    config: PipelineConfig, *, limit: int | None = None, say: Callable[[str], None] = print
) -> None:
    """Serve the deployments until interrupted (runs execute in subprocesses of this one).

    Schedules stay active when serving stops (`pause_on_shutdown=False`): the next `genpar
    serve` picks up runs that came due meanwhile, and stopping for an upgrade does not
    silently switch the nightly retrain off.
    """
    import psutil

    deployments = build_deployments(config)
    names = deployment_names(deployments)
    api = os.environ.get("PREFECT_API_URL", "")
    me = psutil.Process()
    serving.record_serve(
        {
            "pid": me.pid,
            "create_time": me.create_time(),
            "config": config.name,
            "deployments": names,
            "api_url": api,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    schedule = f"cron '{config.retrain.cron}' ({config.retrain.timezone})"
    say(f"serving {len(names)} deployments of {config.name!r} on {api}:")
    say(f"  {names[0]}  on demand; its run form holds the config")
    say(f"  {names[1]}  on demand")
    say(f"  {names[2]}  {schedule}, one run at a time")
    say(f"  {names[3]}  on demand; its run form holds the sweep")
    say(f"  {names[4]}  on demand; its run form takes the class (label)")
    say(f"UI: {api.removesuffix('/api')}/deployments   (Ctrl-C stops serving)")
    try:
        prefect.serve(
            *deployments, pause_on_shutdown=False, limit=limit, print_starting_message=False
        )
    finally:
        found = serving.serve_state()
        if found and found[0].get("pid") == me.pid:
            serving.serve_state_path().unlink(missing_ok=True)
