"""Integration fixtures: one real Prefect test server per session, a pre-migrated MLflow store."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from genpar_models.util.paths import default_tracking_uri
from tests.helpers import MlflowServer


@pytest.fixture(scope="session")
def prefect_server():
    """A real (temporary) Prefect API for flows run in this process (shared/STACK.md 1.2),
    with the settings `genpar`'s commands run their flows with (no idle heartbeats)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.cli.common import flow_run_settings

    with prefect_test_harness(server_startup_timeout=120), flow_run_settings():
        yield


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated SQLite tracking DB, created once (fresh init costs ~1.5 s)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def tracked_home(home: Path, mlflow_template: Path) -> Path:
    """GENPAR_HOME with the default MLflow store already migrated."""
    target = Path(default_tracking_uri()[len("sqlite:///") :])
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(mlflow_template, target)
    return home


@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_template: Path) -> Iterator[MlflowServer]:
    """A real `mlflow server` on 127.0.0.1 over a copy of the migrated template, which a test
    may stop and start again; killed at the end."""
    server = MlflowServer(tmp_path / "server.db", mlflow_template)
    server.start()
    try:
        yield server
    finally:
        server.stop()
