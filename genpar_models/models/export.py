"""A trained network as files: `model.safetensors` (tensors only) + `model.json` (its spec).

The exported model is what the registry stores, what evaluation, generation and compression
load, and what a warm start reads. `model.json` holds the family's `model_spec()` (JSON
constructor arguments), the sha256 of the tensors and the caller's metadata; `load_model`
rebuilds the network through its family and loads the verified weights, so no code is ever
unpickled from an artifact.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genpar_models.errors import CheckpointError, ConfigError
from genpar_models.models.registry import get_family
from genpar_models.util import atomic

# genpar_models.util.tensorfile (torch, safetensors) is imported where tensors are read or
# written: the pipeline flow's task modules import this one for model.json alone (`read_meta`,
# META_FILE) and must not pay torch's import at the CLI's start-up for it (issue 18).
if TYPE_CHECKING:
    import torch
    from torch import nn

    from genpar_models.config import ModelConfig

MODEL_FILE = "model.safetensors"
META_FILE = "model.json"


def build_model(cfg: ModelConfig, image_shape: Sequence[int]) -> nn.Module:
    """A freshly initialised network of the `model` section's family for (C, H, W) images.

    Raises:
        ConfigError: `model.name` names no registered family.
    """
    return get_family(cfg.name).build(cfg, image_shape)


def build_model_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Rebuild a network's architecture from its `model_spec()` dict (weights not included).

    Raises:
        ConfigError: an unknown family, or arguments the family's network does not accept.
    """
    name = spec.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"model spec has no family 'name': {dict(spec)}")
    family = get_family(name)
    try:
        return family.rebuild(spec)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model spec for {name!r} is invalid ({sorted(spec)}): {e}") from e


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters())


def export_model(
    directory: Path,
    *,
    spec: dict[str, Any],
    meta: dict[str, Any],
    module: nn.Module | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
    variants: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> Path:
    """Write weights as model.safetensors + model.json (spec, sha256, metadata).

    Args:
        module / state: the network, or the state_dict to write (e.g. with averaged weights).
        variants: other weights of the same network by name (e.g. "raw": the last iterate of
            a model exported with its moving average), written as <name>.safetensors and
            listed with their sha256 under "variants" in model.json; `load_model(variant=)`.
    """
    from genpar_models.util import tensorfile

    if (module is None) == (state is None):
        raise ValueError("export_model takes exactly one of module and state")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MODEL_FILE
    digest, size = tensorfile.write_tensors(path, state if module is None else module.state_dict())
    listed: dict[str, dict[str, Any]] = {}
    for name, weights in (variants or {}).items():
        if not name.isidentifier():
            raise ValueError(f"variant names are identifiers, got {name!r}")
        file = f"{name}.safetensors"
        v_digest, v_size = tensorfile.write_tensors(directory / file, weights)
        listed[name] = {"file": file, "sha256": v_digest, "size_bytes": v_size}
    extra = {"variants": listed} if listed else {}
    atomic.write_json(
        directory / META_FILE,
        {
            **meta,
            **extra,
            "format": tensorfile.FORMAT,
            "model_spec": spec,
            "sha256": digest,
            "size_bytes": size,
        },
    )
    return path


def variants_of(meta: Mapping[str, Any]) -> list[str]:
    """Names of the other weights exported beside the model (model.json's "variants")."""
    return sorted(meta.get("variants") or {})


def read_meta(directory: str | Path) -> dict[str, Any]:
    """model.json of an exported model.

    Raises:
        CheckpointError: it is missing or not JSON (names the file).
    """
    path = Path(directory) / META_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; not an exported genpar model") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None


def load_exported(
    directory: str | Path, variant: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify an exported model (its directory or its .safetensors file).

    Args:
        variant: read these weights listed under "variants" instead of the model's.

    Returns:
        (state_dict, model.json).

    Raises:
        CheckpointError: a file is missing or does not match its sha256, or no such variant.
    """
    from genpar_models.util import tensorfile

    directory = Path(directory)
    path = directory / MODEL_FILE if directory.is_dir() else directory
    meta = read_meta(path.parent)
    if variant is None:
        return tensorfile.read_tensors(path, meta.get("sha256"), listed_in=META_FILE), meta
    entry = (meta.get("variants") or {}).get(variant)
    if not isinstance(entry, dict) or not str(entry.get("file", "")).endswith(".safetensors"):
        raise CheckpointError(
            f"{path.parent / META_FILE}: no variant {variant!r} (has {variants_of(meta)})"
        )
    file = path.parent / Path(entry["file"]).name
    return tensorfile.read_tensors(file, entry.get("sha256"), listed_in=META_FILE), meta


def load_model(
    model_dir: str | Path, device: str | torch.device = "cpu", variant: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from model.json and load its verified weights (eval mode);
    `variant` loads other weights exported with it (`variants_of(meta)`)."""
    state, meta = load_exported(Path(model_dir), variant)
    spec = meta.get("model_spec")
    if not isinstance(spec, dict):
        raise CheckpointError(f"{model_dir}: model.json has no model_spec")
    try:
        model = build_model_from_spec(spec)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{model_dir}: weights do not fit the model spec {spec}: {e}"
        ) from None
    return model.to(device).eval(), meta
