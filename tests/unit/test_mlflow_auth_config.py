"""The MLflow auth configuration that `genpar up --auth` and `genpar up --team` write, as
MLflow's own reader parses it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.server.auth.config import read_auth_config

from infra import credentials


def test_a_checked_password_is_remembered_for_a_minute_not_rehashed_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = {"mlflow_username": "admin", "mlflow_password": "p", "flask_secret_key": "k"}
    env = credentials.server_env("mlflow", creds, tmp_path)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", env["MLFLOW_AUTH_CONFIG_PATH"])
    config = read_auth_config()
    assert config.auth_cache_ttl_seconds == credentials.MLFLOW_AUTH_CACHE_S == 60
    assert config.default_permission == "READ"
    assert config.database_uri == f"sqlite:///{tmp_path / 'mlflow_auth.db'}"
