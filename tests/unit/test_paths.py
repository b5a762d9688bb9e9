"""The home directory layout: absolute paths, and report directories that never collide."""

from __future__ import annotations

from pathlib import Path

import pytest

from genpar_models.util.paths import default_tracking_uri, genpar_home, report_dir


def test_home_is_absolute_and_the_tracking_uri_has_four_slashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENPAR_HOME", "relative/home")
    assert genpar_home() == tmp_path / "relative" / "home"
    assert (
        default_tracking_uri()
        == f"sqlite:////{tmp_path.as_posix().lstrip('/')}/relative/home/mlflow/mlflow.db"
    )


def test_report_dirs_are_new_file_safe_and_under_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENPAR_HOME", str(tmp_path))
    first = report_dir("evaluate", "models:/digits vae@champion")
    second = report_dir("evaluate", "models:/digits vae@champion")
    assert first != second and first.is_dir() and second.is_dir()
    assert first.parent == tmp_path / "reports"
    assert first.name.startswith("evaluate-") and first.name.endswith("models_digits_vae_champion")
    escaped = report_dir("compress", "../../etc")  # a reference never walks out of the home
    assert escaped.parent == tmp_path / "reports" and escaped.name.endswith("-etc")
