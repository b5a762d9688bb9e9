"""The registry of model families: `model.name` -> the `Family` every stage asks.

Built-in families are imported when first asked for, so reading or checking a config never
imports torch. Other families come from plugins, each of which calls `register_family` when
imported: an installed package declaring an entry point in the `genpar.families` group (name =
the family's name), or a module named in the GENPAR_FAMILIES environment variable (comma-
separated). torchrun ranks and Dask workers inherit the environment, so they find the same
families as the process that launched them.

A name with a colon, "package.module:ClassName", is your own network: the class is imported
(only then, and with it torch) and wrapped in an adapter family of the kind it implements
(genpar_models/models/custom/), registered under that name.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
from typing import TYPE_CHECKING

from genpar_models.config import SHARED_FIELDS, ModelConfig, PipelineConfig
from genpar_models.errors import ConfigError

if TYPE_CHECKING:
    from genpar_models.models.family import Family

BUILTIN = {
    "vae": "genpar_models.models.vae",
    "dcgan": "genpar_models.models.gan",
    "rvae": "genpar_models.models.rvae",
}
ENTRY_POINT_GROUP = "genpar.families"
PLUGINS_ENV = "GENPAR_FAMILIES"

_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family under `family.name` (registering the same object twice is a no-op).

    Raises:
        ValueError: another family already holds the name.
    """
    existing = _FAMILIES.get(family.name)
    if existing is not None and existing is not family:
        raise ValueError(f"model family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _plugin_modules() -> list[str]:
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def _import_plugin(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"{PLUGINS_ENV}: cannot import model family module {module!r}: {e}"
        ) from e


def family_names() -> list[str]:
    """Every family name that `get_family` can resolve (plugins from the environment loaded)."""
    for module in _plugin_modules():
        _import_plugin(module)
    return sorted(set(_FAMILIES) | set(BUILTIN) | set(_entry_points()))


def get_family(name: str) -> Family:
    """The family `model.name` names.

    Raises:
        ConfigError: naming `model.name`, the known families and the closest match.
    """
    if name in _FAMILIES:
        return _FAMILIES[name]
    if ":" in name:  # your own network (import path): its class is imported only now
        from genpar_models.models.custom import custom_family

        return register_family(custom_family(name))
    if name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    elif name in (eps := _entry_points()):
        loaded = eps[name].load()
        if getattr(loaded, "name", None) == name and name not in _FAMILIES:
            register_family(loaded)
    else:
        for module in _plugin_modules():
            _import_plugin(module)
    if name not in _FAMILIES:
        known = family_names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"model.name: unknown model family {name!r}{hint} (known: {', '.join(known)}; "
            f"plugins register more through the {ENTRY_POINT_GROUP!r} entry points or "
            f"{PLUGINS_ENV})"
        )
    return _FAMILIES[name]


def check_model_config(config: PipelineConfig | ModelConfig) -> Family:
    """The config's family, after checking that it reads every model field set off its default.

    Your own network (model.name "package.module:ClassName") is also built for the data's image
    shape when `config` is a whole pipeline config, run once and rebuilt from its spec
    (custom.check_custom), so a class that will not train fails here, before any work.

    Raises:
        ConfigError: an unknown family, or a field (named) that this family does not read;
            for your own network, what is wrong with its class, options or spec.
    """
    model = config.model if isinstance(config, PipelineConfig) else config
    family = get_family(model.name)
    for field, info in ModelConfig.model_fields.items():
        if field in SHARED_FIELDS or field in family.options:
            continue
        if getattr(model, field) != info.get_default(call_default_factory=True):
            raise ConfigError(
                f"model.{field}={getattr(model, field)!r}: the {family.name} family does not "
                f"read model.{field}; remove it (it reads "
                f"{', '.join(f'model.{f}' for f in (*SHARED_FIELDS, *family.options))})"
            )
    modality = config.data.modality if isinstance(config, PipelineConfig) else None
    if modality is not None and modality != family.modality:
        raise ConfigError(
            f"model.name={family.name!r} models {family.modality}, but data.modality is "
            f"{modality!r}; pick a family for {modality} (rvae for sequences)"
        )
    if ":" in model.name and isinstance(config, PipelineConfig):
        from genpar_models.models.custom.check import check_custom

        data = config.data
        check_custom(family, model, (data.channels, data.image_size, data.image_size))
    return family
