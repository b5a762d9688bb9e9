"""tracking.password_secret: a deployment's flow runs read the MLflow password from a Prefect
Secret block, never from their parameters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from genpar_models.config import PipelineConfig
from genpar_models.errors import ConfigError
from tasks import mlflow_store

pytestmark = [pytest.mark.integration]


def test_the_password_comes_from_a_prefect_secret_block(
    prefect_server, tracked_home: Path, tiny: PipelineConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    Secret(value="from-the-block").save("genpar-test-mlflow-password", overwrite=True)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    tracking = tiny.tracking.model_copy(update={"password_secret": "genpar-test-mlflow-password"})
    cfg = tiny.model_copy(update={"tracking": tracking})
    assert "from-the-block" not in cfg.model_dump_json()  # the parameters hold only its name
    mlflow_store.load_password_secret(cfg)
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "from-the-block"

    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    missing = tracking.model_copy(update={"password_secret": "no-such-block"})
    with pytest.raises(ConfigError, match="tracking.password_secret='no-such-block'"):
        mlflow_store.load_password_secret(tiny.model_copy(update={"tracking": missing}))
