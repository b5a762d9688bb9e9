"""Credentials come from the environment, never from a config, a run spec or a parameter."""

from __future__ import annotations

import pytest

from genpar_models.config import PipelineConfig, load_config
from genpar_models.errors import ConfigError
from tasks import mlflow_store
from tests.conftest import REPO


def test_a_tracking_uri_with_a_password_is_refused_saying_what_to_do() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(REPO / "configs" / "tiny.yaml", ["tracking.uri=http://ml:s3cret@mlflow:5000"])
    message = str(exc.value)
    assert "tracking.uri" in message and "MLFLOW_TRACKING_PASSWORD" in message
    assert "password_secret" in message
    assert PipelineConfig(tracking={"uri": "http://mlflow:5000"}).tracking.uri


def test_credentials_in_the_environment_uri_move_to_their_own_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The URI genpar stores (run spec, summary, params) is the one resolve_uri returns."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ml:s%40cret@mlflow.example:5000/x")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    uri = mlflow_store.resolve_uri(PipelineConfig())
    assert uri == "https://mlflow.example:5000/x"
    import os

    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ml"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "s@cret"
    assert os.environ["MLFLOW_TRACKING_URI"] == uri  # what child processes inherit
