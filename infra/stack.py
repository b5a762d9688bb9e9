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
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from genpar_models.errors import GenparError
from genpar_models.util import atomic, lease
from genpar_models.util.paths import default_tracking_uri, genpar_home, mlflow_root
from infra import credentials, processes, serving
from infra.processes import HOST, Proc

SERVERS = ("prefect", "mlflow")
DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000}
PORT_OPTIONS = {"prefect": "--prefect-port", "mlflow": "--mlflow-port"}


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
            **self.proc.as_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Server:
        proc = Proc(pid=int(d["pid"]), create_time=float(d["create_time"]))
        port, auth = int(d["port"]), bool(d.get("auth", False))
        return cls(name=d["name"], port=port, proc=proc, log=d["log"], auth=auth)


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


def _check_ports(ports: dict[str, int]) -> None:
    if len(set(ports.values())) < len(ports):
        raise StackError(f"the servers need two different ports, got {ports}")
    for name, port in ports.items():
        if not processes.port_free(port):
            user = processes.port_user(port)
            raise StackError(
                f"port {port} on {HOST} is already in use{f' ({user})' if user else ''}; "
                f"start the stack with another {name} port: genpar up {PORT_OPTIONS[name]} N"
            )


def _clear_stale(say: Callable[[str], None]) -> None:
    """A stack that is recorded but not (fully) running: stop what is left, forget the rest."""
    servers = read_servers()
    if not servers:
        return
    alive = {n: s for n, s in servers.items() if processes.handle(s.proc)}
    if len(alive) == len(SERVERS) and all(processes.http_ok(s.health_url) for s in alive.values()):
        urls = ", ".join(f"{n} {s.url}" for n, s in servers.items())
        raise AlreadyRunning(f"the genpar stack is already running: {urls}")
    if len(alive) == len(SERVERS):
        raise StackError(
            "the genpar stack is running but not answering its health checks "
            f"({', '.join(s.health_url for s in alive.values())}); run `genpar down`, then "
            f"`genpar up` (logs in {stack_dir() / 'logs'})"
        )
    for s in alive.values():
        processes.stop(s.proc)
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
        for name, s in servers.items():
            if processes.stop(s.proc):
                say(f"stopped {name} (pid {s.proc.pid}, {s.url})")
            else:
                say(f"{name} (pid {s.proc.pid}) was not running any more (stale state cleared)")
        state_path().unlink(missing_ok=True)
        return True


def server_states() -> list[tuple[Server, str]]:
    """(server, 'running' | 'not answering …' | 'not running …') for each recorded server."""
    out = []
    for s in read_servers().values():
        if processes.handle(s.proc) is None:
            out.append((s, f"not running (stale: pid {s.proc.pid} is gone)"))
        elif processes.http_ok(s.health_url):
            out.append((s, "running"))
        else:
            out.append((s, f"not answering {s.health_url} (starting, or hung)"))
    return out


def use_stack() -> str | None:
    """Point this process (and its children) at the running stack; a note when it is stale.

    A user's own PREFECT_API_URL / MLFLOW_TRACKING_URI win. Returns None when the stack is up
    (or was never started), else a one-line warning that the embedded defaults are used.
    """
    states = server_states()
    if not states:
        return None
    if any(state != "running" for _, state in states):
        bad = "; ".join(f"{s.name} {state}" for s, state in states if state != "running")
        return f"genpar stack is not healthy ({bad}); using the embedded defaults (`genpar status`)"
    env = {"prefect": "PREFECT_API_URL", "mlflow": "MLFLOW_TRACKING_URI"}
    for s, _ in states:
        os.environ.setdefault(env[s.name], s.api_url)
    if any(s.auth for s, _ in states):  # its credentials, for this process and its children
        for key, value in credentials.client_env(credentials.read_credentials(stack_dir())).items():
            os.environ.setdefault(key, value)
    return None
