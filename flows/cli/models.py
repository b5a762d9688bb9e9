"""Commands on logged models: `genpar evaluate`, `genpar compress` and `genpar generate`.

Each takes a model reference (a run id, models:/NAME/VERSION, NAME@ALIAS, champion or a model
directory; tasks/registry.py) and runs the matching flow on it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.app import app
from flows.cli.common import (
    ModelArg,
    SetOpt,
    console,
    fail,
    flow_run_settings,
    load_or_fail,
    prefect_defaults,
    use_servers,
)
from flows.cli.prefect_server import server_starting_alongside
from genpar_models.errors import GenparError

PANEL = "Work on models"


def _run_on_model(
    flow: Callable[..., dict[str, Any]], model: str, config: str | None, overrides: list[str] | None
) -> dict[str, Any]:
    """Validate the config and overrides before any work, then run `flow` on `model`."""
    cfg = load_or_fail(config, overrides) if config else None
    if cfg is None and overrides:
        load_or_fail(None, overrides)  # typos fail here, before any work
    prefect_defaults()
    try:
        with flow_run_settings():
            return flow(model, cfg, overrides)
    except GenparError as e:
        fail(str(e), code=1)


@app.command(rich_help_panel=PANEL)
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


@app.command(rich_help_panel=PANEL)
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
    from genpar_models.eval.compression import table_markdown

    result = _run_on_model(compress_flow, model, config, set_)
    console.print(table_markdown(result), markup=False)
    if result["logged"]:
        logged = result["logged"]
        console.print(
            f"best: {result['best']}, registered as {logged['registered_model']} "
            f"version {logged['version']} (MLflow run {logged['run_id']})"
        )
    console.print(f"table, plot and model: {result['out_dir']}")


@app.command(rich_help_panel=PANEL)
def generate(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Model reference: champion, NAME@ALIAS, models:/NAME/VERSION, "
            "a run id or a model directory.",
        ),
    ] = "champion",
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Number of samples.")] = 1000,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (created).")] = Path(
        "samples"
    ),
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Config YAML (generate/compute sections).")
    ] = None,
    set_: SetOpt = None,
    seed: Annotated[
        int | None, typer.Option(help="Generation seed (default: the config's).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    label: Annotated[
        int | None,
        typer.Option(
            "--label",
            min=0,
            help="A conditional model: samples of class K only (K in 0..num_classes-1).",
        ),
    ] = None,
    labels: Annotated[
        bool,
        typer.Option(
            "--labels",
            help="A conditional model: a balanced set over all classes (its default).",
        ),
    ] = False,
) -> None:
    """Sample from a registered model in parallel (Dask): .npy chunks, samples.json, grid.png
    (a conditional model: labels beside the samples, one grid row per class)."""
    if label is not None and labels:
        fail("--label K and --labels exclude each other: one class, or all of them", code=2)
    cfg = load_or_fail(config, set_)
    use_servers(required=False)
    with server_starting_alongside():
        from flows.generate import generate_flow

    try:
        with flow_run_settings():
            result = generate_flow(
                model,
                cfg,
                n=n,
                out=str(out),
                seed=seed,
                overwrite=overwrite,
                named=config is not None,
                label=label,
                balanced_labels=labels,
            )
    except GenparError as e:
        fail(str(e), code=1)
    console.print(
        f"[bold green]wrote {n} samples[/] from {result['model']} to {result['out']} "
        f"({result['samples_per_s']:.0f} samples/s); grid: {result['grid']}",
        highlight=False,
    )
