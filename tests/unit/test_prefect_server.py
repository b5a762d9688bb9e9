"""genpar's early start of Prefect's temporary server (flows/cli/prefect_server.py), in real
processes: in ephemeral mode Prefect talks to the server genpar started (and never imports the
server app), which is gone when the process has left; a profile that names a server wins and
genpar's server is stopped at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

from tests.helpers import clean_env

PROBE = """
import os, sys, psutil
from flows.cli.prefect_server import server_starting_alongside
from genpar_models.util.leave import exit_now
with server_starting_alongside():
    pass
from prefect.settings import PREFECT_API_URL
from prefect.client.orchestration import get_client
print("api", PREFECT_API_URL.value(), flush=True)
print("children", [p.pid for p in psutil.Process().children(recursive=True)], flush=True)
print("app_imported", "prefect.server.api.server" in sys.modules, flush=True)
if sys.argv[1] == "ask":
    with get_client(sync_client=True) as client:
        print("health", client.api_healthcheck() is None, flush=True)
exit_now(0)
"""


def _probe(home: Path, *args: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


def test_ephemeral_mode_uses_the_early_server_and_stops_it_at_exit(tmp_path: Path) -> None:
    seen = _probe(tmp_path / "home", "ask")
    assert seen["api"].startswith("http://127.0.0.1:") and seen["api"].endswith("/api")
    assert seen["health"] == "True"  # Prefect's client reached genpar's server
    assert seen["app_imported"] == "False"  # the CLI never imports the server's app
    children = eval(seen["children"])  # noqa: S307 - a list of pids printed by the probe
    assert len(children) == 1  # the uvicorn server, and nothing else
    assert not [p for p in children if _alive(p)]  # stopped when the process left


def test_a_profile_naming_a_server_wins_and_the_early_server_stops(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "prefect").mkdir(parents=True)
    api = "http://127.0.0.1:9/api"  # never contacted: the probe only reads the settings
    (home / "prefect" / "profiles.toml").write_text(
        f'active = "mine"\n\n[profiles.mine]\nPREFECT_API_URL = "{api}"\n'
    )
    seen = _probe(home, "settings-only")
    assert seen["api"] == api
    assert seen["children"] == "[]"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
