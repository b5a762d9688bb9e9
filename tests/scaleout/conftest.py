"""The team stack for real: one `genpar up --team` (PostgreSQL, an S3 server, Prefect and
MLflow on them with credentials, a Dask scheduler with 2 workers, a Prefect worker on the
`genpar` pool) serves the whole tests/scaleout session, on free ports of 127.0.0.1; `genpar
down` ends it. The tests look at what landed through the servers' own protocols: SQL on the
PostgreSQL databases, S3 listings, the Prefect REST API, the Dask scheduler.

The genpar home lies under a directory of mode 0711 directly in /tmp: PostgreSQL runs as the
`postgres` account, which must pass through every directory above its data.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.team import prefect_api
from tests.conftest import REPO, TINY
from tests.helpers import clean_env, free_port
from tests.system.conftest import FINAL, GENPAR, genpar

SLOW = 600  # seconds a genpar command may take here (tiny pipeline: 15-20 s quiet)
RUN_ID = re.compile(r"MLflow run (?:\x1b\[[0-9;]*m)?([0-9a-f]{32})")
# long enough (about 16 s on 2 ranks) that a server restart lands while it trains
LONG = ["train.max_steps=800", "train.checkpoint_every_steps=100", "train.log_every_steps=10"]


@dataclass
class Team:
    home: Path
    env: dict[str, str]  # a genpar user's: the stack is found through its state file
    ports: dict[str, int]
    creds: dict[str, str]
    api: httpx.Client = field(repr=False)

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    @property
    def client_env(self) -> dict[str, str]:
        """What any process needs to use the stack by hand (what `genpar` finds itself)."""
        return {
            "PREFECT_API_URL": f"http://127.0.0.1:{self.ports['prefect']}/api",
            "PREFECT_API_AUTH_STRING": self.creds["prefect_auth_string"],
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": self.creds["mlflow_username"],
            "MLFLOW_TRACKING_PASSWORD": self.creds["mlflow_password"],
        }

    def sql(self, db: str, query: str, *args: Any) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1",
            port=self.ports["postgres"],
            user=db,
            password=self.creds[f"{db}_db_password"],
            dbname=db,
        )
        try:
            with conn.cursor() as cur:
                cur.execute(query, args)
                return cur.fetchall()
        finally:
            conn.close()

    def s3_keys(self) -> list[str]:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.ports['s3']}",
            aws_access_key_id=self.creds["s3_access_key"],
            aws_secret_access_key=self.creds["s3_secret_key"],
            region_name="us-east-1",
        )
        keys, token = [], None
        while True:
            kw = {"ContinuationToken": token} if token else {}
            page = s3.list_objects_v2(Bucket="genpar-artifacts", **kw)
            keys += [o["Key"] for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return keys

    @contextlib.contextmanager
    def mlflow_credentials(self) -> Iterator[None]:
        """MLflow's client in this process, with the stack's credentials, for the block."""
        keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        before = {k: os.environ.get(k) for k in keys}
        os.environ.update({k: self.client_env[k] for k in keys})
        try:
            yield
        finally:
            for k, v in before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def request(self, method: str, path: str, body: Any = None) -> Any:
        for delay in (1, 2, 4, 0):
            r = self.api.request(method, path, json=body)
            if r.status_code not in (429, 502, 503) or not delay:
                break
            time.sleep(delay)
        r.raise_for_status()
        return r.json() if r.content else None

    def wait_flow_run(self, flow_run_id: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            run = self.request("GET", f"/flow_runs/{flow_run_id}")
            if run["state_type"] in FINAL:
                return run
            time.sleep(2)
        raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout:.0f} s: {run}")

    def server_pid(self, name: str) -> int:
        """The pid `genpar up --team` recorded for one of its servers."""
        servers = json.loads((self.home / "stack" / "stack.json").read_text())["servers"]
        (pid,) = [s["pid"] for s in servers if s["name"] == name]
        return pid


# `genpar restart s3` brings moto's server back empty (it keeps objects in memory): the
# object-store fault runs last, after every test that reads the session's older objects
# (the shared run's model in the bucket, which the every-engine test lists and downloads).
EMPTIES_THE_BUCKET = "test_the_object_store_away_fails_the_run_by_name_and_a_rerun_logs_everything"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Last among the scaleout tests, not of the whole session (the shared stack would idle
    through the system and unit tests otherwise)."""
    scaleout = [i for i, item in enumerate(items) if "tests/scaleout/" in item.nodeid]
    last = [i for i in items if i.name == EMPTIES_THE_BUCKET and "tests/scaleout/" in i.nodeid]
    if not scaleout or not last:
        return
    rest = [i for i in items if i not in last]
    end = max(j for j, item in enumerate(rest) if "tests/scaleout/" in item.nodeid) + 1
    items[:] = rest[:end] + last + rest[end:]


def _traversable_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="genpar-scaleout-", dir="/tmp"))
    base.chmod(0o711)
    return base


@pytest.fixture(scope="package")
def team() -> Iterator[Team]:
    if not shutil.which("initdb") and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql")
    base = _traversable_base()
    home = base / "home"
    env = {
        **clean_env(home),
        # a schedule's runs are created within seconds, and a worker picks them up at once
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        # a flow run whose worker was killed is marked crashed 45 s after its last heartbeat
        # (Prefect's beat is 30 s: the least that cannot crash a live run)
        "GENPAR_CRASH_AFTER_S": "45",
    }
    home.chmod(0o711)
    ports: dict[str, int] = {}
    for name in ("prefect", "mlflow", "postgres", "s3", "dask"):
        while (port := free_port()) in ports.values():  # the kernel may hand one out twice
            pass
        ports[name] = port
    args = ["up", "--team", "--dask-workers", "2"]
    for k, v in ports.items():
        args += [f"--{k}-port", str(v)]
    try:
        up = genpar(env, *args, timeout=SLOW)
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        stack = home / "stack"
        creds = json.loads((stack / "credentials.json").read_text())
        creds |= json.loads((stack / "team-credentials.json").read_text())
        with prefect_api(ports, creds) as api:
            yield Team(home, env, ports, creds, api)
    finally:
        down = genpar(env, "down", timeout=SLOW)
        shutil.rmtree(base, ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr
    for name, port in ports.items():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"{name} still listens after down"


class Background:
    """`genpar ARGS` running in the background, its output in a file."""

    def __init__(self, team: Team, tmp: Path, *args: str, env: dict[str, str] | None = None):
        self.log = tmp / f"genpar-{time.monotonic_ns()}.log"
        self._out = open(self.log, "w")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [GENPAR, *args], env={**team.env, **(env or {})}, cwd=REPO,
            stdout=self._out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def run_id(self, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := RUN_ID.search(self.output()):
                return found.group(1)
            assert self.proc.poll() is None, self.output()[-4000:]
            time.sleep(0.5)
        raise AssertionError(f"no MLflow run started in {timeout:.0f} s:\n{self.output()[-4000:]}")

    def wait(self, timeout: float = SLOW) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._out.close()


def run_dir(team: Team, run_id: str) -> Path:
    return team.home / "runs" / "tiny" / run_id


def wait_checkpoint(team: Team, run_id: str, timeout: float = 300) -> None:
    """Until training has written its first checkpoint: the fault then lands mid-training."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any((run_dir(team, run_id) / "checkpoints").glob("ckpt-*.json")):
            return
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} wrote no checkpoint in {timeout:.0f} s")


@dataclass
class SharedRun:
    run_id: str
    returncode: int
    output: str
    back_ms: float  # when `genpar restart postgres` was back (epoch ms)


@pytest.fixture(scope="package")
def restarted_run(team: Team, tmp_path_factory: pytest.TempPathFactory) -> SharedRun:
    """One tiny pipeline on every engine of the stack (preprocessing and generation on its
    Dask cluster), with PostgreSQL restarted once it has trained to its first checkpoint: the
    every-engine test and the PostgreSQL fault test both read what it recorded (the two
    don't interfere: the restart lands in training, after preprocessing, before generation)."""
    sets = [a for s in [*LONG, "data.parallel=dask", "generate.parallel=dask"]
            for a in ("--set", s)]  # fmt: skip
    run = Background(team, tmp_path_factory.mktemp("shared-run"), "run", str(TINY), *sets)
    try:
        run_id = run.run_id()
        wait_checkpoint(team, run_id)
        restart = genpar(team.env, "restart", "postgres", timeout=SLOW)
        back_ms = time.time() * 1000
        assert restart.returncode == 0, restart.stdout + restart.stderr
        assert "postgres is back" in restart.stdout
    except BaseException:
        run.proc.kill()  # never left behind
        run.wait()
        raise
    return SharedRun(run_id, run.wait(), run.output(), back_ms)


# The deployments of infra/prefect.yaml on the stack's work pool, by deployment name.
DEPLOYMENTS = {
    "pipeline": "genpar-pipeline",
    "evaluate": "genpar-evaluate",
    "nightly-retrain": "genpar-nightly-retrain",
    "sweep": "genpar-sweep",
}


@pytest.fixture(scope="package")
def deployed(team: Team) -> dict[str, dict[str, Any]]:
    """`prefect deploy --all --prefect-file infra/prefect.yaml` once, as a team would run it
    (genpar's repository as the source, the stack's credentials in the environment)."""
    import subprocess

    from tests.conftest import REPO
    from tests.system.conftest import GENPAR

    env = {**clean_env(team.home), **team.client_env, "GENPAR_REPO": str(REPO)}
    deploy = subprocess.run(
        [str(Path(GENPAR).with_name("prefect")), "--no-prompt", "deploy", "--all",
         "--prefect-file", "infra/prefect.yaml"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert deploy.returncode == 0, deploy.stdout[-4000:] + deploy.stderr[-4000:]
    return {n: team.request("GET", f"/deployments/name/{f}/{n}") for n, f in DEPLOYMENTS.items()}


def kill_a_busy_dask_worker(address: str, killed: dict[str, str], within_s: float = 60) -> None:
    """SIGKILL the first worker of the cluster seen processing a task (its nanny restarts it);
    records the worker's address in `killed`. Polls every 5 ms for `within_s` seconds."""
    import signal
    import time as clock

    from distributed import Client

    with Client(address, timeout="20s") as c:
        pids = c.run(os.getpid)
        deadline = clock.monotonic() + within_s
        while clock.monotonic() < deadline:
            busy = [w for w, keys in c.processing().items() if keys]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed["worker"] = busy[0]
                return
            clock.sleep(0.005)


def wait_dask_workers(address: str, n: int, timeout_s: float = 120) -> None:
    """Until n workers are connected again (the nanny's restart), for the tests after."""
    from distributed import Client

    with Client(address, timeout="20s") as c:
        c.wait_for_workers(n, timeout=timeout_s)
