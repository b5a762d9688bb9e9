"""What every task shares: the retry policy, a logger that works inside and outside Prefect, and
imports started ahead of the task that needs them."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from genpar_models.errors import GenparError


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O hiccups, never bad input or config: those fail the same way every time."""
    try:
        state.result()
    except GenparError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return False


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("genpar")


_started: set[str] = set()
_warmed: set[Callable[[], None]] = set()
_started_lock = threading.Lock()


def import_meanwhile(
    *modules: str, then: Callable[[], None] | None = None
) -> threading.Thread | None:
    """Import third-party `modules` on a daemon thread, each once per process, while this
    thread waits on something else (the training task on torchrun), so that the stages after it
    find them loaded instead of paying the import in turn (torch + torchmetrics: 2.5 s of the
    evaluation on 2 cores; issue 18); then run `then` there (a warm-up of a module this
    process has already imported), once per process too. Returns the thread, or None when
    nothing was started.

    Only libraries that import no genpar, Prefect or Dask module: Python's per-module import
    locks make a thread that needs a module the other is importing wait until it is whole,
    and two threads can deadlock only when each holds a module the other wants, which a
    library that never imports back into genpar does not. A failed import is left to the
    stage that needs the module, which raises it. GENPAR_IMPORT_AHEAD=0 turns this off."""
    if os.environ.get("GENPAR_IMPORT_AHEAD", "1") == "0":
        return None
    with _started_lock:
        todo = [m for m in modules if m not in _started and m not in sys.modules]
        _started.update(todo)
        warm = None
        if then is not None and then not in _warmed:
            _warmed.add(then)
            warm = then
    if not todo and warm is None:
        return None
    thread = threading.Thread(target=_import_all, args=(todo, warm), name="genpar-import-ahead")
    thread.daemon = True  # never holds the process at exit
    thread.start()
    return thread


def _import_all(modules: list[str], then: Callable[[], None] | None) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - the stage that needs it imports it and raises
            logging.getLogger("genpar").debug("importing %s ahead failed: %s", module, e)
    if then is not None:
        try:
            then()
        except Exception as e:  # noqa: BLE001 - a warm-up only saves time later
            logging.getLogger("genpar").debug("warming up ahead failed: %s", e)
