"""`genpar`: the command-line front door, one module per group of what a user does.

    running.py   run, retrain               run a pipeline, or the nightly retrain, now
    sweeping.py  sweep                      train many configurations at once
    models.py    evaluate, compress, generate   work on a logged or registered model
    champion.py  promote, rollback, champion    move the champion alias by hand, its history
    runs.py      runs, config, ui, home,    list and rank runs, inspect configs, open MLflow,
                 migrate                    copy a home's records to another MLflow
    stack.py     up, down, restart, status, serve    the local stack and its deployments
    common.py    consoles, options, `load_or_fail`, Prefect/MLflow environment defaults
    docs.py      regenerate the README's config reference (`python -m flows.cli.docs`)

Every module adds its commands to the one app (`@app.command()`). Config errors are reported
before Prefect, Dask or torch are even imported, so a typo costs milliseconds, not a cluster
start.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn

import typer

from flows.cli.app import app
from flows.cli.common import prefect_defaults

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
    """The console script: run the command, then leave without the interpreter's teardown."""
    try:
        app()  # standalone mode: always ends in SystemExit (Click's ctx.exit or a failure)
    except SystemExit as e:
        _exit_now(e.code)
    _exit_now(0)


def _exit_now(code: object) -> NoReturn:
    """Exit the way the interpreter would, minus its final teardown.

    With torch, MLflow, Prefect and pandas loaded, finalising modules and collecting their
    garbage cost `genpar run` 4.5 s on a quiet 2-core machine and 7.5 s under load after the
    summary was printed (py-spy: the main thread busy in C with no Python frame left), and it
    buys nothing: results are written whole and closed by then. So run what the interpreter runs
    before that teardown, in its order, then `os._exit`: threading's exit hooks and the join of
    non-daemon threads (Prefect drains its log and event workers to the API here), then the
    atexit handlers (Prefect stops its temporary server, logging flushes its handlers), then
    flush stdout and stderr. An exception other than SystemExit still leaves the usual way.
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): what the interpreter prints, with status 1
        print(code, file=sys.stderr)
        status = 1
    shutdown = getattr(threading, "_shutdown", None)  # CPython's own first step of exiting
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # a closed pipe (genpar runs | head): nothing left to keep
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
