"""Operating genpar: the local stack, deployments, the nightly retrain and sampling.

`genpar up/down/status` manage the local Prefect and MLflow servers (flows/stack.py),
`genpar serve` serves the deployments (flows/deployments.py), `genpar retrain` runs the
nightly retrain once now, and `genpar generate` samples from a registered model. Commands
are added to the `genpar` app by `register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import SetOpt, console, fail, prefect_defaults, server_starting_alongside

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


def _load(config: Path | None, set_: list[str] | None):
    from genpar_models.config import load_config
    from genpar_models.errors import GenparError

    try:
        return load_config(config, set_ or [])
    except GenparError as e:
        fail(str(e))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `genpar` app."""
    for command in (up, down, status, serve, retrain, generate):
        app.command()(command)


def up(
    prefect_port: PrefectPort = 4200,
    mlflow_port: MlflowPort = 5000,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the health checks.")] = 180,
) -> None:
    """Start the local stack: a Prefect server and an MLflow server on 127.0.0.1.

    Their databases and artifacts live under the genpar home. While it is up, `genpar run`,
    `genpar serve` and the deployments use it; `genpar down` stops it.
    """
    from flows import stack

    try:
        servers = stack.up({"prefect": prefect_port, "mlflow": mlflow_port}, timeout_s=timeout)
    except stack.AlreadyRunning as e:
        console.print(f"{e}; nothing started (`genpar down` stops it)", highlight=False)
        return
    except stack.StackError as e:
        fail(str(e), code=1)
    prefect, mlflow = servers["prefect"], servers["mlflow"]
    console.print(f"[bold green]genpar stack up[/] (home {stack.genpar_home()})")
    console.print(f"  Prefect UI  {prefect.url}   (API {prefect.api_url})", highlight=False)
    console.print(f"  MLflow UI   {mlflow.url}", highlight=False)
    console.print(
        "next: [bold]genpar serve CONFIG[/] serves the deployments; `genpar run` now records "
        "here; `genpar down` stops the stack"
    )


def down() -> None:
    """Stop the local stack (and a `genpar serve` started for it)."""
    from flows import stack

    if not stack.down(say=lambda m: console.print(m, highlight=False)):
        console.print(
            f"nothing to stop: no genpar stack is running for {stack.genpar_home()}",
            highlight=False,
        )


def status() -> None:
    """Say what runs: the stack's servers (with health), and `genpar serve`.

    Exit status: 0 all running, 1 something recorded is down or not answering, 3 no stack.
    """
    from flows import stack

    states = stack.server_states()
    served = stack.serve_state()
    if not states:
        console.print(f"no genpar stack is running for {stack.genpar_home()} (`genpar up`)")
    for server, state in states:
        colour = "green" if state == "running" else "red"
        console.print(
            f"{server.name:8s} [{colour}]{state}[/]  {server.url}  (pid {server.proc.pid})",
            highlight=False,
        )
    if served:
        info, state = served
        colour = "green" if state == "running" else "red"
        names = ", ".join(info.get("deployments", []))
        console.print(
            f"{'serve':8s} [{colour}]{state}[/]  pid {info['pid']}, config "
            f"{info.get('config')!r}: {names}",
            highlight=False,
        )
    healthy = all(state == "running" for _, state in states)
    if served and served[1] != "running":
        healthy = False
    raise typer.Exit(3 if not states else 0 if healthy else 1)


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
    cfg = _load(config, set_)
    _use_servers(required=True)
    from flows.deployments import serve_deployments

    serve_deployments(cfg, limit=limit, say=lambda m: console.print(m, highlight=False))


def _use_servers(required: bool) -> None:
    import os

    from flows.processes import http_ok

    prefect_defaults()  # points at the local stack while it runs
    api = os.environ.get("PREFECT_API_URL")
    if required and not api:
        fail(
            "genpar serve needs a Prefect server: start the local stack with `genpar up`, "
            "or set PREFECT_API_URL to yours",
            code=1,
        )
    if required and not http_ok(f"{api.rstrip('/')}/health", timeout_s=10):
        fail(f"the Prefect server at PREFECT_API_URL={api} does not answer /health", code=1)


def retrain(
    config: Annotated[Path, typer.Argument(help="Pipeline config YAML.")], set_: SetOpt = None
) -> None:
    """Run the nightly retrain once, now: train a challenger and promote it only if better."""
    from genpar_models.errors import GenparError

    cfg = _load(config, set_)
    _use_servers(required=False)
    with server_starting_alongside():
        from flows.nightly import nightly_retrain

    try:
        result = nightly_retrain(cfg)
    except GenparError as e:
        fail(str(e), code=1)
    console.print(f"[bold]{result['decision']['action']}[/]: {result['decision']['reason']}")
    console.print(f"challenger: MLflow run {result['run_id']}, version {result['model_version']}")


def generate(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Model reference: champion, NAME@ALIAS, models:/NAME/VERSION, "
            "a run id or a model directory.",
        ),
    ] = "champion",
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Number of samples.")] = 1000,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (created).")] = Path(
        "samples"
    ),
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Config YAML (generate/compute sections).")
    ] = None,
    set_: SetOpt = None,
    seed: Annotated[
        int | None, typer.Option(help="Generation seed (default: the config's).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
) -> None:
    """Sample from a registered model in parallel (Dask): .npy chunks, samples.json, grid.png."""
    from genpar_models.errors import GenparError

    cfg = _load(config, set_)
    _use_servers(required=False)
    with server_starting_alongside():
        from flows.sampling import generate_samples

    try:
        result = generate_samples(
            cfg, model, n=n, out=out, seed=seed, overwrite=overwrite, named=config is not None
        )
    except GenparError as e:
        fail(str(e), code=1)
    console.print(
        f"[bold green]wrote {n} samples[/] from {result['model']} to {result['out']} "
        f"({result['samples_per_s']:.0f} samples/s); grid: {result['grid']}",
        highlight=False,
    )
