"""Running pipelines: `genpar run` (one pipeline, now), `genpar retrain` (the nightly, now) and
`genpar join` (another machine's share of a multi-node run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.app import app
from flows.cli.common import (
    ConfigArg,
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
from genpar_models.util.paths import genpar_home

PANEL = "Run pipelines"


@app.command(rich_help_panel=PANEL)
def run(config: ConfigArg, set_: SetOpt = None) -> None:
    """Run the pipeline once: preprocess -> train (torchrun) -> evaluate -> generate, in MLflow.

    Uses Prefect's ephemeral mode unless PREFECT_API_URL points at a server. State (shards,
    checkpoints, the default MLflow store) lives under $GENPAR_HOME (default ~/.genpar).
    """
    cfg = load_or_fail(config, set_)
    prefect_defaults()
    console.print(
        f"[bold]genpar[/] running [cyan]{cfg.name}[/] ({cfg.model.name} on "
        f"{cfg.data.source}), home {genpar_home()}"
    )
    with server_starting_alongside():
        from flows.pipeline import pipeline
        from tasks.preflight import open_tracking_store_early

        open_tracking_store_early(cfg)
    try:
        with flow_run_settings():
            summary = pipeline(cfg)
    except GenparError as e:
        fail(str(e), code=1)
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    table = Table(title="metrics", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(summary["metrics"].items()):
        table.add_row(key, f"{value:.5g}")
    console.print(table)
    console.print(
        f"[bold green]done[/]  MLflow run [cyan]{summary['run_id']}[/] "
        f"(experiment {summary['experiment_id']})"
    )
    console.print(f"  tracking:  {summary['tracking_uri']}")
    console.print(f"  artifacts: {summary['artifact_uri']}")
    console.print(f"  run dir:   {summary['run_dir']}")
    page = f"#/experiments/{summary['experiment_id']}/runs/{summary['run_id']}"
    if summary["tracking_uri"].startswith("http"):  # a server: its own UI
        console.print(f"  in the MLflow UI: {summary['tracking_uri'].rstrip('/')}/{page}")
    else:
        console.print(
            f"  open the MLflow UI: [bold]genpar ui[/]  then http://127.0.0.1:5000/{page}"
        )


@app.command(rich_help_panel=PANEL)
def retrain(
    config: Annotated[Path, typer.Argument(help="Pipeline config YAML.")], set_: SetOpt = None
) -> None:
    """Run the nightly retrain once, now: promote a challenger only if it wins by retrain.rule.

    When data, config and lineage are unchanged since the champion it trains nothing
    (retrain.force: true trains anyway).
    """
    cfg = load_or_fail(config, set_)
    use_servers(required=False)
    with server_starting_alongside():
        from flows.nightly import nightly_retrain

    try:
        with flow_run_settings():
            result = nightly_retrain(cfg)
    except GenparError as e:
        fail(str(e), code=1)
    console.print(f"[bold]{result['decision']['action']}[/]: {result['decision']['reason']}")
    if result["run_id"]:
        console.print(
            f"challenger: MLflow run {result['run_id']}, version {result['model_version']}"
        )


@app.command(rich_help_panel=PANEL)
def join(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of the run to join.")],
    rdzv_endpoint: Annotated[
        str,
        typer.Option("--rdzv-endpoint", help="HOST:PORT of the rendezvous (the flow's node)."),
    ],
    local_addr: Annotated[
        str | None,
        typer.Option(
            "--local-addr",
            help="This machine's address that the others reach (default: the one on the route "
            "to the rendezvous host).",
        ),
    ] = None,
    wait_s: Annotated[
        float, typer.Option("--wait-s", help="Seconds to wait for the run spec to appear.")
    ] = 600.0,
) -> None:
    """Join a multi-node run (compute.nnodes > 1) from this machine: reads the run spec from
    the shared genpar home and starts this node's torchrun agent, to the end of training."""
    from tasks.join import join_training

    try:
        join_training(run_id, rdzv_endpoint=rdzv_endpoint, local_addr=local_addr, wait_s=wait_s)
    except GenparError as e:  # a config error, or the job's failure (the rank's own error)
        fail(str(e), code=1)
    console.print(f"[bold green]done[/]  this node's share of run [cyan]{run_id}[/]")
