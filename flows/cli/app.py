"""The `genpar` Typer app that every command module adds its commands to (`@app.command()`)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="genpar",
    help="Train, evaluate and sample generative models (VAEs, GANs) as a Prefect workflow "
    "with Dask preprocessing, torchrun DDP training and MLflow tracking.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
