"""Operating genpar: the local stack, deployments and sampling from registered models.

Commands are added here (up, down, status, serve, generate) and registered on the `genpar`
app by `register`.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `genpar` app."""
