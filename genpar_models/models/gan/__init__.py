"""The DCGAN family, `model.name: dcgan`.

    network.py   generator and discriminator (DCGAN architecture and initialisation)
    losses.py    the discriminator's BCE and the non-saturating generator loss
    steps.py     alternating discriminator and generator updates, each network in its own DDP

It has no likelihood, so its scorecard is sample quality only; its generator is the network
that samples (and that compression transforms).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from genpar_models.models.family import Family
from genpar_models.models.registry import register_family

if TYPE_CHECKING:  # the network and its steps (torch) are imported when first used
    from torch import nn

    from genpar_models.config import ModelConfig, TrainConfig
    from genpar_models.models.family import StepTools
    from genpar_models.models.gan.network import DCGAN
    from genpar_models.models.gan.steps import GanSteps


def _build(cfg: ModelConfig, image_shape: Sequence[int], num_classes: int | None = None) -> DCGAN:
    from genpar_models.models.gan.network import DCGAN

    return DCGAN.from_config(cfg, image_shape, num_classes)


def _rebuild(spec: Mapping[str, Any]) -> DCGAN:
    from genpar_models.models.gan.network import DCGAN

    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if kwargs.get("conditional") and "projection" not in kwargs:
        # a conditional spec written before the projection was named: its discriminator
        # projected sum-pooled features, and its checkpoints hold that embedding's shape
        kwargs["projection"] = "pooled"
    return DCGAN(**kwargs)


def _train_settings(model: nn.Module, cfg: ModelConfig) -> None:
    model.gan_loss = cfg.gan_loss  # the loss its steps train with; not in the spec


def _steps(model: nn.Module, cfg: TrainConfig, tools: StepTools) -> GanSteps:
    from genpar_models.models.gan.steps import GanSteps

    return GanSteps(model, cfg, tools)


FAMILY = register_family(
    Family(
        name="dcgan",
        summary="DCGAN-style GAN (non-saturating loss)",
        build=_build,
        rebuild=_rebuild,
        make_steps=_steps,
        input_range=(-1.0, 1.0),
        sampling_net="generator",
        options=("arch", "norm", "spectral_norm", "gan_loss", "ema_decay", "conditional"),
        train_settings=_train_settings,
    )
)
