"""Credentials of the local stack: generated once, stored 0600 under the genpar home, handed to
servers and clients through the environment only (never a command line, log or parameter).

`genpar up --auth` starts MLflow's basic-auth app (an admin user) and Prefect's server with an
auth string; every genpar command then finds them here (`client_env`), as do the processes it
starts (torchrun ranks, Dask workers, flow runs of `genpar serve`), which inherit them.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from genpar_models.errors import GenparError
from genpar_models.util import atomic

MLFLOW_USER = "admin"
PREFECT_USER = "admin"


def credentials_path(stack_dir: Path) -> Path:
    return stack_dir / "credentials.json"


def ensure_credentials(stack_dir: Path) -> dict[str, str]:
    """The stack's credentials, created on first use: a file only its owner can read."""
    path = credentials_path(stack_dir)
    if path.exists():
        return read_credentials(stack_dir)
    stack_dir.mkdir(parents=True, exist_ok=True)
    creds = {
        "mlflow_username": MLFLOW_USER,
        "mlflow_password": secrets.token_urlsafe(24),
        "prefect_auth_string": f"{PREFECT_USER}:{secrets.token_urlsafe(24)}",
        "flask_secret_key": secrets.token_hex(32),
    }
    # Created 0600 from the start (O_EXCL): the secret is never readable by anyone else.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(creds, fh, indent=2)
    return creds


def read_credentials(stack_dir: Path) -> dict[str, str]:
    path = credentials_path(stack_dir)
    if path.stat().st_mode & 0o077:
        raise GenparError(
            f"{path} is readable by other users (mode {oct(path.stat().st_mode & 0o777)}); "
            f"make it private: chmod 600 {path}"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise GenparError(f"{path} is damaged ({e}); delete it and run `genpar up --auth`") from e


MLFLOW_AUTH_CACHE_S = 60


def server_env(name: str, creds: dict[str, str], stack_dir: Path) -> dict[str, str]:
    """What a server of the stack needs in its environment to require the credentials."""
    if name == "prefect":
        return {"PREFECT_SERVER_API_AUTH_STRING": creds["prefect_auth_string"]}
    ini = stack_dir / "mlflow_auth.ini"
    atomic.write_text(
        ini,
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{stack_dir / 'mlflow_auth.db'}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # A checked password is remembered for a minute instead of re-hashed (scrypt, about
        # 0.1 s of the server's CPU) on every request: a pipeline run makes hundreds. The
        # stack's only user is its admin, whose password genpar never changes while the
        # server runs (one worker process: a change through the API applies at once).
        f"auth_cache_ttl_seconds = {MLFLOW_AUTH_CACHE_S}\n",
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_USERNAME": creds["mlflow_username"],
        "MLFLOW_AUTH_ADMIN_PASSWORD": creds["mlflow_password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["flask_secret_key"],
    }


def client_env(creds: dict[str, str]) -> dict[str, str]:
    """What a client of the stack (any genpar process) needs in its environment."""
    return {
        "MLFLOW_TRACKING_USERNAME": creds["mlflow_username"],
        "MLFLOW_TRACKING_PASSWORD": creds["mlflow_password"],
        "PREFECT_API_AUTH_STRING": creds["prefect_auth_string"],
    }
