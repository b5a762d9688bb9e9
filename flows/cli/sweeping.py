"""Sweeps: `genpar sweep` (train many configurations at once, stop the losers early)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.app import app
from flows.cli.common import (
    SetOpt,
    UriOpt,
    console,
    fail,
    flow_run_settings,
    prefect_defaults,
)
from flows.cli.prefect_server import server_starting_alongside
from genpar_models.errors import GenparError

PANEL = "Run pipelines"


def load_sweep_or_fail(path: Path, overrides: list[str] | None, **updates: bool):
    """The sweep file (base config with overrides) checked whole, trials included; any error
    exits with status 2 before Prefect starts."""
    from genpar_models.config.sweep import load_sweep
    from tasks.sweep import check_sweep

    try:
        sweep = load_sweep(path, overrides or [])
        sweep = sweep.model_copy(update={k: v for k, v in updates.items() if v})
        plan = check_sweep(sweep)
    except GenparError as e:
        fail(str(e))
    return sweep, plan


@app.command(rich_help_panel=PANEL)
def sweep(
    sweep_file: Annotated[
        Path, typer.Argument(help="Sweep file YAML (see configs/tiny-sweep.yaml).")
    ],
    set_: SetOpt = None,
    fail_fast: Annotated[
        bool, typer.Option("--fail-fast", help="Stop the sweep at the first failed trial.")
    ] = False,
    promote: Annotated[
        bool,
        typer.Option(
            "--promote",
            help="Give the best trial the champion alias if it beats the "
            "champion by the base config's retrain.rule.",
        ),
    ] = False,
) -> None:
    """Train a sweep's trials at once (torchrun jobs packed onto the machine), with successive
    halving; one parent MLflow run with a child per trial. Re-running the same command after a
    crash continues it: finished trials are not trained again."""
    spec, plan = load_sweep_or_fail(sweep_file, set_, fail_fast=fail_fast, promote=promote)
    prefect_defaults()
    console.print(
        f"[bold]genpar[/] sweep [cyan]{spec.name}[/]: {len(plan.trials)} trial(s) "
        f"({spec.search}), {plan.concurrency} at once"
    )
    with server_starting_alongside():
        from flows.sweep import sweep_flow

    try:
        with flow_run_settings():
            summary = sweep_flow(spec)
    except GenparError as e:
        fail(str(e), code=1)
    table = Table(title=f"sweep {spec.name}", show_header=True)
    for column in summary["trials"][0] if summary["trials"] else []:
        table.add_column(column)
    for row in summary["trials"]:
        table.add_row(
            *(
                "" if v is None else f"{v:.5g}" if isinstance(v, float) else str(v)
                for v in row.values()
            )
        )
    console.print(table)
    best = summary["best"]
    if best:
        console.print(
            f"[bold green]best[/] {best['id']}: {spec.objective.metric} = "
            f"{best['objective']:.5g}, MLflow run [cyan]{best['run_id']}[/], "
            f"version {best.get('model_version')}"
        )
    console.print(f"  parent MLflow run [cyan]{summary['run_id']}[/]: {summary['url']}")


@app.command(rich_help_panel="Runs and configs")
def gc(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be removed; remove nothing.")
    ] = False,
    uri: UriOpt = None,
) -> None:
    """Free disk: checkpoints of finished, stopped and failed runs beyond the newest, shard sets
    no run references, cached model downloads; never what unfinished runs or the champions'
    lineage need."""
    from genpar_models.config import PipelineConfig
    from tasks import mlflow_store as store
    from tasks.gc import apply_gc, plan_gc

    try:
        plan = plan_gc(store.resolve_uri(PipelineConfig(tracking={"uri": uri})))
    except GenparError as e:
        fail(str(e), code=1)
    verb = "would remove" if dry_run else "removed"
    for r in plan.removals:
        console.print(f"{verb} {r.path}  ({_mib(r.bytes)}, {r.why})", highlight=False)
    if not dry_run:
        apply_gc(plan)
    console.print(
        f"[bold]{verb} {len(plan.removals)} item(s), {_mib(plan.freed)}[/]; kept "
        f"{len(plan.kept)} protected item(s)"
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
