"""Lineage: which code produced a run, recorded as run tags and on every registered version.

genpar's own version, the git commit when genpar runs from a checkout (with whether tracked
files differ from that commit, and a hash of that difference, so a dirty tree is still told
apart from another dirty tree), and the versions of the libraries that decide the numbers:
torch, prefect, mlflow, dask and numpy. The nightly retrain compares it with the champion's:
a new torch or a new commit is a reason to train again even when data and config are the same.

Versions come from `importlib.metadata` (nothing is imported, so the library stays free of
prefect and dask). Untracked files do not count as dirty: build outputs and virtualenvs are
untracked, and genpar's code is not.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

from genpar_models import __version__

TAG_PREFIX = "genpar.lineage."
PACKAGES = ("torch", "prefect", "mlflow", "dask", "numpy")
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root, when genpar is a checkout


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout


def git_state(root: Path = CHECKOUT) -> dict[str, str]:
    """{git_commit, git_dirty[, git_diff]} of a checkout; {} when genpar is not one (an
    installed wheel) or git cannot read it (no git, a repository owned by someone else)."""
    if not ((root / ".git").exists() and (root / "pyproject.toml").is_file()):
        return {}
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no").strip())
        diff = _git(root, "diff", "HEAD") if dirty else ""
    except (OSError, subprocess.SubprocessError):
        return {}
    state = {"git_commit": commit, "git_dirty": str(dirty).lower()}
    if dirty:
        state["git_diff"] = hashlib.sha256(diff.encode()).hexdigest()[:16]
    return state


@functools.lru_cache(maxsize=1)
def lineage() -> dict[str, str]:
    """This process's lineage (computed once per process: git is asked once)."""
    return {
        "genpar": __version__,
        **git_state(),
        **{name: _package_version(name) for name in PACKAGES},
    }


def lineage_tags(found: dict[str, str] | None = None) -> dict[str, str]:
    """The lineage as tags: `genpar.lineage.<field>`."""
    return {f"{TAG_PREFIX}{k}": v for k, v in (found or lineage()).items()}


def recorded_lineage(tags: dict[str, str]) -> dict[str, str]:
    """The lineage among a run's (or a version's) tags; {} when none was recorded."""
    return {k[len(TAG_PREFIX) :]: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}
