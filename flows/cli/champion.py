"""Manual control of the champion: `genpar promote`, `genpar rollback`, `genpar champion`.

They talk to the MLflow registry only (no Prefect, no flow): the alias moves by
compare-and-set (tasks/champion.py) and every move is recorded with who, when and why, on the
version and in the alias history that `genpar champion NAME` prints.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.app import app
from flows.cli.common import UriOpt, console, fail, prefect_defaults
from genpar_models.errors import GenparError

PANEL = "Champion"

NameArg = Annotated[str, typer.Argument(help="Registered model name (default: the pipeline name).")]
ReasonOpt = Annotated[
    str, typer.Option("--reason", "-r", help="Why: recorded on the version and in the history.")
]


def _client(uri: str | None):
    from genpar_models.config import PipelineConfig
    from tasks import mlflow_store as store

    prefect_defaults()  # the local stack's MLflow while it runs
    return store.connect(store.resolve_uri(PipelineConfig(tracking={"uri": uri})))


def _said(entry: dict) -> str:
    was = f"version {entry['previous']}" if entry["previous"] else "no champion"
    return f"{entry['action']}: version {entry['version']} (was {was}) by {entry['by']}"


@app.command(rich_help_panel=PANEL)
def promote(
    name: NameArg,
    version: Annotated[str, typer.Argument(help="The version that becomes the champion.")],
    reason: ReasonOpt = "manual promotion",
    uri: UriOpt = None,
) -> None:
    """Make VERSION of NAME the champion now (recorded: who, when, --reason)."""
    from tasks import champion, registry

    try:
        client = _client(uri)
        current = registry.alias_version(client, name, champion.ALIAS)
        entry = champion.move(
            client,
            name,
            version,
            expected=current,
            action="promote",
            reason=reason,
            by=champion.who(),
        )
    except GenparError as e:
        fail(str(e), code=1)
    if entry["action"] == "none":
        console.print(f"version {version} of {name} is already the champion; nothing changed")
        return
    console.print(f"[bold green]{name}@{champion.ALIAS}[/] {_said(entry)}", highlight=False)


@app.command(rich_help_panel=PANEL)
def rollback(name: NameArg, reason: ReasonOpt = "manual rollback", uri: UriOpt = None) -> None:
    """Put the previous champion of NAME back (recorded: who, when, --reason).

    Rolling back twice goes back two champions.
    """
    from tasks import champion

    try:
        entry = champion.rollback(_client(uri), name, reason=reason, by=champion.who())
    except GenparError as e:
        fail(str(e), code=1)
    console.print(f"[bold green]{name}@{champion.ALIAS}[/] {_said(entry)}", highlight=False)


@app.command(name="champion", rich_help_panel=PANEL)
def show_champion(
    name: NameArg,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="table, or json for scripts.")
    ] = "table",
    uri: UriOpt = None,
) -> None:
    """The champion of NAME and the history of its alias: when, what, which version, who, why."""
    from tasks import champion, registry

    if fmt not in ("table", "json"):
        fail(f"--format must be table or json, got {fmt!r}")
    try:
        client = _client(uri)
        entries = champion.history(client, name)
        current = registry.alias_version(client, name, champion.ALIAS)
    except GenparError as e:
        fail(str(e), code=1)
    run_id = client.get_model_version(name, current).run_id if current else None
    if fmt == "json":
        found = {"name": name, "champion": current, "run_id": run_id, "history": entries}
        console.print_json(json.dumps(found))
        return
    if current is None:
        console.print(f"{name} has no {champion.ALIAS} yet")
    else:
        console.print(f"{name}@{champion.ALIAS}: version {current} (MLflow run {run_id})")
    table = Table(title=f"{name}@{champion.ALIAS} history", show_lines=False)
    for column in ("when (UTC)", "action", "version", "previous", "by", "reason"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(
            e["time"], e["action"], e["version"], e["previous"] or "-", e["by"], e["reason"]
        )
    console.print(table if entries else "no moves recorded")
