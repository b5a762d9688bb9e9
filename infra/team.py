"""The team stack behind `genpar up --team`: the servers a team runs, started on 127.0.0.1.

PostgreSQL (Debian's package) holds Prefect's and MLflow's databases, an S3-compatible store
holds MLflow's artifacts (MinIO when `minio` is on PATH, else moto's server: in memory, for
trials and tests), a Prefect server on PostgreSQL, an MLflow server on PostgreSQL proxying
artifacts to the bucket, a Dask scheduler with workers, and a Prefect worker on a `process`
work pool. It is the code path a team uses against its own servers; only the addresses
change (infra/README.md, "The team stack").

Secrets (database passwords, the object store's keys, the servers' credentials) are generated
once into `$GENPAR_HOME/stack/team-credentials.json` (0600) and reach the servers through
their environment only: never a command line (`ps` shows those), a log or a parameter.
PostgreSQL refuses to run as root, so under root it runs as the `postgres` account
(`GENPAR_POSTGRES_USER` names another), which must be able to traverse the genpar home.
Layout (beside infra/stack.py's)::

    $GENPAR_HOME/team/postgres/data/        the database cluster (owned by the service user)
    $GENPAR_HOME/stack/team-credentials.json
    $GENPAR_HOME/stack/logs/<server>.log

This module is longer than 300 lines: one function per server of the team stack, each
small, kept together so the stack reads in start order.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genpar_models.errors import GenparError
from genpar_models.util.env import env_seconds
from genpar_models.util.paths import genpar_home
from infra import credentials
from infra.processes import HOST

# In start order; stopped in reverse (PostgreSQL last, once its clients are gone).
TEAM_SERVERS = ("postgres", "s3", "prefect", "mlflow", "dask-scheduler", "dask-workers", "worker")
TEAM_PORTS = {"postgres": 5433, "s3": 9000, "prefect": 4200, "mlflow": 5000, "dask": 8786}
TEAM_PORT_OPTIONS = {
    "postgres": "--postgres-port",
    "s3": "--s3-port",
    "prefect": "--prefect-port",
    "mlflow": "--mlflow-port",
    "dask": "--dask-port",
}
BUCKET = "genpar-artifacts"
WORK_POOL = "genpar"
DB_SUPERUSER = "genpar"
DASK_ENV = "GENPAR_DASK_ADDRESS"  # compute.dask_address's default while the team stack runs
ARTIFACT_STORE_ENV = "GENPAR_ARTIFACT_STORE"  # named by tasks/mlflow_store.py's upload errors


class TeamError(GenparError):
    """The team stack cannot start: a missing program, a permission, a server that failed."""


def team_dir() -> Path:
    return genpar_home() / "team"


def credentials_path(stack_dir: Path) -> Path:
    return stack_dir / "team-credentials.json"


def ensure_team_credentials(stack_dir: Path) -> dict[str, str]:
    """The team stack's secrets (created once, 0600) plus the servers' auth credentials."""
    creds = credentials.ensure_credentials(stack_dir)
    path = credentials_path(stack_dir)
    if not path.exists():
        team = {
            "postgres_password": secrets.token_urlsafe(24),
            "prefect_db_password": secrets.token_urlsafe(24),
            "mlflow_db_password": secrets.token_urlsafe(24),
            "s3_access_key": "genpar" + secrets.token_hex(6),
            "s3_secret_key": secrets.token_urlsafe(30),
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(team, fh, indent=2)
    if path.stat().st_mode & 0o077:
        raise TeamError(f"{path} is readable by other users; make it private: chmod 600 {path}")
    try:
        return {**creds, **json.loads(path.read_text())}
    except ValueError as e:
        raise TeamError(f"{path} is damaged ({e}); delete it and the team stack's data") from e


# --- programs ----------------------------------------------------------------------------


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, or Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if versions:
        return versions[-1]
    raise TeamError(
        f"PostgreSQL's {name} is not installed; on Debian or Ubuntu: "
        "apt-get install -y postgresql (genpar runs its own cluster, not the system's)"
    )


def _beside_python(name: str) -> str | None:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def s3_server_kind() -> str:
    """'minio' when a MinIO server is on PATH, else 'moto' (moto[server], in memory)."""
    if shutil.which("minio"):
        return "minio"
    if _beside_python("moto_server"):
        return "moto"
    raise TeamError(
        "no S3-compatible server: install MinIO (`minio` on PATH) or moto's server "
        "(pip install 'moto[server]'; in memory, for trials and tests)"
    )


# --- the PostgreSQL service account -----------------------------------------------------


@dataclass(frozen=True)
class Account:
    """Who runs PostgreSQL: this process's user, or (under root) a service account."""

    name: str
    uid: int
    gid: int

    @property
    def is_self(self) -> bool:
        return self.uid == os.geteuid()


def postgres_account() -> Account:
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return Account(me.pw_name, me.pw_uid, me.pw_gid)
    name = os.environ.get("GENPAR_POSTGRES_USER", "postgres")
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise TeamError(
            f"PostgreSQL refuses to run as root and there is no {name!r} account to run it "
            "as; install Debian's postgresql package (it creates one), or name another "
            "account in GENPAR_POSTGRES_USER"
        ) from None
    if pw.pw_uid == 0:
        raise TeamError(f"GENPAR_POSTGRES_USER={name} is root; PostgreSQL refuses to run as root")
    return Account(name, pw.pw_uid, pw.pw_gid)


def _can_traverse(path: Path, account: Account) -> bool:
    st = path.stat()
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    groups = {account.gid} | {
        g.gr_gid for g in __import__("grp").getgrall() if account.name in g.gr_mem
    }
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def check_reachable(directory: Path, account: Account) -> None:
    """Fail naming the first directory above `directory` the account cannot pass through."""
    if account.is_self:
        return
    for parent in reversed(directory.resolve().parents):
        if not _can_traverse(parent, account):
            mode = oct(parent.stat().st_mode & 0o777)
            raise TeamError(
                f"PostgreSQL runs as {account.name!r} (it refuses root) and cannot reach "
                f"{directory}: {parent} is mode {mode}. Put GENPAR_HOME where {account.name!r} "
                f"may pass (for example /srv/genpar), allow it (chmod o+x {parent}), or run "
                "genpar as a non-root user"
            )


def _as_account(account: Account) -> dict:
    """Popen arguments that run the child as the account (nothing when it is this user)."""
    if account.is_self:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": []}


def init_postgres(data: Path, password: str, account: Account, say: Callable[[str], None]) -> None:
    """Create the database cluster once: scram-sha-256 on TCP, the superuser's password read
    from a file that exists only while initdb runs."""
    if (data / "PG_VERSION").exists():
        return
    base = data.parent
    base.mkdir(parents=True, exist_ok=True)
    check_reachable(base, account)
    os.chown(base, account.uid, account.gid)
    os.chmod(base, 0o700)
    if data.exists():  # a half-made cluster from an interrupted first start
        shutil.rmtree(data)
    pwfile = base / ".pwfile"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    os.chown(pwfile, account.uid, account.gid)
    say(f"creating the PostgreSQL cluster in {data} (as {account.name})")
    try:
        done = subprocess.run(
            [
                postgres_bin("initdb"),
                "-D",
                str(data),
                "-U",
                DB_SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-locale",
            ],
            capture_output=True,
            text=True,
            cwd=base,
            **_as_account(account),
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise TeamError(f"initdb failed for {data}:\n{done.stdout}{done.stderr}")


def postgres_command(data: Path, port: int) -> list[str]:
    return [
        postgres_bin("postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-c",
        f"listen_addresses={HOST}",
        "-c",
        "unix_socket_directories=",  # TCP on 127.0.0.1 only
        "-c",
        "max_connections=200",
    ]


def connect(port: int, password: str, dbname: str = "postgres", user: str = DB_SUPERUSER):
    import psycopg2

    return psycopg2.connect(
        host=HOST, port=port, user=user, password=password, dbname=dbname, connect_timeout=5
    )


def wait_postgres(port: int, password: str, timeout_s: float, alive: Callable[[], bool]) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connect(port, password).close()
            return
        except psycopg2.OperationalError as e:
            if not alive():
                raise TeamError("PostgreSQL exited during startup") from e
            if time.monotonic() > deadline:
                raise TeamError(
                    f"PostgreSQL did not accept connections in {timeout_s:.0f} s"
                ) from e
            time.sleep(0.3)


def ensure_databases(port: int, creds: dict[str, str]) -> None:
    """Roles and databases for Prefect (with pg_trgm) and MLflow; passwords kept current."""
    from psycopg2 import sql

    conn = connect(port, creds["postgres_password"])
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in ("prefect", "mlflow"):
                password = creds[f"{name}_db_password"]
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(
                    sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(name)),
                    (password,),
                )
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if not cur.fetchone():
                    cur.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(name), sql.Identifier(name)
                        )
                    )
    finally:
        conn.close()
    conn = connect(port, creds["postgres_password"], dbname="prefect")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    finally:
        conn.close()


# --- the other servers --------------------------------------------------------------------


def s3_command(port: int, creds: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if s3_server_kind() == "minio":
        env.update(
            MINIO_ROOT_USER=creds["s3_access_key"], MINIO_ROOT_PASSWORD=creds["s3_secret_key"]
        )
        data = team_dir() / "minio"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            shutil.which("minio") or "minio",
            "server",
            str(data),
            "--address",
            f"{HOST}:{port}",
        ]
        return argv + ["--console-address", f"{HOST}:0"], env
    return [str(_beside_python("moto_server")), "-H", HOST, "-p", str(port)], env


def s3_client(port: int, creds: dict[str, str]):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=f"http://{HOST}:{port}",
        aws_access_key_id=creds["s3_access_key"],
        aws_secret_access_key=creds["s3_secret_key"],
        region_name="us-east-1",
    )


def ensure_bucket(port: int, creds: dict[str, str], timeout_s: float) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(port, creds)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if BUCKET not in names:
                client.create_bucket(Bucket=BUCKET)
            return
        except (BotoCoreError, ClientError) as e:
            if time.monotonic() > deadline:
                raise TeamError(f"the S3 store on {HOST}:{port} did not answer: {e}") from e
            time.sleep(0.3)


def s3_env(port: int, creds: dict[str, str]) -> dict[str, str]:
    """What MLflow's server needs to write the bucket (clients go through its proxy)."""
    return {
        "AWS_ACCESS_KEY_ID": creds["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": creds["s3_secret_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": f"http://{HOST}:{port}",
    }


def prefect_database_env(port: int, creds: dict[str, str]) -> dict[str, str]:
    url = f"postgresql+asyncpg://prefect:{creds['prefect_db_password']}@{HOST}:{port}/prefect"
    return {"PREFECT_API_DATABASE_CONNECTION_URL": url}


def mlflow_command(
    ports: dict[str, int], creds: dict[str, str], stack_dir: Path
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    env.update(credentials.server_env("mlflow", creds, stack_dir))
    env.update(s3_env(ports["s3"], creds))
    env["MLFLOW_BACKEND_STORE_URI"] = (
        f"postgresql://mlflow:{creds['mlflow_db_password']}@{HOST}:{ports['postgres']}/mlflow"
    )
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    mlflow = _beside_python("mlflow") or "mlflow"
    argv = [mlflow, "server", "--host", HOST, "--port", str(ports["mlflow"])]
    argv += ["--artifacts-destination", f"s3://{BUCKET}", "--app-name", "basic-auth"]
    return argv + ["--workers", "1"], env


def dask_commands(port: int, workers: int) -> dict[str, list[str]]:
    dask = _beside_python("dask") or "dask"
    scheduler = [dask, "scheduler", "--host", HOST, "--port", str(port), "--no-dashboard"]
    worker = [dask, "worker", f"tcp://{HOST}:{port}", "--nworkers", str(workers)]
    worker += ["--nthreads", "1", "--host", HOST, "--no-dashboard", "--memory-limit", "auto"]
    return {"dask-scheduler": scheduler, "dask-workers": worker}


def client_env(ports: dict[str, int], creds: dict[str, str]) -> dict[str, str]:
    """What a genpar process needs to use the team stack (no database or bucket secrets:
    MLflow proxies the artifacts)."""
    return {
        "PREFECT_API_URL": f"http://{HOST}:{ports['prefect']}/api",
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{ports['mlflow']}",
        DASK_ENV: f"tcp://{HOST}:{ports['dask']}",
        **credentials.client_env(creds),
    }


def create_work_pool(env: dict[str, str]) -> None:
    prefect = _beside_python("prefect") or "prefect"
    done = subprocess.run(
        [prefect, "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise TeamError(f"creating the work pool {WORK_POOL!r} failed:\n{done.stdout}{done.stderr}")


def worker_command() -> list[str]:
    prefect = _beside_python("prefect") or "prefect"
    return [prefect, "worker", "start", "--pool", WORK_POOL, "--type", "process"]


# A flow run whose process dies with its worker (a killed worker, a lost machine) sends no
# final state: it would stay RUNNING forever. Its runs beat every HEARTBEAT_S seconds (the
# worker's environment sets it; Prefect's floor is 30), and an automation marks a run CRASHED
# when no beat or final state came for CRASH_AFTER_S (Prefect's own recipe, "Detect zombie
# flows"). The slack over one beat keeps a slow but live run on a busy machine safe.
HEARTBEAT_S = 30
CRASH_AFTER_ENV = "GENPAR_CRASH_AFTER_S"
CRASH_AFTER_DEFAULT_S = 90
CRASH_AUTOMATION = "genpar: crash flow runs without heartbeats"


def worker_env(ports: dict[str, int], creds: dict[str, str]) -> dict[str, str]:
    """The Prefect worker's environment (its flow runs inherit it): the stack's client
    settings, and heartbeats often enough for the crash automation."""
    env = {**os.environ, **client_env(ports, creds)}
    env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(HEARTBEAT_S)
    return env


def crash_after_s() -> int:
    value = round(env_seconds(CRASH_AFTER_ENV, CRASH_AFTER_DEFAULT_S))
    if value <= HEARTBEAT_S:
        raise TeamError(
            f"{CRASH_AFTER_ENV}={value}: must exceed the heartbeat interval ({HEARTBEAT_S} s), "
            "or live runs would be marked crashed"
        )
    return value


@contextlib.contextmanager
def prefect_api(ports: dict[str, int], creds: dict[str, str]) -> Iterator[Any]:
    """An httpx client on the team stack's Prefect REST API (basic auth), base URL `/api`."""
    import base64

    import httpx

    token = base64.b64encode(creds["prefect_auth_string"].encode()).decode()
    with httpx.Client(
        base_url=f"http://{HOST}:{ports['prefect']}/api",
        headers={"Authorization": f"Basic {token}"},
        timeout=30,
    ) as api:
        yield api


def ensure_crash_automation(ports: dict[str, int], creds: dict[str, str]) -> None:
    """Create (or update) the automation that marks silent flow runs CRASHED."""
    within = crash_after_s()
    body = {
        "name": CRASH_AUTOMATION,
        "description": f"A flow run that sent no heartbeat or final state for {within} s "
        "lost its process (a killed worker or machine): genpar up --team created this.",
        "enabled": True,
        "trigger": {
            "type": "event",
            "posture": "Proactive",
            "after": ["prefect.flow-run.heartbeat"],
            "expect": [
                "prefect.flow-run.heartbeat",
                *(f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")),
            ],
            "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
            "for_each": ["prefect.resource.id"],
            "threshold": 1,
            "within": within,
        },
        "actions": [
            {
                "type": "change-flow-run-state",
                "state": "CRASHED",
                "message": f"No heartbeat for {within} s: the flow run's process is gone "
                "(its worker or machine died). Run it again to resume from its checkpoint.",
            }
        ],
    }
    with prefect_api(ports, creds) as api:
        found = api.post("/automations/filter", json={"limit": 200})
        found.raise_for_status()
        existing = [a for a in found.json() if a["name"] == CRASH_AUTOMATION]
        if existing:
            r = api.put(f"/automations/{existing[0]['id']}", json=body)
        else:
            r = api.post("/automations/", json=body)
        if r.status_code >= 400:
            raise TeamError(f"creating the automation {CRASH_AUTOMATION!r} failed: {r.text[:2000]}")


def dask_workers_ready(port: int, expected: int, timeout_s: float) -> bool:
    from distributed import Client

    with contextlib.suppress(Exception), Client(f"tcp://{HOST}:{port}", timeout="10s") as c:
        c.wait_for_workers(expected, timeout=timeout_s)
        return True
    return False
