"""The local stack behind `genpar up/down/status`: a Prefect server and an MLflow server.

Both listen on 127.0.0.1, keep their state under the genpar home, and outlive the command
that started them; what runs is recorded in `stack.json` (pid + start time per server), so
`down` and `status` find them again and notice when one died. While the stack is up,
`use_stack()` points genpar's commands at it (`PREFECT_API_URL`, `MLFLOW_TRACKING_URI`,
unless the user set those); without it the embedded defaults apply. Layout::

    $GENPAR_HOME/stack/stack.json           the servers: pids, start times, ports
    $GENPAR_HOME/stack/serve.json           the `genpar serve` process while it runs (serving.py)
    $GENPAR_HOME/stack/credentials.json     with `genpar up --auth`: the servers' credentials (0600)
    $GENPAR_HOME/stack/logs/<server>.log    server output
    $GENPAR_HOME/prefect/prefect.db         Prefect's SQLite database (PREFECT_HOME)
    $GENPAR_HOME/mlflow/mlflow.db           MLflow's store: the embedded default's own file
    $GENPAR_HOME/mlflow/served-artifacts/   artifacts of experiments created via the server

This module is longer than 300 lines because the local and the team stack share one
record, one lock and one start/stop discipline; splitting them would duplicate that.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from genpar_models.errors import GenparError
from genpar_models.util import atomic, lease
from genpar_models.util.paths import default_tracking_uri, genpar_home, mlflow_root
from infra import credentials, processes, serving, team
from infra.processes import HOST, Proc

SERVERS = ("prefect", "mlflow")
DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000}
PORT_OPTIONS = {"prefect": "--prefect-port", "mlflow": "--mlflow-port"}
# PostgreSQL's SIGTERM waits for every client session to end; SIGINT is its fast shutdown.
_STOP_SIGNAL = {"postgres": signal.SIGINT}


class StackError(GenparError):
    """The stack cannot start, or is in a state that needs the user's attention."""


class AlreadyRunning(StackError):
    """`genpar up` found the stack already up (not an error for the user: nothing to do)."""


@dataclass(frozen=True)
class Server:
    """One server of the stack, as recorded in stack.json."""

    name: str
    port: int
    proc: Proc
    log: str
    auth: bool = False  # started requiring the stack's credentials (`genpar up --auth`)
    check: str = "http"  # how health is judged: http (health_url), tcp (port open), proc (alive)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def api_url(self) -> str:
        """What clients are given: Prefect's API lives under /api, MLflow's at the root."""
        return f"{self.url}/api" if self.name == "prefect" else self.url

    @property
    def health_url(self) -> str:
        return f"{self.url}/api/health" if self.name == "prefect" else f"{self.url}/health"

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "port": self.port,
            "log": self.log,
            "auth": self.auth,
            "check": self.check,
            **self.proc.as_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Server:
        proc = Proc(pid=int(d["pid"]), create_time=float(d["create_time"]))
        port, auth = int(d["port"]), bool(d.get("auth", False))
        check = d.get("check", "http")
        return cls(name=d["name"], port=port, proc=proc, log=d["log"], auth=auth, check=check)

    def healthy(self) -> bool:
        if self.check == "tcp":
            return not processes.port_free(self.port)
        if self.check == "proc":
            return processes.handle(self.proc) is not None
        return processes.http_ok(self.health_url)

    @property
    def what(self) -> str:
        """Where it answers, for `genpar status`."""
        if self.check == "proc":
            return "(no port)"
        return self.url if self.check == "http" else f"{HOST}:{self.port}"


def stack_dir() -> Path:
    return genpar_home() / "stack"


def state_path() -> Path:
    return stack_dir() / "stack.json"


def read_servers() -> dict[str, Server]:
    """The recorded servers ({} when the stack was never started or was stopped)."""
    try:
        data = json.loads(state_path().read_text())
        return {d["name"]: Server.from_dict(d) for d in data["servers"]}
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError) as e:
        raise StackError(f"{state_path()} is damaged ({e}); delete it and run `genpar up`") from e


def _write_servers(servers: dict[str, Server]) -> None:
    state_path().parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(state_path(), {"servers": [s.as_dict() for s in servers.values()]})


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One `up`/`down` at a time per home (two concurrent `up`s must not start two stacks);
    a lease, so that hosts sharing the genpar home exclude each other too."""
    with lease.held(stack_dir() / ".lease", timeout_s=600, what="starting or stopping the stack"):
        yield


def _executable(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name) or name


def server_command(
    name: str, port: int, creds: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of one server; with `creds`, one that requires them."""
    env = dict(os.environ)
    if creds is not None:
        env.update(credentials.server_env(name, creds, stack_dir()))
    if name == "prefect":
        api = f"http://{HOST}:{port}/api"
        env.update(
            PREFECT_HOME=str(genpar_home() / "prefect"),
            PREFECT_API_URL=api,
            # The UI asks this URL for its data; without it a non-default port shows
            # "Can't connect to Server API" (shared/STACK.md section 7).
            PREFECT_UI_API_URL=api,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        return [_executable("prefect"), "server", "start", "--host", HOST, "--port", str(port)], env
    # Job execution serves MLflow's GenAI features (seven huey consumer processes); genpar
    # uses none of them, so a laptop stack runs without (a user's own setting wins).
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # Artifacts as plain files (not proxied `mlflow-artifacts:/` URIs): clients on this
    # machine write them directly, and runs recorded through the server stay readable by
    # the embedded SQLite default after `genpar down`.
    served = (mlflow_root() / "served-artifacts").as_uri()
    argv = [_executable("mlflow"), "server", "--host", HOST, "--port", str(port)]
    argv += ["--backend-store-uri", default_tracking_uri(), "--default-artifact-root", served]
    argv += ["--app-name", "basic-auth"] if creds is not None else []
    return argv + ["--no-serve-artifacts", "--workers", "1"], env


def _check_ports(ports: dict[str, int], options: dict[str, str] = PORT_OPTIONS) -> None:
    if len(set(ports.values())) < len(ports):
        raise StackError(f"the servers need {len(ports)} different ports, got {ports}")
    for name, port in ports.items():
        if not processes.port_free(port):
            user = processes.port_user(port)
            raise StackError(
                f"port {port} on {HOST} is already in use{f' ({user})' if user else ''}; "
                f"start the stack with another {name} port: genpar up {options[name]} N"
            )


def _clear_stale(say: Callable[[str], None]) -> None:
    """A stack that is recorded but not (fully) running: stop what is left, forget the rest."""
    servers = read_servers()
    if not servers:
        return
    alive = {n: s for n, s in servers.items() if processes.handle(s.proc)}
    if len(alive) == len(servers) and all(s.healthy() for s in alive.values()):
        urls = ", ".join(f"{n} {s.what}" for n, s in servers.items())
        raise AlreadyRunning(f"the genpar stack is already running: {urls}")
    if len(alive) == len(servers):
        raise StackError(
            "the genpar stack is running but not answering its health checks "
            f"({', '.join(n for n, s in alive.items() if not s.healthy())}); run `genpar down`, "
            f"then `genpar up` (logs in {stack_dir() / 'logs'})"
        )
    for s in reversed(list(alive.values())):
        processes.stop(s.proc, sig=_STOP_SIGNAL.get(s.name, signal.SIGTERM))
    gone = ", ".join(f"{n} (pid {s.proc.pid})" for n, s in servers.items() if n not in alive)
    say(f"cleared stale stack state: {gone} no longer running")
    state_path().unlink(missing_ok=True)


def up(
    ports: dict[str, int],
    *,
    timeout_s: float = 180.0,
    say: Callable[[str], None] = print,
    auth: bool = False,
) -> dict[str, Server]:
    """Start both servers and wait until they answer their health checks. With `auth`, both
    require the stack's credentials (generated once, stored 0600; infra/credentials.py).

    Raises:
        AlreadyRunning: the stack is up already (nothing was started).
        StackError: a port is busy, or a server did not come up (its log tail included).
    """
    with _locked():
        _clear_stale(say)
        _check_ports(ports)
        creds = credentials.ensure_credentials(stack_dir()) if auth else None
        servers = {}
        for name in SERVERS:
            argv, env = server_command(name, ports[name], creds)
            log = stack_dir() / "logs" / f"{name}.log"
            proc = processes.spawn(argv, env, log, cwd=genpar_home())
            servers[name] = Server(name, ports[name], proc, str(log), auth=auth)
        _write_servers(servers)  # recorded at once: `down` can stop a stack still starting
        say(f"started Prefect and MLflow on {HOST}; waiting for their health checks …")
        checks = {n: (s.proc, s.health_url) for n, s in servers.items()}
        problems = processes.wait_healthy(checks, timeout_s)
        if problems:
            for s in servers.values():
                processes.stop(s.proc)
            state_path().unlink(missing_ok=True)
            raise StackError(_startup_failure(servers, problems))
        return servers


def up_team(
    ports: dict[str, int],
    *,
    timeout_s: float = 300.0,
    say: Callable[[str], None] = print,
    dask_workers: int | None = None,
) -> dict[str, Server]:
    """Start the team stack (infra/team.py): PostgreSQL, an S3 store, Prefect and MLflow on
    them (both requiring the stack's credentials), a Dask scheduler and workers, and a
    Prefect worker on the `genpar` process pool. Each waits for the one before it.

    Raises:
        AlreadyRunning: the stack is up already (nothing was started).
        StackError: a port is busy, a program is missing, or a server did not come up.
    """
    from genpar_models.util.cores import available_cores

    with _locked():
        _clear_stale(say)
        _check_ports(ports, team.TEAM_PORT_OPTIONS)
        creds = team.ensure_team_credentials(stack_dir())
        account = team.postgres_account()
        data = _postgres_data()
        servers: dict[str, Server] = {}

        def start(
            name: str, argv: list[str], env: dict[str, str], port: int, check: str, popen: dict
        ) -> Server:
            servers[name] = _spawn_team_server(name, argv, env, port, check, popen)
            _write_servers(servers)  # recorded at once: `down` can stop a stack still starting
            return servers[name]

        try:
            team.init_postgres(data, creds["postgres_password"], account, say)
            launch = lambda name: start(name, *_team_launch(name, ports, creds))  # noqa: E731
            _await_team_server(launch("postgres"), creds, timeout_s)
            team.ensure_databases(ports["postgres"], creds)
            say(f"PostgreSQL up on {HOST}:{ports['postgres']} (databases prefect, mlflow)")
            _await_team_server(launch("s3"), creds, timeout_s)
            say(
                f"S3 store ({team.s3_server_kind()}) up on {HOST}:{ports['s3']}, "
                f"bucket {team.BUCKET}"
            )
            launch("prefect")
            launch("mlflow")
            n = dask_workers or available_cores()
            for name, argv in team.dask_commands(ports["dask"], n).items():
                port = ports["dask"] if name == "dask-scheduler" else 0
                start(name, argv, dict(os.environ), port, "tcp" if port else "proc", {})
            say("started Prefect, MLflow and Dask; waiting for their health checks …")
            checks = {m: (servers[m].proc, servers[m].health_url) for m in ("prefect", "mlflow")}
            problems = processes.wait_healthy(checks, timeout_s)
            if not problems and not team.dask_workers_ready(ports["dask"], n, timeout_s):
                problems["dask-workers"] = f"not connected to the scheduler after {timeout_s:.0f} s"
            if problems:
                raise StackError(_startup_failure(servers, problems))

            team.create_work_pool({**os.environ, **team.client_env(ports, creds)})
            team.ensure_crash_automation(ports, creds)
            launch("worker")
            say(f"Prefect worker on work pool {team.WORK_POOL!r}")
        except Exception:
            for s in reversed(list(servers.values())):
                processes.stop(s.proc, sig=_STOP_SIGNAL.get(s.name, signal.SIGTERM))
            state_path().unlink(missing_ok=True)
            raise
        return servers


def _postgres_data() -> Path:
    return team.team_dir() / "postgres" / "data"


def _team_launch(
    name: str, ports: dict[str, int], creds: dict[str, str]
) -> tuple[list[str], dict[str, str], int, str, dict]:
    """How the team stack starts one of its servers: argv, environment, port, health check
    kind and extra Popen arguments (PostgreSQL runs as its own account, in its data dir)."""
    if name == "postgres":
        data = _postgres_data()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        popen = {"cwd": data, **team._as_account(team.postgres_account())}
        return team.postgres_command(data, ports["postgres"]), env, ports["postgres"], "tcp", popen
    if name == "s3":
        return (*team.s3_command(ports["s3"], creds), ports["s3"], "tcp", {})
    if name == "prefect":
        argv, env = server_command("prefect", ports["prefect"], creds)
        env.update(team.prefect_database_env(ports["postgres"], creds))
        return argv, env, ports["prefect"], "http", {}
    if name == "mlflow":
        return (*team.mlflow_command(ports, creds, stack_dir()), ports["mlflow"], "http", {})
    if name == "worker":
        return team.worker_command(), team.worker_env(ports, creds), 0, "proc", {}
    raise StackError(f"no launch recipe for the team stack's {name!r}")


def _spawn_team_server(
    name: str, argv: list[str], env: dict[str, str], port: int, check: str, popen: dict
) -> Server:
    log = stack_dir() / "logs" / f"{name}.log"
    popen = dict(popen)
    proc = processes.spawn(argv, env, log, cwd=popen.pop("cwd", genpar_home()), **popen)
    return Server(name, port, proc, str(log), auth=True, check=check)


def _await_team_server(server: Server, creds: dict[str, str], timeout_s: float) -> None:
    """Wait until a (re)started team server serves: PostgreSQL accepts logins, the S3 store
    holds the bucket (created when missing), Prefect and MLflow answer their health checks."""
    if server.name == "postgres":
        alive = lambda: processes.handle(server.proc) is not None  # noqa: E731
        team.wait_postgres(server.port, creds["postgres_password"], timeout_s, alive)
    elif server.name == "s3":
        team.ensure_bucket(server.port, creds, timeout_s)
    elif server.check == "http":
        check = {server.name: (server.proc, server.health_url)}
        problems = processes.wait_healthy(check, timeout_s)
        if problems:
            raise StackError(_startup_failure({server.name: server}, problems))


# What `genpar restart` brings back (Dask's workers restart by their nanny, the scheduler
# would lose every worker's registration: restart the stack for it).
RESTARTABLE = ("postgres", "s3", "prefect", "mlflow", "worker")


def restart(name: str, *, timeout_s: float = 180.0, say: Callable[[str], None] = print) -> Server:
    """Stop one server of the running team stack and start it again on its port with the same
    state: PostgreSQL's data directory, Prefect's and MLflow's databases. An S3 store keeps its
    objects when it is MinIO; moto's server (tests) keeps them in memory, so it comes back
    empty, with the bucket recreated. For an operator after a change of a server's settings
    or a crash, and for the fault tests (tests/scaleout).

    Raises:
        StackError: no team stack is recorded, the name is not restartable, or the server did
            not come back (its log tail included).
    """
    with _locked():
        servers = read_servers()
        if "postgres" not in servers:
            raise StackError(
                f"no team stack is running for {genpar_home()}: `genpar restart` restarts one "
                "server of the team stack (`genpar up --team`)"
            )
        if name not in RESTARTABLE:
            raise StackError(
                f"cannot restart {name!r}: the team stack restarts {', '.join(RESTARTABLE)} "
                "one by one (`genpar down` and `genpar up --team` restart everything)"
            )
        old = servers[name]
        if processes.stop(old.proc, sig=_STOP_SIGNAL.get(name, signal.SIGTERM)):
            say(f"stopped {name} (pid {old.proc.pid})")
        else:
            say(f"{name} (pid {old.proc.pid}) was not running")
        ports = {n: s.port for n, s in servers.items() if n in team.TEAM_PORTS}
        ports["dask"] = servers["dask-scheduler"].port
        creds = team.ensure_team_credentials(stack_dir())
        argv, env, port, check, popen = _team_launch(name, ports, creds)
        server = _spawn_team_server(name, argv, env, old.port, check, popen)
        servers[name] = server
        _write_servers(servers)
        _await_team_server(server, creds, timeout_s)
        say(f"{name} is back (pid {server.proc.pid}, {server.what})")
        return server


def _startup_failure(servers: dict[str, Server], problems: dict[str, str]) -> str:
    parts = ["the genpar stack did not start:"]
    for name, problem in problems.items():
        s = servers[name]
        parts.append(f"  {name} on port {s.port} {problem}; last lines of {s.log}:")
        parts += [f"    {line}" for line in processes.tail(Path(s.log)).splitlines()]
    return "\n".join(parts)


def down(say: Callable[[str], None] = print) -> bool:
    """Stop `genpar serve` (if recorded) and both servers; False when nothing was running."""
    with _locked():
        serving.stop_serve(say)
        servers = read_servers()
        if not servers:
            return False
        for wave in stop_waves(list(servers)):  # each server after its clients, a wave at once
            with concurrent.futures.ThreadPoolExecutor(len(wave)) as pool:
                stopped = pool.map(
                    lambda n: processes.stop(
                        servers[n].proc, sig=_STOP_SIGNAL.get(n, signal.SIGTERM)
                    ),
                    wave,
                )
                for name, was_running in zip(wave, list(stopped), strict=True):
                    s = servers[name]
                    if was_running:
                        say(f"stopped {name} (pid {s.proc.pid}, {s.url})")
                    else:
                        say(f"{name} (pid {s.proc.pid}) was not running any more (stale state "
                            "cleared)")  # fmt: skip
        state_path().unlink(missing_ok=True)
        return True


# Which servers talk to which: a server stops only once its clients are gone (PostgreSQL
# after Prefect and MLflow, the bucket after MLflow, Prefect after its worker, the Dask
# scheduler after its workers), so nothing is left retrying against a server that went first.
_CLIENTS = {
    "postgres": ("prefect", "mlflow"),
    "s3": ("mlflow",),
    "prefect": ("worker",),
    "dask-scheduler": ("dask-workers",),
}


def stop_waves(names: list[str]) -> list[list[str]]:
    """`names` (the recorded servers, in start order) in waves that `genpar down` stops
    together: each server in a wave after all of its clients' waves. Each server takes a
    second or more to exit; stopping the 7 of the team stack one by one took about 16 s."""
    left, waves = list(reversed(names)), []
    while left:
        wave = [n for n in left if not set(_CLIENTS.get(n, ())) & set(left)] or left
        waves.append(wave)
        left = [n for n in left if n not in wave]
    return waves


def server_states() -> list[tuple[Server, str]]:
    """(server, 'running' | 'not answering …' | 'not running …') for each recorded server."""
    out = []
    for s in read_servers().values():
        if processes.handle(s.proc) is None:
            out.append((s, f"not running (stale: pid {s.proc.pid} is gone)"))
        elif s.healthy():
            out.append((s, "running"))
        else:
            where = s.health_url if s.check == "http" else f"{HOST}:{s.port}"
            out.append((s, f"not answering {where} (starting, or hung)"))
    return out


ANSWER_GRACE_S = 30.0  # how long a live server may take to answer before it counts as down


def use_stack() -> str | None:
    """Point this process (and its children) at the running stack; a note when it is stale.

    A user's own PREFECT_API_URL / MLFLOW_TRACKING_URI win. Returns None when the stack is up
    (or was never started), else a one-line warning that the embedded defaults are used.
    """
    states = server_states()
    if not states:
        return None
    deadline = time.monotonic() + ANSWER_GRACE_S
    while time.monotonic() < deadline and any(st.startswith("not answering") for _, st in states):
        time.sleep(1)  # alive but slow (a busy machine): not a reason to write elsewhere
        states = server_states()
    if any(state != "running" for _, state in states):
        bad = "; ".join(f"{s.name} {state}" for s, state in states if state != "running")
        return f"genpar stack is not healthy ({bad}); using the embedded defaults (`genpar status`)"
    env = {"prefect": "PREFECT_API_URL", "mlflow": "MLFLOW_TRACKING_URI"}
    for s, _ in states:
        if s.name in env:
            os.environ.setdefault(env[s.name], s.api_url)
        elif s.name == "dask-scheduler":  # the team stack's cluster: compute.dask_address
            os.environ.setdefault(team.DASK_ENV, f"tcp://{HOST}:{s.port}")
            # its crash automation marks a run CRASHED after GENPAR_CRASH_AFTER_S without a
            # beat: a run started here beats as often as the worker's (Prefect's default 180 s
            # would have it crashed while alive)
            os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(team.HEARTBEAT_S))
        elif s.name == "s3":  # what MLflow proxies artifacts to, for errors that name it
            os.environ.setdefault(
                team.ARTIFACT_STORE_ENV, f"s3://{team.BUCKET} at http://{HOST}:{s.port}"
            )
    if any(s.auth for s, _ in states):  # its credentials, for this process and its children
        for key, value in credentials.client_env(credentials.read_credentials(stack_dir())).items():
            os.environ.setdefault(key, value)
    return None
