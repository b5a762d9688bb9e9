"""What every task shares: the retry policy and a logger that works inside and outside Prefect."""

from __future__ import annotations

import logging
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
