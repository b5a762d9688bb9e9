"""Every `genpar` command sets its environment (a running stack's URLs, genpar's Prefect
defaults) before anything imports Prefect, which reads its settings once, at import: a command
that imported its flow first ran against a temporary server with Prefect's 20 s start-up limit
while the user's stack was up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import clean_env

# Runs the CLI and says what the environment held when `prefect` was first imported (and
# stops there: nothing after matters).
PROBE = """
import importlib.abc, os, sys
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "prefect":
            timeout = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
            print(f"prefect imported with timeout={timeout}", flush=True)
            os._exit(0)
        return None
sys.meta_path.insert(0, Probe())
from flows.cli import app
app(sys.argv[1:], standalone_mode=False)
print("prefect never imported")
"""


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "/nonexistent/model"],
        ["compress", "/nonexistent/model"],
        ["generate", "--model", "/nonexistent/model", "--n", "4", "--out", "OUT"],
    ],
    ids=lambda c: c[0],
)
def test_commands_set_the_environment_before_prefect_is_imported(
    command: list[str], tmp_path: Path
) -> None:
    command = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *command],
        env=clean_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "prefect imported with timeout=180" in out.stdout, out.stdout + out.stderr
