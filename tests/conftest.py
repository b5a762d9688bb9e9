"""Shared fixtures: an isolated genpar home per test, the tiny config, small shard sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from genpar_models.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"

# Outside the Prefect test harness an accidental ephemeral server must fail loudly instead of
# leaving orphans that hang pipes (shared/STACK.md section 5).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh GENPAR_HOME, and no inherited MLflow URI."""
    monkeypatch.setenv("GENPAR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


@pytest.fixture
def tiny() -> PipelineConfig:
    return load_config(TINY)
