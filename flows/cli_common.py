"""What every `genpar` command module shares: consoles, option types, error exit, env defaults."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # paths in messages stay whole

ConfigArg = Annotated[Path, typer.Argument(help="Pipeline config YAML (see configs/).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a field: --set train.lr=3e-4 (repeatable; "
        "values are YAML, so 3, 3.0, true, null and [1, 2] work).",
    ),
]
UriOpt = Annotated[
    str | None,
    typer.Option(
        "--uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the "
        "SQLite store under the genpar home).",
    ),
]


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def prefect_defaults() -> None:
    """Environment defaults for Prefect and MLflow (a user's own settings win).

    While the local stack runs (`genpar up`), its servers are the defaults.
    """
    from flows.stack import use_stack

    note = use_stack()
    if note:
        err.print(f"[yellow]warning:[/] {note}", highlight=False)
    # Offline hosts: Prefect's server telemetry only produces errors (shared/STACK.md §0).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The first ephemeral start creates and migrates Prefect's database: measured 21 s on
    # 2 cores against Prefect's default 20 s limit, so a fresh machine would fail at random.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


@contextlib.contextmanager
def server_starting_alongside() -> Iterator[None]:
    """In Prefect's ephemeral mode, start the temporary API server while the body imports the
    flow, not after it.

    The server is its own process (uvicorn, app import, database: ~7 s on 2 cores) and the
    flow's imports (torch, MLflow, torchmetrics: ~7 s) run in this one, so on two cores they
    overlap. A thread starts it and waits for its health check; the body's end waits for that
    thread. A failed start is left to Prefect's own start on first use, which reports it.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's client uses (one per port)

    def start() -> None:
        with contextlib.suppress(Exception):
            server.start()

    starter = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    starter.start()
    try:
        yield
    finally:
        starter.join()


ModelArg = Annotated[
    str,
    typer.Argument(
        help="Model reference: a run id, models:/NAME/VERSION, models:/NAME@ALIAS, NAME@ALIAS, "
        "champion, or a model directory."
    ),
]
