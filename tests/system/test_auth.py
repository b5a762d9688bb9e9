"""`genpar up --auth`: both servers refuse unauthenticated requests, genpar's commands pass the
stack's credentials, and a password never lands in a file, a parameter or a UI.

Its own stack in its own home (the session's shared stack runs without auth, for the browser
tests), and one short `genpar run` against it whose MLflow URI carries the password inline, as
a user's MLFLOW_TRACKING_URI might.
"""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY
from tests.helpers import clean_env
from tests.system.conftest import free_port, genpar

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_an_authenticated_stack_lets_no_one_else_in_and_stores_no_password(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = clean_env(home)
    ports = free_port(), free_port()
    up = genpar(
        env,
        "up",
        "--auth",
        "--prefect-port",
        str(ports[0]),
        "--mlflow-port",
        str(ports[1]),
        timeout=300,
    )
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        creds_file = home / "stack" / "credentials.json"
        assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
        creds = json.loads(creds_file.read_text())
        password = creds["mlflow_password"]
        assert password not in up.stdout + up.stderr
        mlflow, prefect = f"http://127.0.0.1:{ports[1]}", f"http://127.0.0.1:{ports[0]}/api"
        search = f"{mlflow}/api/2.0/mlflow/experiments/search"
        assert httpx.post(search, json={"max_results": 1}).status_code == 401
        user = (creds["mlflow_username"], password)
        assert httpx.post(search, json={"max_results": 1}, auth=user).status_code == 200
        # the server remembers a checked password (auth_cache_ttl_seconds), never a wrong one
        wrong = (creds["mlflow_username"], password[:-1] + ("x" if password[-1] != "x" else "y"))
        assert httpx.post(search, json={"max_results": 1}, auth=wrong).status_code == 401
        assert httpx.post(f"{prefect}/flows/filter", json={}).status_code == 401
        token = base64.b64encode(creds["prefect_auth_string"].encode()).decode()
        bearer = {"Authorization": f"Basic {token}"}
        assert httpx.post(f"{prefect}/flows/filter", json={}, headers=bearer).status_code == 200

        # genpar picks the credentials up; here the MLflow URI even carries them inline
        inline = {**env, "MLFLOW_TRACKING_URI": f"http://admin:{password}@127.0.0.1:{ports[1]}"}
        small = ["train.max_steps=10", "compute.cpu_procs=1", "evaluate.num_samples=50"]
        small += ["evaluate.extractor_steps=50", "evaluate.bootstrap=20", "generate.num_samples=16"]
        steps = [arg for value in small for arg in ("--set", value)]
        run = genpar(inline, "run", str(TINY), *steps, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert password not in run.stdout + run.stderr
        (run_dir,) = home.glob("runs/tiny/*")
        for path in run_dir.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".yaml", ".md", ".log", ""):
                assert password not in path.read_text(errors="ignore"), path
        got = httpx.get(
            f"{mlflow}/api/2.0/mlflow/runs/get", params={"run_id": run_dir.name}, auth=user
        ).json()["run"]
        assert password not in json.dumps(got)  # params and tags
        flow_runs = httpx.post(f"{prefect}/flow_runs/filter", json={}, headers=bearer).json()
        assert flow_runs and password not in json.dumps(flow_runs)  # stored parameters
    finally:
        down = genpar(env, "down", timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
