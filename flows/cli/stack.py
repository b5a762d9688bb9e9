"""The local stack and its deployments: `genpar up`, `down`, `restart`, `status` and `serve`.

`up/down/status` manage the local Prefect and MLflow servers (infra/stack.py); `serve` serves
the deployments (flows/deployments.py) against them, or against PREFECT_API_URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.app import app
from flows.cli.common import SetOpt, console, fail, load_or_fail, use_servers

PrefectPort = Annotated[
    int, typer.Option("--prefect-port", envvar="GENPAR_PREFECT_PORT", help="Prefect server port.")
]
MlflowPort = Annotated[
    int, typer.Option("--mlflow-port", envvar="GENPAR_MLFLOW_PORT", help="MLflow server port.")
]
OptConfigArg = Annotated[
    Path | None,
    typer.Argument(help="Pipeline config YAML whose values become the deployments' defaults."),
]

PANEL = "Local stack and deployments"


@app.command(rich_help_panel=PANEL)
def up(
    prefect_port: PrefectPort = 4200,
    mlflow_port: MlflowPort = 5000,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the health checks.")] = 180,
    auth: Annotated[
        bool,
        typer.Option(
            "--auth/--no-auth",
            help="Require credentials on both servers (MLflow basic auth, Prefect's auth "
            "string), generated once into $GENPAR_HOME/stack/credentials.json (mode 0600); "
            "genpar's commands pick them up.",
        ),
    ] = False,
    team: Annotated[
        bool,
        typer.Option(
            "--team",
            help="Start the team stack instead: PostgreSQL, an S3 store (MinIO, else moto), "
            "Prefect and MLflow on them with credentials, a Dask scheduler and workers, and a "
            "Prefect worker on the 'genpar' process work pool (infra/README.md).",
        ),
    ] = False,
    postgres_port: Annotated[
        int, typer.Option("--postgres-port", help="--team: PostgreSQL port.")
    ] = 5433,
    s3_port: Annotated[int, typer.Option("--s3-port", help="--team: S3 store port.")] = 9000,
    dask_port: Annotated[
        int, typer.Option("--dask-port", help="--team: Dask scheduler port.")
    ] = 8786,
    dask_workers: Annotated[
        int | None, typer.Option("--dask-workers", help="--team: Dask workers (default: cores).")
    ] = None,
) -> None:
    """Start the local stack: a Prefect server and an MLflow server on 127.0.0.1.

    Their databases and artifacts live under the genpar home. While it is up, `genpar run`,
    `genpar serve` and the deployments use it; `genpar down` stops it. With --team, the team
    stack (every server on 127.0.0.1; the same code path as a team's own servers).
    """
    from genpar_models.errors import GenparError
    from infra import stack

    say = lambda m: console.print(m, highlight=False)  # noqa: E731
    try:
        ports = {"prefect": prefect_port, "mlflow": mlflow_port}
        if team:
            ports |= {"postgres": postgres_port, "s3": s3_port, "dask": dask_port}
            servers = stack.up_team(ports, timeout_s=timeout, say=say, dask_workers=dask_workers)
        else:
            servers = stack.up(ports, timeout_s=timeout, auth=auth)
    except stack.AlreadyRunning as e:
        console.print(f"{e}; nothing started (`genpar down` stops it)", highlight=False)
        return
    except GenparError as e:
        fail(str(e), code=1)
    prefect, mlflow = servers["prefect"], servers["mlflow"]
    console.print(f"[bold green]genpar stack up[/] (home {stack.genpar_home()})")
    console.print(f"  Prefect UI  {prefect.url}   (API {prefect.api_url})", highlight=False)
    console.print(f"  MLflow UI   {mlflow.url}", highlight=False)
    if team:
        console.print(
            f"  PostgreSQL  {stack.HOST}:{postgres_port}   S3 http://{stack.HOST}:{s3_port} "
            f"(bucket {stack.team.BUCKET})   Dask tcp://{stack.HOST}:{dask_port}",
            highlight=False,
        )
        console.print(
            f"  Prefect work pool {stack.team.WORK_POOL!r} with a worker", highlight=False
        )
    if auth or team:
        creds = stack.credentials.credentials_path(stack.stack_dir())
        console.print(
            f"  both require credentials: {creds} (MLflow: user/password; Prefect UI: the "
            "auth string)",
            highlight=False,
        )
    console.print(
        "next: [bold]genpar serve CONFIG[/] serves the deployments; `genpar run` now records "
        "here; `genpar down` stops the stack"
    )


@app.command(rich_help_panel=PANEL)
def down() -> None:
    """Stop the local stack (and a `genpar serve` started for it)."""
    from infra import stack

    if not stack.down(say=lambda m: console.print(m, highlight=False)):
        console.print(
            f"nothing to stop: no genpar stack is running for {stack.genpar_home()}",
            highlight=False,
        )


@app.command(rich_help_panel=PANEL)
def restart(
    server: Annotated[
        str,
        typer.Argument(
            help="The team stack's server to restart: postgres, s3, prefect, mlflow or worker."
        ),
    ],
    timeout: Annotated[float, typer.Option(help="Seconds to wait until it serves again.")] = 180,
) -> None:
    """Restart one server of the team stack on its port, keeping its state.

    PostgreSQL keeps its data directory, Prefect and MLflow their databases; flow runs that
    the Prefect worker was running die with it (they are marked crashed; run them again to
    resume from their checkpoints). moto's S3 server (used when MinIO is not installed) keeps
    objects in memory only: it comes back empty, with the bucket recreated.
    """
    from genpar_models.errors import GenparError
    from infra import stack

    try:
        stack.restart(server, timeout_s=timeout, say=lambda m: console.print(m, highlight=False))
    except GenparError as e:
        fail(str(e), code=1)


@app.command(rich_help_panel=PANEL)
def status() -> None:
    """Say what runs: the stack's servers (with health), and `genpar serve`.

    Exit status: 0 all running, 1 something recorded is down or not answering, 3 no stack.
    """
    from infra import serving, stack

    states = stack.server_states()
    served = serving.serve_state()
    if not states:
        console.print(f"no genpar stack is running for {stack.genpar_home()} (`genpar up`)")
    width = max([len("serve"), *(len(server.name) for server, _ in states)]) + 2
    for server, state in states:
        colour = "green" if state == "running" else "red"
        console.print(
            f"{server.name:{width}s}[{colour}]{state}[/]  {server.what}  (pid {server.proc.pid})",
            highlight=False,
        )
    if served:
        info, state = served
        colour = "green" if state == "running" else "red"
        names = ", ".join(info.get("deployments", []))
        console.print(
            f"{'serve':{width}s}[{colour}]{state}[/]  pid {info['pid']}, config "
            f"{info.get('config')!r}: {names}",
            highlight=False,
        )
    healthy = all(state == "running" for _, state in states)
    if served and served[1] != "running":
        healthy = False
    raise typer.Exit(3 if not states else 0 if healthy else 1)


@app.command(rich_help_panel=PANEL)
def serve(
    config: OptConfigArg = None,
    set_: SetOpt = None,
    limit: Annotated[
        int | None, typer.Option(help="Most flow runs at once in this process (default: any).")
    ] = None,
) -> None:
    """Serve the deployments: pipeline, evaluate and nightly-retrain (on retrain.cron).

    The config's values are the defaults of the Prefect UI's run form; retrain.cron and
    retrain.timezone set the nightly schedule. Needs a Prefect server: `genpar up`, or
    PREFECT_API_URL. Runs until Ctrl-C (or `genpar down`).
    """
    cfg = load_or_fail(config, set_)
    use_servers(required=True)
    from flows.deployments import serve_deployments

    serve_deployments(cfg, limit=limit, say=lambda m: console.print(m, highlight=False))
