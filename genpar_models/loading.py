"""Load an exported model (`model.safetensors` + `model.json`) back into a module.

Only tensors are read (safetensors, hash-checked); the module is rebuilt from the JSON spec, so
no code is ever unpickled from an artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genpar_models.checkpoint import load_exported
from genpar_models.errors import CheckpointError
from genpar_models.models import build_model_from_spec


def load_model(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the module from model.json and load its verified weights (eval mode)."""
    state, meta = load_exported(Path(model_dir))
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
