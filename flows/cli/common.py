"""What every `genpar` command module shares: consoles, option types, the one way to load a
config or fail, error exit, and the environment defaults for Prefect and MLflow."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from genpar_models.config import PipelineConfig

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


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def load_or_fail(config: str | Path | None, overrides: list[str] | None) -> PipelineConfig:
    """The config file (or the defaults) with `--set` overrides, checked against the model
    families; any error exits with status 2 before Prefect, Dask or torch are imported."""
    from genpar_models.config import load_config
    from genpar_models.errors import GenparError
    from genpar_models.models import check_model_config

    prefect_defaults()  # first: a running stack's settings are defaults of the config too
    try:
        cfg = load_config(config, overrides or [])
        check_model_config(cfg)
    except GenparError as e:
        fail(str(e))
    return cfg


_DEFAULTS_SET = False


def prefect_defaults() -> None:
    """Environment defaults for Prefect and MLflow (a user's own settings win).

    While the local stack runs (`genpar up`), its servers are the defaults (with the team
    stack, its Dask cluster is compute.dask_address's default). Once per process.
    """
    global _DEFAULTS_SET
    if _DEFAULTS_SET:
        return
    _DEFAULTS_SET = True
    from infra.stack import use_stack

    note = use_stack()
    if note:
        err.print(f"[yellow]warning:[/] {note}", highlight=False)
    # Prefect cannot create its database in a PREFECT_HOME that does not exist yet: its
    # temporary server then times out (minutes) instead of saying so.
    if os.environ.get("PREFECT_HOME"):
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    # Offline hosts: Prefect's server telemetry only produces errors (shared/STACK.md §0).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The first ephemeral start creates and migrates Prefect's database: measured 21 s on
    # 2 cores against Prefect's default 20 s limit, so a fresh machine would fail at random.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


HEARTBEAT_ENV = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


@contextlib.contextmanager
def flow_run_settings() -> Iterator[None]:
    """Prefect settings for the flow a command runs in this process: no flow-run heartbeats
    unless the environment asks for them (PREFECT_FLOWS_HEARTBEAT_FREQUENCY).

    Prefect beats every 180 s by default from a thread that sleeps in 1 s steps, and joins
    it when the flow ends: every flow run waited up to a second after its final state (an
    empty flow: 1.06-1.39 s with the thread, 0.09-0.10 s without, measured side by side).
    Only an automation reads the beats, and genpar installs one only on the team stack
    (`genpar up --team`), whose client environment sets the frequency (infra/stack.py) as
    its worker's does; nothing watches them in ephemeral mode or on the local stack."""
    if any(os.environ.get(k) for k in HEARTBEAT_ENV):
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def use_servers(required: bool) -> None:
    """The environment defaults (the local stack while it runs); with `required`, fail unless
    a Prefect server answers at PREFECT_API_URL (what `genpar serve` needs)."""
    from infra.processes import http_ok

    prefect_defaults()
    api = os.environ.get("PREFECT_API_URL")
    if required and not api:
        fail(
            "genpar serve needs a Prefect server: start the local stack with `genpar up`, "
            "or set PREFECT_API_URL to yours",
            code=1,
        )
    if required and not http_ok(f"{api.rstrip('/')}/health", timeout_s=10):
        fail(f"the Prefect server at PREFECT_API_URL={api} does not answer /health", code=1)


ModelArg = Annotated[
    str,
    typer.Argument(
        help="Model reference: a run id, models:/NAME/VERSION, models:/NAME@ALIAS, NAME@ALIAS, "
        "champion, or a model directory."
    ),
]
