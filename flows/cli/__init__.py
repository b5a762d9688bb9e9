"""`genpar`: the command-line front door, one module per group of what a user does.

    running.py   run, retrain               run a pipeline, or the nightly retrain, now
    sweeping.py  sweep                      train many configurations at once
    models.py    evaluate, compress, generate   work on a logged or registered model
    champion.py  promote, rollback, champion    move the champion alias by hand, its history
    runs.py      runs, config, ui, home,    list and rank runs, inspect configs, open MLflow,
                 migrate                    copy a home's records to another MLflow
    stack.py     up, down, restart, status, serve    the local stack and its deployments
    common.py    consoles, options, `load_or_fail`, Prefect/MLflow environment defaults
    prefect_server.py  Prefect's temporary server, started before Prefect is imported
    docs.py      regenerate the README's config reference (`python -m flows.cli.docs`)

Every module adds its commands to the one app (`@app.command()`). Config errors are reported
before Prefect, Dask or torch are even imported, so a typo costs milliseconds, not a cluster
start.
"""

from __future__ import annotations

import typer

from flows.cli.app import app
from flows.cli.common import prefect_defaults
from genpar_models.util import malloc
from genpar_models.util.leave import exit_now

# Each module registers its commands on import; the import order is the order of `--help`.
# isort: off
from flows.cli import running  # noqa: F401, E402
from flows.cli import sweeping  # noqa: F401, E402
from flows.cli import models  # noqa: F401, E402
from flows.cli import champion  # noqa: F401, E402
from flows.cli import runs  # noqa: F401, E402
from flows.cli import stack  # noqa: F401, E402
# isort: on

__all__ = ["app", "main"]

# Commands that manage the stack itself: they read its state, they must not be pointed at it.
_STACK_COMMANDS = {"up", "down", "restart", "status"}


@app.callback()
def _environment(ctx: typer.Context) -> None:
    """Before any command imports Prefect (whose settings are read once, at import), point the
    environment at a running stack and set genpar's Prefect defaults (flows/cli/common.py)."""
    if ctx.invoked_subcommand not in _STACK_COMMANDS:
        prefect_defaults()


def main() -> None:
    """The console script: run the command, then leave without the interpreter's teardown
    (genpar_models/util/leave.py: 3.9-6.4 s after `genpar run` printed its summary)."""
    malloc.tune()  # this process and every one it starts (genpar_models/util/malloc.py)
    try:
        app()  # standalone mode: always ends in SystemExit (Click's ctx.exit or a failure)
    except SystemExit as e:
        exit_now(e.code)
    exit_now(0)


if __name__ == "__main__":
    main()
