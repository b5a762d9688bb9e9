"""`genpar evaluate` and `genpar compress`: commands that work on logged models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from flows.cli_common import ModelArg, SetOpt, console, fail, prefect_defaults


def _run_on_model(
    flow: Callable[..., dict[str, Any]], model: str, config: str | None, overrides: list[str] | None
) -> dict[str, Any]:
    """Validate the config and overrides before any work, then run `flow` on `model`."""
    from genpar_models.config import load_config
    from genpar_models.errors import GenparError

    try:
        cfg = load_config(config, overrides or []) if config else None
        if cfg is None and overrides:
            load_config(None, overrides)  # typos fail here, before any work
    except GenparError as e:
        fail(str(e))
    prefect_defaults()
    try:
        return flow(model, cfg, overrides)
    except GenparError as e:
        fail(str(e), code=1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `genpar` app."""

    @app.command()
    def evaluate(
        model: ModelArg,
        config: Annotated[
            str | None,
            typer.Option(
                "--config",
                "-c",
                help="Config YAML to evaluate with (default: the run's own; --set applies "
                "to whichever is used).",
            ),
        ] = None,
        set_: SetOpt = None,
    ) -> None:
        """Score a logged model without retraining: the scorecard, recorded in MLflow.

        FID/KID (with bootstrap intervals), precision/recall, density/coverage and a classifier
        inception score for every model; ELBO, bits/dim and the IWAE bound for VAEs. Recorded on
        the model's run, or a child run when that run holds another protocol's scorecard.
        """
        from flows.evaluate import evaluate_flow

        result = _run_on_model(evaluate_flow, model, config, set_)
        for key, value in sorted(result["metrics"].items()):
            console.print(f"{key:32s} {value:12.5g}")
        ids = ", ".join(f"{k} {v}" for k, v in result["protocol_ids"].items())
        console.print(
            f"protocols: {ids}; cache: {result['cache']['extractor']} extractor, "
            f"{result['cache']['reference']} reference statistics"
        )
        if result["logged_to"]:
            console.print(f"recorded on MLflow run {result['logged_to']}")
        console.print(f"report: {result['report']}")

    @app.command()
    def compress(
        model: ModelArg,
        config: Annotated[
            str | None,
            typer.Option("--config", "-c", help="Config YAML to use (default: the run's own)."),
        ] = None,
        set_: SetOpt = None,
    ) -> None:
        """Build and measure inference variants of a logged model's decoder/generator.

        fp32, bf16, fp16 (GPU), torch.compile, dynamic int8 and 30/50/70% magnitude pruning
        (`compress.*` settings): samples/s at batch 1 and 256, latency p50/p95, size, and
        ΔFID/ΔKID/ΔELBO against fp32 on the same seeds. The fastest variant within
        compress.max_fid_increase is saved and registered as NAME-compressed.
        """
        from flows.compress import compress_flow
        from genpar_models.compress_report import table_markdown

        result = _run_on_model(compress_flow, model, config, set_)
        console.print(table_markdown(result), markup=False)
        if result["logged"]:
            logged = result["logged"]
            console.print(
                f"best: {result['best']}, registered as {logged['registered_model']} "
                f"version {logged['version']} (MLflow run {logged['run_id']})"
            )
        console.print(f"table, plot and model: {result['out_dir']}")
