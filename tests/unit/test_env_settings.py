"""Seconds read from environment variables fail by the variable's name."""

from __future__ import annotations

import pytest

from genpar_models.errors import ConfigError
from genpar_models.util.env import env_seconds
from infra.team import CRASH_AFTER_DEFAULT_S, CRASH_AFTER_ENV, TeamError, crash_after_s
from tasks.uploads import ARTIFACT_RETRY_DEFAULT_S, ARTIFACT_RETRY_ENV, artifact_retry_s


def test_unset_or_blank_gives_the_default(monkeypatch):
    monkeypatch.delenv("GENPAR_TEST_S", raising=False)
    assert env_seconds("GENPAR_TEST_S", 7.5) == 7.5
    monkeypatch.setenv("GENPAR_TEST_S", "  ")
    assert env_seconds("GENPAR_TEST_S", 7.5) == 7.5
    monkeypatch.setenv("GENPAR_TEST_S", " 0.25 ")
    assert env_seconds("GENPAR_TEST_S", 7.5) == 0.25


@pytest.mark.parametrize("raw", ["2m", "nan", "inf", "-1"])
def test_bad_values_name_the_variable(monkeypatch, raw):
    monkeypatch.setenv("GENPAR_TEST_S", raw)
    with pytest.raises(ConfigError, match=f"GENPAR_TEST_S='{raw}'"):
        env_seconds("GENPAR_TEST_S", 1.0)


def test_the_settings_that_use_it(monkeypatch):
    monkeypatch.delenv(ARTIFACT_RETRY_ENV, raising=False)
    monkeypatch.delenv(CRASH_AFTER_ENV, raising=False)
    assert artifact_retry_s() == ARTIFACT_RETRY_DEFAULT_S
    assert crash_after_s() == CRASH_AFTER_DEFAULT_S
    monkeypatch.setenv(ARTIFACT_RETRY_ENV, "soon")
    with pytest.raises(ConfigError, match=ARTIFACT_RETRY_ENV):
        artifact_retry_s()
    monkeypatch.setenv(CRASH_AFTER_ENV, "45")
    assert crash_after_s() == 45
    monkeypatch.setenv(CRASH_AFTER_ENV, "10")  # within the heartbeat: live runs would crash
    with pytest.raises(TeamError, match="heartbeat"):
        crash_after_s()
