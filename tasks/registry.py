"""The MLflow model registry: every pipeline run's model becomes a version; references resolve.

A version's source is the run's logged MLflow model (`models:/m-...`): a pyfunc model written
as models from code around the run's exported weights (tasks/served_model.py), so
`mlflow.pyfunc.load_model("models:/NAME@champion")` and `mlflow models serve` work on it.
Versions registered before that point at the run's `model/` artifact directory (safetensors +
model.json) instead. genpar's own consumers resolve both the same way: through the version's
run, whose `model/` artifact both kinds have, so genpar rebuilds the network from JSON and
loads tensors only. Versions carry the run's key metrics as tags; aliases (`champion`) move
between versions.

A model reference, wherever the CLI takes one, is any of:
    <run id>                       that run's model
    models:/<name>/<version>       a registered version
    models:/<name>@<alias>         a registered alias
    <name>@<alias>, @<alias>       the same (`@champion` uses the default registered name)
    champion                       shorthand for @champion
    /path/to/model_dir             an exported model directory on disk
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from genpar_models.config import redact_uri
from genpar_models.errors import GenparError
from genpar_models.util import atomic
from tasks.served_model import global_tracking_uri

MODEL_ARTIFACT = "model"
ALIAS = "champion"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))$")
_NAME_ALIAS = re.compile(r"^(?P<name>[^/@\s]*)@(?P<alias>[\w.-]+)$")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ModelNotFound(GenparError, LookupError):
    """A model reference matches no run, version, alias or directory."""


@dataclass(frozen=True)
class ResolvedModel:
    model_dir: Path  # local directory with model.safetensors + model.json
    run_id: str | None
    name: str | None = None
    version: str | None = None


def ensure_registered_model(client: MlflowClient, name: str, description: str) -> None:
    """Create the registered model `name` (tagged as genpar's) unless it exists."""
    try:
        client.create_registered_model(name, tags={"genpar": "1"}, description=description)
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise


def register(
    client: MlflowClient,
    run_id: str,
    *,
    name: str,
    tags: dict[str, str],
    description: str = "",
    model_uri: str,
) -> str:
    """Register the run's logged MLflow model `model_uri` (models:/m-...) as a new version of
    `name`; return the version."""
    ensure_registered_model(client, name, "genpar models of this pipeline")
    with global_tracking_uri(client.tracking_uri):
        version = client.create_model_version(
            name,
            model_uri,
            run_id=run_id,
            tags=tags,
            description=description,
            model_id=model_uri.removeprefix("models:/"),
        )
    return str(version.version)


def registered_version_of(client: MlflowClient, name: str, run_id: str) -> str | None:
    """The version of `name` already registered from `run_id`, if any (the lowest)."""
    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:  # no such registered model yet
        return None
    return str(min(int(v.version) for v in found)) if found else None


def register_once(
    client: MlflowClient,
    run_id: str,
    *,
    name: str,
    tags: dict[str, str],
    description: str = "",
    log_model: Callable[[], str],
) -> str:
    """`register` the model `log_model()` logs (returning its URI), idempotent per run: a
    retried task (or a resumed run registering again) gets the version the run already has
    instead of a duplicate, and logs nothing. Its tags are brought up to date."""
    version = registered_version_of(client, name, run_id)
    if version is None:
        return register(
            client, run_id, name=name, tags=tags, description=description, model_uri=log_model()
        )
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return version


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _download(client: MlflowClient, run_id: str, dst: Path) -> Path:
    """Download the run's model into `dst` whole: into a staging directory that replaces
    `dst` only when complete, so a killed download never leaves a partial model behind."""
    try:
        with atomic.staged_directory(dst, replace=True) as staging:
            client.download_artifacts(run_id, MODEL_ARTIFACT, str(staging))
    except (MlflowException, OSError) as e:
        raise ModelNotFound(f"run {run_id} has no '{MODEL_ARTIFACT}' artifact: {e}") from None
    return dst / MODEL_ARTIFACT


def _version(client: MlflowClient, name: str, version: str | None, alias: str | None):
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, str(version))
    except MlflowException:
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        raise ModelNotFound(f"registered model {name!r} has no {what}") from None


def resolve(
    client: MlflowClient, ref: str, *, default_name: str | None, cache: Path
) -> ResolvedModel:
    """Turn a model reference (see the module docstring) into a local model directory.

    Raises:
        ModelNotFound: naming the reference and what was looked for.
    """
    ref = ref.strip()
    if ref == "champion":
        ref = "@champion"
    path = Path(ref).expanduser()
    if (path / "model.json").is_file():
        return ResolvedModel(model_dir=path.resolve(), run_id=None)
    if _RUN_ID.match(ref):
        try:
            client.get_run(ref)
        except MlflowException:
            raise ModelNotFound(f"no MLflow run {ref}") from None
        return ResolvedModel(model_dir=_download(client, ref, cache / ref), run_id=ref)
    m = _MODELS_URI.match(ref) or _NAME_ALIAS.match(ref)
    if m is None:
        raise ModelNotFound(
            f"model reference {ref!r}: expected a run id, models:/<name>/<version>, "
            "models:/<name>@<alias>, <name>@<alias>, champion, or a model directory"
        )
    groups = m.groupdict()
    name = groups.get("name") or default_name
    if not name:
        raise ModelNotFound(f"model reference {ref!r} names no registered model")
    mv = _version(client, name, groups.get("version"), groups.get("alias"))
    model_dir = _download(client, mv.run_id, cache / mv.run_id)
    return ResolvedModel(model_dir=model_dir, run_id=mv.run_id, name=name, version=str(mv.version))


def champion_ref(client: MlflowClient, ref: str, name: str | None) -> str:
    """Make a bare `champion`/`@champion` name a registered model: `name`'s when given, else
    the one genpar model that has a champion.

    Raises:
        ModelNotFound: no registered model, or several, hold the alias and none was named.
    """
    if ref.strip() not in (ALIAS, f"@{ALIAS}"):
        return ref
    if name:
        return f"{name}@{ALIAS}"
    holders = [
        m.name
        for m in client.search_registered_models(filter_string="tags.genpar = '1'")
        if ALIAS in (m.aliases or {})
    ]
    if len(holders) == 1:
        return f"{holders[0]}@{ALIAS}"
    if not holders:
        raise ModelNotFound(
            f"no registered genpar model has a {ALIAS!r} alias yet in "
            f"{redact_uri(client.tracking_uri)}: run the nightly retrain first "
            "(`genpar retrain CONFIG`), or name one: --model models:/NAME/VERSION"
        )
    raise ModelNotFound(
        f"several registered models have a {ALIAS!r}: {', '.join(sorted(holders))}; say which, "
        f"e.g. --model {sorted(holders)[0]}@{ALIAS}"
    )
