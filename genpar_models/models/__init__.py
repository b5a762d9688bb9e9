"""The model registry: config names ("vae", "dcgan") to model classes, and how to build them.

`build_model` turns the `model` config section plus the data's image shape into a module;
`model_spec()` on a built model gives a small JSON dict that `build_model_from_spec` turns back
into the same architecture (checkpoints store it next to the weights, so no pickling).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from torch import nn

from genpar_models.errors import ConfigError

if TYPE_CHECKING:
    from genpar_models.config import ModelConfig

__all__ = [
    "MODELS",
    "register_model",
    "build_model",
    "build_model_from_spec",
    "count_parameters",
]

MODELS: dict[str, type[nn.Module]] = {}

ModelClass = TypeVar("ModelClass", bound=type[nn.Module])


def register_model(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator adding a model under `name`, the value of `model.name` that selects it.

    A registered class takes keyword-only constructor arguments and has
    `from_config(cfg, image_shape)` and `model_spec()`.
    """

    def decorator(cls: ModelClass) -> ModelClass:
        existing = MODELS.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"model name {name!r} is already registered to {existing.__name__}")
        MODELS[name] = cls
        return cls

    return decorator


def _lookup(name: object, field: str) -> type[nn.Module]:
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"{field}: unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_model(cfg: ModelConfig, image_shape: Sequence[int]) -> nn.Module:
    """A freshly initialised model for the `model` config section and (C, H, W) images.

    Raises:
        ConfigError: if `cfg.name` is not a registered model (names `model.name`).
    """
    cls = _lookup(cfg.name, "model.name")
    return cls.from_config(cfg, image_shape)  # type: ignore[attr-defined]


def build_model_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model's architecture from its `model_spec()` dict (weights not included).

    Raises:
        ConfigError: for an unknown name or arguments the model does not accept.
    """
    kwargs = dict(spec)
    name = kwargs.pop("name", None)
    cls = _lookup(name, "model spec 'name'")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model spec for {name!r} is invalid ({sorted(kwargs)}): {e}") from e


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters())


# Importing the model modules registers them. They import `register_model` from this package,
# so these imports must come after it.
from genpar_models.models import dcgan, vae  # noqa: E402, F401
