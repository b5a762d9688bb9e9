"""Where genpar keeps its state on one machine: one home directory, overridable by GENPAR_HOME.

Layout::

    $GENPAR_HOME/shards/<key>/          committed shard sets (manifest.json + .npy)
    $GENPAR_HOME/runs/<experiment>/<run_id>/   run spec, checkpoints, torchrun logs, results
    $GENPAR_HOME/mlflow/mlflow.db       default MLflow tracking store (SQLite)
    $GENPAR_HOME/mlflow/artifacts/      default MLflow artifact root
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "GENPAR_HOME"


def genpar_home() -> Path:
    """The state directory: $GENPAR_HOME, else ~/.genpar (always absolute)."""
    raw = os.environ.get(HOME_ENV) or str(Path.home() / ".genpar")
    return Path(raw).expanduser().resolve()


def shards_root() -> Path:
    return genpar_home() / "shards"


def runs_root() -> Path:
    return genpar_home() / "runs"


def mlflow_root() -> Path:
    return genpar_home() / "mlflow"


def default_tracking_uri() -> str:
    """Absolute SQLite URI under the home dir (four slashes: sqlite:////abs/path)."""
    return "sqlite:///" + str(mlflow_root() / "mlflow.db")


def default_artifact_root() -> Path:
    return mlflow_root() / "artifacts"
