"""System tests: the real local stack, one real `genpar serve`, the Prefect REST API, MLflow.

One stack (`genpar up` on free ports in a temporary genpar home) and one `genpar serve
configs/tiny.yaml` serve the whole tests/system session; `genpar down` ends it. The flow runs
the tests look at are started together, through the Prefect API, as soon as serving begins
(`runs`), so they overlap with each other and with the browser tests instead of queueing one
after another. Nothing is mocked: the Prefect client side is plain REST with explicit URLs,
so these tests never touch the Prefect settings of the integration tests' harness.
"""

from __future__ import annotations

import copy
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, TINY
from tests.helpers import clean_env

GENPAR = str(Path(sys.executable).with_name("genpar"))
ARTIFACTS = REPO / "tests" / "artifacts"  # screenshots and logs (gitignored)
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# A margin no challenger can clear: the second nightly run must keep the champion.
UNBEATABLE = 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def genpar(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GENPAR, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


@dataclass
class Stack:
    """The running stack and how to talk to it."""

    home: Path
    env: dict[str, str]
    prefect_url: str
    mlflow_url: str
    api: httpx.Client = field(repr=False)

    def deployment(self, name: str) -> dict[str, Any]:
        flow, dep = name.split("/")
        return self.get(f"/deployments/name/{flow}/{dep}")

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        # Like Prefect's own client: a busy SQLite-backed server answers 503; retry with backoff.
        for delay in (1, 2, 4, 8, 0):
            r = self.api.request(method, path, json=body)
            if r.status_code not in (429, 502, 503) or not delay:
                break
            time.sleep(delay)
        r.raise_for_status()
        return r.json()

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def trigger(self, name: str, changes: dict[str, Any]) -> str:
        """Start a run of a deployment with some config fields changed; its flow run id."""
        dep = self.deployment(name)
        params = copy.deepcopy(dep["parameters"])
        for dotted, value in changes.items():
            *path, last = dotted.split(".")
            node = params["config"]
            for part in path:
                node = node[part]
            node[last] = value
        return self.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": params})["id"]

    def wait(self, flow_run_id: str, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(f"/flow_runs/{flow_run_id}")
            if run["state_type"] in FINAL:
                return run
            time.sleep(2)
        raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout:.0f} s: {run}")

    def artifacts_of(self, flow_run_id: str) -> list[dict[str, Any]]:
        body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
        return self.post("/artifacts/filter", body)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """`genpar up` in a temporary home on free ports; `genpar down` at the end."""
    home = tmp_path_factory.mktemp("system") / "home"
    env = clean_env(home)
    ports = free_port(), free_port()
    up = genpar(
        env, "up", "--prefect-port", str(ports[0]), "--mlflow-port", str(ports[1]), timeout=300
    )
    assert up.returncode == 0, up.stdout + up.stderr
    prefect_url = f"http://127.0.0.1:{ports[0]}"
    assert prefect_url in up.stdout and f"http://127.0.0.1:{ports[1]}" in up.stdout
    with httpx.Client(base_url=f"{prefect_url}/api", timeout=30) as api:
        yield Stack(home, env, prefect_url, f"http://127.0.0.1:{ports[1]}", api)
    down = genpar(env, "down", timeout=120)
    assert down.returncode == 0 and "stopped prefect" in down.stdout, down.stdout + down.stderr
    assert "stopped mlflow" in down.stdout
    assert all(_port_closed(p) for p in ports), "a server still listens after genpar down"


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="session")
def served(stack: Stack) -> subprocess.Popen:
    """`genpar serve configs/tiny.yaml` against the stack, until the session ends."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "serve.log", "w")  # noqa: SIM115 - open for the whole session
    env = {**stack.env, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}  # pick up runs within seconds
    proc = subprocess.Popen(
        [GENPAR, "serve", str(TINY)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
    )
    names = [
        "genpar-pipeline/pipeline",
        "genpar-evaluate/evaluate",
        "genpar-nightly-retrain/nightly-retrain",
    ]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if all(stack.api.get(f"/deployments/name/{n}").status_code == 200 for n in names):
            break
        time.sleep(1)
    assert proc.poll() is None, (ARTIFACTS / "serve.log").read_text()[-3000:]
    time.sleep(2)  # the runner starts polling right after it registers the deployments
    yield proc
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


@dataclass(frozen=True)
class Runs:
    """Flow runs started together as soon as serving begins (ids only; tests wait on them)."""

    pipeline: str  # the pipeline deployment, train.max_steps changed through the API
    nightly: tuple[str, str]  # two nightly retrains triggered at the same moment


@pytest.fixture(scope="session")
def runs(stack: Stack, served: subprocess.Popen) -> Runs:
    # retrain.force: the second night has unchanged data and config, so without it it would
    # train nothing (tests/integration/test_nightly.py covers that); here both train.
    changes = {"retrain.min_improvement": UNBEATABLE, "retrain.force": True}
    nightly = tuple(
        stack.trigger("genpar-nightly-retrain/nightly-retrain", changes) for _ in range(2)
    )
    pipeline = stack.trigger("genpar-pipeline/pipeline", {"train.max_steps": 20})
    return Runs(pipeline=pipeline, nightly=nightly)


def chromium_or_skip() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' (playwright)")
    return path
