"""The Prefect settings genpar's commands run their flows with (flows/cli/common.py)."""

from __future__ import annotations

import pytest
from prefect import flow
from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    get_current_settings,
    temporary_settings,
)

from flows.cli.common import flow_run_settings


@flow
def heartbeat_probe() -> int | None:
    return get_current_settings().flows.heartbeat_frequency


def test_flow_runs_beat_only_when_the_environment_asks(
    prefect_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 180}):  # Prefect's
        assert heartbeat_probe() == 180
        with flow_run_settings():
            assert heartbeat_probe() is None  # no heartbeat thread to join at the end
        # the team stack's client environment asks for beats: they are kept
        monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
        with (
            temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}),
            flow_run_settings(),
        ):
            assert heartbeat_probe() == 30
