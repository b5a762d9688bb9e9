"""Runs and configs: `genpar runs` (list and rank), `genpar config`, `genpar ui`, `genpar home`,
and `genpar migrate` (a home's MLflow records to another server)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows.cli.app import app
from flows.cli.common import SetOpt, UriOpt, console, err, fail, load_or_fail
from genpar_models.errors import GenparError
from genpar_models.util.paths import HOME_ENV, genpar_home

PANEL = "Runs and configs"


@app.command(rich_help_panel=PANEL)
def runs(
    experiment: Annotated[
        str | None,
        typer.Option("--experiment", "-e", help="Only this experiment (default: all of genpar's)."),
    ] = None,
    sort: Annotated[
        str | None,
        typer.Option(
            "--sort", help="Sort by this metric, e.g. eval/bits_per_dim (default: newest first)."
        ),
    ] = None,
    desc: Annotated[bool, typer.Option("--desc", help="Sort the metric descending.")] = False,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", "-m", help="Metric column (repeatable).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Rows to show.")] = 20,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    uri: UriOpt = None,
    protocol: Annotated[
        str | None,
        typer.Option(
            "--protocol", help="Only runs evaluated under this protocol id (or its prefix)."
        ),
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(
            "--sweep", help="A sweep's parent run id: its trials, ranked by its objective."
        ),
    ] = None,
) -> None:
    """A table of recent runs with their key params and metrics, sortable by a metric.

    Sorting by an eval/ metric refuses runs evaluated under different protocols.
    """
    from tasks.listing import list_runs

    if fmt not in ("table", "csv", "json"):
        fail(f"--format must be table, csv or json, got {fmt!r}")
    try:
        rows, columns = list_runs(
            uri=uri,
            experiment=experiment,
            sort=sort,
            desc=desc,
            metrics=metric,
            limit=limit,
            protocol=protocol,
            sweep=sweep,
        )
    except GenparError as e:
        fail(str(e), code=1)
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    elif not rows:
        console.print("no runs yet: try `genpar run configs/tiny.yaml`")
    else:
        table = Table(show_header=True, header_style="bold")
        for col in columns:
            table.add_column(col, justify="right" if "/" in col else "left", no_wrap=True)
        for row in rows:
            table.add_row(*[row.get(c, "") for c in columns])
        wide = console if console.is_terminal else Console(width=250)
        wide.print(table)


@app.command("config", rich_help_panel=PANEL)
def show_config(
    config: Annotated[
        Path | None, typer.Argument(help="Config YAML (default: the built-in defaults).")
    ] = None,
    set_: SetOpt = None,
    reference: Annotated[
        bool, typer.Option("--reference", help="Print every field as a Markdown table instead.")
    ] = False,
) -> None:
    """Validate a config (with overrides) and print it fully resolved, defaults included."""
    if reference:
        from genpar_models.config import config_reference

        print(config_reference(), end="")
        return
    from genpar_models.config import dump_config

    cfg = load_or_fail(config, set_)
    console.print(dump_config(cfg), end="", highlight=False, markup=False)


@app.command(rich_help_panel=PANEL)
def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    uri: UriOpt = None,
) -> None:
    """Open the MLflow UI on the local store (127.0.0.1 only); Ctrl-C stops it."""
    from genpar_models.config import PipelineConfig
    from tasks.mlflow_store import resolve_uri

    store_uri = resolve_uri(PipelineConfig(tracking={"uri": uri}))
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [
        mlflow,
        "ui",
        "--backend-store-uri",
        store_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if store_uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", str(Path(store_uri[10:]).parent / "artifacts")]
    console.print(f"MLflow UI on http://127.0.0.1:{port} (store {store_uri}); Ctrl-C to stop")
    raise typer.Exit(subprocess.call(cmd))


@app.command(rich_help_panel=PANEL)
def home() -> None:
    """Print the genpar home directory (set it with the GENPAR_HOME environment variable)."""
    console.print(str(genpar_home()), highlight=False)
    if HOME_ENV not in os.environ:
        err.print(f"(default; set {HOME_ENV} to move it)")


@app.command(rich_help_panel=PANEL)
def migrate(
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Target MLflow tracking URI, e.g. http://mlflow.team:5000 (credentials from "
            "MLFLOW_TRACKING_USERNAME/PASSWORD). Default: the running team or local stack's "
            "MLflow, with its credentials.",
        ),
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Source store (default: this genpar home's embedded one)."),
    ] = None,
) -> None:
    """Copy this genpar home's runs (params, metric histories, tags, artifacts), registered
    models, versions and aliases to another MLflow server, through MLflow's APIs. Running it
    again copies only what is not there yet."""
    from flows.cli.common import prefect_defaults
    from genpar_models.util.paths import default_tracking_uri
    from tasks import migrate as migration
    from tasks.mlflow_store import move_credentials_to_env

    source = from_ or default_tracking_uri()
    prefect_defaults()  # the running stack's MLflow URI and credentials, when one runs
    target = to or os.environ.get("MLFLOW_TRACKING_URI")
    if not target or target == source:
        fail("genpar migrate: name the target with --to URI (no genpar stack is running)", code=2)
    try:
        report = migration.migrate(source, move_credentials_to_env(target), say=console.print)
    except GenparError as e:
        fail(str(e), code=1)
    console.print(f"migrated: {report.summary()}", highlight=False)
