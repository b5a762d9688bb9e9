"""Where genpar keeps its state on one machine: one home directory, overridable by GENPAR_HOME.

Layout::

    $GENPAR_HOME/shards/<key>/          committed shard sets (manifest.json + .npy)
    $GENPAR_HOME/runs/<experiment>/<run_id>/   run spec, checkpoints, torchrun logs, results
    $GENPAR_HOME/reports/<kind>-<time>-<model>/   reports of genpar evaluate / compress
    $GENPAR_HOME/mlflow/mlflow.db       default MLflow tracking store (SQLite)
    $GENPAR_HOME/mlflow/artifacts/      default MLflow artifact root
"""

from __future__ import annotations

import os
import re
import time
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


def report_dir(kind: str, model: str) -> Path:
    """A new directory for one `genpar evaluate`/`compress` report, kept under the home dir.

    Named `<kind>-<UTC time>-<model reference, made file-safe>`; a unique suffix is added
    when two start in the same second.
    """
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", model)[-48:].strip("_-") or "model"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = genpar_home() / "reports" / f"{kind}-{stamp}-{safe}"
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


def mlflow_root() -> Path:
    return genpar_home() / "mlflow"


def default_tracking_uri() -> str:
    """Absolute SQLite URI under the home dir (four slashes: sqlite:////abs/path)."""
    return "sqlite:///" + str(mlflow_root() / "mlflow.db")


def default_artifact_root() -> Path:
    return mlflow_root() / "artifacts"


def read_probe(path: str, token: str) -> bool | str:
    """On a Dask worker: whether `path` holds `token` (True), else what went wrong. The flow
    writes the probe under the genpar home; a worker that cannot read it does not share it."""
    try:
        return True if Path(path).read_text() == token else f"{path} holds something else"
    except OSError as e:
        return f"{type(e).__name__}: {e}"
