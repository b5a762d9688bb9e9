"""Reading a config: YAML files, dotted `--set` overrides (type-checked, with did-you-mean),
migration of older versions, and validation into a `PipelineConfig` whose errors name the field.
"""

from __future__ import annotations

import difflib
import json
import logging
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from genpar_models.config import identity
from genpar_models.config.migrate import migrate
from genpar_models.config.pipeline import PipelineConfig
from genpar_models.errors import ConfigError

log = logging.getLogger("genpar.config")


def _shown(loc: str, value: Any) -> Any:
    """A rejected value as an error may show it: URLs that can hold credentials or tokens
    are masked (a typo in a webhook URL must not print its token)."""
    if not isinstance(value, str):
        return value
    if loc == "retrain.notify_url":
        return identity.redact_webhook(value) if "://" in value else value.split("/")[0]
    if loc == "tracking.uri":
        return identity.redact_uri(value)
    return value


def format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        got = _shown(loc, e.get("input"))
        shown = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def _known_fields(
    model: type[BaseModel], parts: list[str], override: str, label: str | None = None
) -> type[BaseModel] | None:
    """Walk `parts` through the model tree; raise ConfigError for an unknown key (the message
    starts with `label`, default "override '<override>'")."""
    label = label or f"override {override!r}"
    current: type[BaseModel] | None = model
    for depth, part in enumerate(parts):
        if current is None:
            raise ConfigError(f"{label}: {'.'.join(parts[:depth])} is not a section")
        fields = current.model_fields
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            hint = difflib.get_close_matches(part, list(fields), n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"{label}: unknown key {part!r} in {where}{suggestion} (known: {', '.join(fields)})"
            )
        ann = fields[part].annotation
        if typing.get_origin(ann) is dict and depth < len(parts) - 1:
            return None  # a free mapping (model.options): its keys are the user's own
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return current


def check_dotted_key(key: str, label: str) -> None:
    """`key` names a field (not a section) of the config tree; ConfigError (did-you-mean)
    starting with `label` otherwise."""
    if _known_fields(PipelineConfig, key.strip().split("."), key, label) is not None:
        raise ConfigError(f"{label}: {key} is a section, not a field; name one of its fields")


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides (values parsed as YAML) to a plain config dict."""
    tree = json.loads(json.dumps(tree))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key.path=value, e.g. train.lr=3e-4")
        parts = key.strip().split(".")
        _known_fields(PipelineConfig, parts, item)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return tree


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(tree).__name__}")
    return tree


def build_config(tree: dict[str, Any], origin: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin)) from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> PipelineConfig:
    """Read a YAML config (or the defaults when path is None), apply overrides, validate.

    A file without `version` is version 1 and is migrated, with a one-line notice naming it.

    Raises:
        ConfigError: naming the file, the dotted field and the allowed values.
    """
    tree = read_config_file(path) if path else {}
    if path:
        tree.setdefault("version", 1)
        if isinstance(tree["version"], int) and not isinstance(tree["version"], bool):
            tree, notes = migrate(tree)
            for note in notes:
                log.warning("%s: config migrated from version %s", path, note)
    tree = apply_overrides(tree, overrides or [])
    origin = str(path) if path else "defaults"
    if overrides:
        origin += " with " + " ".join(_shown_override(o) for o in overrides)
    return build_config(tree, origin)


def _shown_override(override: str) -> str:
    key, sep, value = override.partition("=")
    return f"{key}{sep}{_shown(key.strip(), value.strip())}" if sep else override


def dump_config(cfg: PipelineConfig) -> str:
    """The config as YAML, in the same shape the files in configs/ have."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
