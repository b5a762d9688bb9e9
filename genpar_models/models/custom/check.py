"""What is checked of your own network before any training (config check, preflight)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from genpar_models.errors import ConfigError
from genpar_models.models.family import Family

if TYPE_CHECKING:
    from genpar_models.config import ModelConfig


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _expect(path: str, what: str, got: Any, shape: tuple[int, ...]) -> None:
    got_shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
    if got_shape != shape:
        raise ConfigError(
            f"model.name={path!r}: {what} must be a tensor of shape {shape}, got {got_shape}"
        )


def _smoke(path: str, model: nn.Module, kind: str, image_shape: tuple[int, ...]) -> None:
    """One forward pass on two images, checked against the interface's shapes."""
    n, d = 2, model.latent_dim
    x01 = torch.full((n, *image_shape), 0.5)
    z = torch.zeros(n, d)
    try:
        if kind == "vae":
            mu, logvar = model.net.encode(x01)
            _expect(path, "encode(x)[0] (mu)", mu, (n, d))
            _expect(path, "encode(x)[1] (logvar)", logvar, (n, d))
            out = model.net.decode(z)
            _expect(path, "loss(x, decode(z))", model.net.loss(x01, out), (n,))
            _expect(path, "mean(decode(z))", model.net.mean(out), (n, *image_shape))
        else:
            _expect(path, "generator(z)", model.generator(z), (n, *image_shape))
            _expect(path, "discriminator(x)", model.discriminator(2 * x01 - 1), (n,))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's forward failed
        raise ConfigError(
            f"model.name={path!r}: a forward pass on {n} images of shape {image_shape} "
            f"failed: {type(e).__name__}: {e}"
        ) from e


def check_custom(family: Family, cfg: ModelConfig, image_shape: Sequence[int]) -> None:
    """Build the network for `image_shape`, run one forward pass, and check that its spec
    round-trips (build -> model_spec() -> JSON -> rebuild: the same parameter shapes); the
    global RNG is left as it was.

    Raises:
        ConfigError: naming model.name / model.options and what is wrong.
    """
    path, shape = cfg.name, tuple(int(s) for s in image_shape)
    if cfg.base_channels != type(cfg).model_fields["base_channels"].default:
        raise ConfigError(
            f"model.base_channels={cfg.base_channels}: your own network {path!r} takes its "
            f"sizes from model.options; remove model.base_channels"
        )
    kind = "vae" if family.likelihood is not None else "gan"
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        model = family.build(cfg, shape).eval()  # running statistics left alone
        _smoke(path, model, kind, shape)
        spec = json.loads(json.dumps(model.model_spec()))
        try:
            again = family.rebuild(spec)
        except ConfigError as e:
            raise ConfigError(
                f"model.name={path!r}: its spec does not rebuild the network ({e}); spec: {spec}"
            ) from None
        before, after = _shapes(model), _shapes(again)
        if before != after:
            differ = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            raise ConfigError(
                f"model.name={path!r}: its spec does not round-trip: rebuilt from "
                f"model_spec() {spec['options']} the network's parameters differ at "
                f"{', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''} (model_spec() "
                f"must return the options that rebuild the same network)"
            )
