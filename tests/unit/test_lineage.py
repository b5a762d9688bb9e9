"""Lineage: genpar's version, the checkout's commit and dirty flag, the libraries' versions."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from genpar_models import __version__
from genpar_models.util.lineage import (
    PACKAGES,
    git_state,
    lineage,
    lineage_tags,
    recorded_lineage,
)


def test_lineage_names_genpar_and_the_libraries() -> None:
    found = lineage()
    assert found["genpar"] == __version__
    assert set(PACKAGES) == {"torch", "prefect", "mlflow", "dask", "numpy"}
    assert all(found[p] and found[p] != "not installed" for p in PACKAGES)
    assert found["torch"].startswith("2.13.0")
    tags = lineage_tags()
    assert tags["genpar.lineage.torch"] == found["torch"]
    assert recorded_lineage({**tags, "other": "x"}) == found


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_git_state_of_a_checkout(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {}  # not a checkout: an installed genpar records no commit
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    clean = git_state(repo)
    assert len(clean["git_commit"]) == 40 and clean["git_dirty"] == "false"
    assert "git_diff" not in clean
    (repo / "untracked.txt").write_text("build output")
    assert git_state(repo) == clean  # untracked files do not make the tree dirty
    (repo / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    dirty = git_state(repo)
    assert dirty["git_dirty"] == "true" and dirty["git_commit"] == clean["git_commit"]
    (repo / "pyproject.toml").write_text("[project]\nname = 'z'\n")
    assert git_state(repo)["git_diff"] != dirty["git_diff"]  # another edit, another lineage


def test_git_state_without_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert git_state(tmp_path) == {}
