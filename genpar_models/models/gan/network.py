"""The DCGAN network (Radford et al. 2016, https://arxiv.org/abs/1511.06434).

`DCGAN` only holds the two players, `generator` and `discriminator`, as separate submodules:
the family's steps (steps.py) wrap each in its own DDP with its own optimizer and alternate
their updates with the losses of losses.py. Images inside the model live in [-1, 1] (the
generator ends in tanh); `sample` maps them back to [0, 1].

Normalisation: the paper's BatchNorm makes every output depend on the batch it sits in, so
under DDP each rank normalised by its own half of the batch, and the discriminator's running
statistics moved twice per step. The default is therefore without batch statistics: GroupNorm
(or pixel norm) in the generator and spectral normalisation in the discriminator (Miyato et al.
2018, https://arxiv.org/abs/1802.05957); a global batch then gives the same outputs on one rank
or two. `norm="batch", spectral_norm=False` is genpar 0.1's network, which its models load as.

The module is longer than 300 lines because both players of both archs and `model_spec` are one
contract: every constructor argument that changes a weight's shape (arch, norm, spectral norm,
classes, the projection) is written into the spec here and read back by the same constructor.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from genpar_models.models.conditioning import check_conditioning, config_classes, sampling_labels
from genpar_models.models.layers import (
    Arch,
    Norm,
    check_arch,
    check_image_shape,
    down_path,
    draw_normal,
    level_channels,
    make_norm,
    plan_levels,
    res_down_path,
    res_up_path,
    to_range,
    up_path,
)

if TYPE_CHECKING:
    from genpar_models.config import ModelConfig

# DCGAN paper, section 4: weights from N(0, 0.02); LeakyReLU slope 0.2 in the discriminator.
_INIT_STD = 0.02
_LEAK = 0.2

# What the projection discriminator's class term reads (Discriminator): "head", the features
# the linear head reads; "pooled", a dcgan's features summed over pixels (the only choice of
# specs written before 2026-12-04).
Projection = Literal["head", "pooled"]
PROJECTIONS = ("head", "pooled")


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN init for one module; use as `model.apply(init_dcgan_weights)`."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, _INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, _INIT_STD)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z (N, latent_dim) -> images (N, C, S, S) in [-1, 1]."""

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        base_channels: int,
        norm: Norm = "batch",
        num_classes: int = 0,
        arch: Arch = "dcgan",
        projection: Projection = "head",
    ) -> None:
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        channels, side, _ = image_shape
        n_down, base_side = plan_levels(side)
        widths = level_channels(base_channels, n_down)
        self.base_shape = (widths[-1], base_side, base_side)
        # Conditional: a label embedding of z's size, concatenated with z.
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        width_in = 2 * latent_dim if num_classes else latent_dim
        # Project and reshape (DCGAN, figure 1); a norm with its own shift follows, so no bias.
        if arch == "resnet":  # the residual blocks pre-activate: the projection is their input
            self.project = nn.Linear(width_in, widths[-1] * base_side**2)
            self.project_act: nn.Module = nn.Identity()
            self.upsample = res_up_path(widths, norm=norm, activation=nn.ReLU)
        else:
            self.project = nn.Linear(width_in, widths[-1] * base_side**2, bias=norm == "none")
            self.project_act = nn.Sequential(make_norm(norm, widths[-1]), nn.ReLU())
            self.upsample = up_path(widths, norm=norm, activation=nn.ReLU)
        # No BatchNorm on the output layer (DCGAN, section 3): it made samples oscillate.
        self.to_image = nn.Sequential(nn.Conv2d(widths[0], channels, 3, padding=1), nn.Tanh())

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional generator needs labels (N,) beside z")
            z = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)  # (N, D) -> (N, 2D)
        h = self.project(z).view(-1, *self.base_shape)  # (N, D) -> (N, C_top, s, s)
        h = self.upsample(self.project_act(h))  # (N, C_top, s, s) -> (N, base, S, S)
        return self.to_image(h)  # (N, base, S, S) -> (N, C, S, S)


class Discriminator(nn.Module):
    """images (N, C, S, S) in [-1, 1] -> logits (N,) that they are real."""

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        base_channels: int,
        norm: Norm = "batch",
        spectral_norm: bool = False,
        num_classes: int = 0,
        arch: Arch = "dcgan",
        projection: Projection = "head",
    ) -> None:
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        channels, side, _ = image_shape
        n_down, base_side = plan_levels(side)
        widths = level_channels(base_channels, n_down)
        leaky = functools.partial(nn.LeakyReLU, _LEAK)
        if arch == "resnet":
            # SN-GAN's residual discriminator (Miyato et al. 2018, appendix B.4): ReLU blocks,
            # no norm with spectral norm, then global sum pooling into the logit.
            self.features = res_down_path(
                channels, widths, norm="none" if spectral_norm else norm, activation=nn.ReLU
            )
            self.to_logit = nn.Linear(widths[-1], 1)
        else:
            # No norm on the input layer (DCGAN, section 3); with spectral norm, none at all.
            self.features = down_path(
                channels,
                widths,
                norm="none" if spectral_norm else norm,
                activation=leaky,
                norm_first=False,
            )
            self.to_logit = nn.Linear(widths[-1] * base_side**2, 1)
        self.pooled = arch == "resnet"
        # Projection discriminator (Miyato & Koyama 2018, https://arxiv.org/abs/1802.05637):
        # logit(x, y) = to_logit(phi(x)) + <embed(y), phi(x)>, phi(x) the features the linear
        # head reads ("head": flattened for dcgan, sum-pooled for resnet). "pooled" projects the
        # dcgan's features summed over pixels instead (genpar before 2026-12-04): on mnist5k at
        # 2,000 steps that collapsed each class to one image (FID 252, CAS 0.46x real) where
        # "head" reached FID 61, CAS 0.86x (benchmarks/README.md, cGAN).
        self.num_classes = num_classes
        self.project_pooled = self.pooled or projection == "pooled"
        embed_dim = widths[-1] if self.project_pooled else widths[-1] * base_side**2
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        self.spectral_norm = spectral_norm
        self.uses_batch_statistics = norm == "batch" and not spectral_norm

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        feats = self.features(x)  # (N, C, S, S) -> (N, C_top, s, s)
        # dcgan: the flattened features; resnet: summed over pixels, (N, C_top)
        flat = feats.sum(dim=(2, 3)) if self.pooled else feats.flatten(1)
        logit = self.to_logit(flat).squeeze(1)  # (N, F) -> (N, 1) -> (N,)
        if self.embed is None:
            return logit
        if labels is None:
            raise ValueError("a projection discriminator needs labels (N,) beside the images")
        return logit + self.projection(feats, labels)

    def projection(self, feats: Tensor, labels: Tensor) -> Tensor:
        """<embed(y), phi(x)>, (N,): the class term of the logit; phi(x) is the top features
        flattened (N, C_top * s * s), or summed over pixels (N, C_top) when pooled."""
        phi = feats.sum(dim=(2, 3)) if self.project_pooled else feats.flatten(1)
        return (self.embed(labels).to(phi.dtype) * phi).sum(dim=1)


NORMS = ("batch", "group", "pixel", "none")


class DCGAN(nn.Module):
    """Generator and discriminator of a DCGAN-style GAN, as two separate submodules."""

    input_range = (-1.0, 1.0)
    gan_loss = "bce"  # the loss its steps train with (from_config sets model.gan_loss)

    def __init__(
        self,
        *,
        image_shape: Sequence[int],
        latent_dim: int,
        base_channels: int,
        norm: Norm = "batch",
        spectral_norm: bool = False,
        conditional: bool = False,
        num_classes: int = 0,
        arch: Arch = "dcgan",
        projection: Projection = "head",
    ) -> None:
        super().__init__()
        check_conditioning(conditional, num_classes)
        self.arch = check_arch(arch)
        if latent_dim < 1 or base_channels < 1:
            raise ValueError(
                f"latent_dim and base_channels must be >= 1, got {latent_dim}, {base_channels}"
            )
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.image_shape = check_image_shape(image_shape)
        self.latent_dim = latent_dim
        self.base_channels = base_channels
        self.norm, self.spectral_norm = norm, bool(spectral_norm)
        self.num_classes = int(num_classes) if conditional else 0
        self.generator = Generator(
            image_shape=self.image_shape,
            latent_dim=latent_dim,
            base_channels=base_channels,
            norm=norm,
            num_classes=self.num_classes,
            arch=arch,
        )
        self.discriminator = Discriminator(
            image_shape=self.image_shape,
            base_channels=base_channels,
            norm=norm,
            spectral_norm=spectral_norm,
            num_classes=self.num_classes,
            arch=arch,
            projection=projection,
        )
        self.projection = projection
        # DCGAN's N(0, 0.02) init; the residual nets keep torch's fan-in init, which keeps the
        # residual sums' scale through the depth (N(0, 0.02) 3x3 convs would shrink it).
        if arch == "dcgan":
            self.apply(init_dcgan_weights)
        if self.discriminator.embed is not None:  # the class term starts as small as the rest
            nn.init.normal_(self.discriminator.embed.weight, 0.0, _INIT_STD)
        if spectral_norm:  # after the init: spectral norm reparametrises the initial weights
            for module in self.discriminator.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
                    nn.utils.parametrizations.spectral_norm(module)

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, image_shape: Sequence[int], num_classes: int | None = None
    ) -> DCGAN:
        """Build from the `model` config section and the data's (C, H, W); `num_classes`
        (from the shard manifest) with model.conditional."""
        model = cls(
            image_shape=image_shape,
            latent_dim=cfg.latent_dim,
            base_channels=cfg.base_channels,
            norm=cfg.norm,
            spectral_norm=cfg.spectral_norm,
            conditional=cfg.conditional,
            num_classes=config_classes(cfg, num_classes),
            arch=cfg.arch,
        )
        # How it is trained, not what it is: kept out of model_spec, so the architecture's
        # spec (what checkpoints and registered versions match) does not name the loss.
        model.gan_loss = cfg.gan_loss
        return model

    def model_spec(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments; `DCGAN(**spec minus "name")` rebuilds it.

        genpar 0.1's network (batch norm, no spectral norm) keeps 0.1's spec, which names
        neither, so that its registered models and checkpoints keep matching."""
        spec = {
            "name": "dcgan",
            "image_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "base_channels": self.base_channels,
        }
        if (self.norm, self.spectral_norm) != ("batch", False):
            spec.update(norm=self.norm, spectral_norm=self.spectral_norm)
        if self.num_classes:  # unconditional specs stay as they were written before
            spec.update(conditional=True, num_classes=self.num_classes)
            # named in every new conditional spec: one without it was written with "pooled"
            spec["projection"] = self.projection
        if self.arch != "dcgan":  # specs of the default arch stay as they were written before
            spec["arch"] = self.arch
        return spec

    def to_model_range(self, x01: Tensor) -> Tensor:
        """Images in [0, 1] mapped to [-1, 1], the range of the generator's tanh."""
        return to_range(x01, self.input_range)

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, labels: Any = None
    ) -> Tensor:
        """n generated images, (n, C, H, W) in [0, 1]; a conditional model's of `labels`
        (n,) (balanced, i mod K, when None).

        z is drawn on the generator's device (CPU when None) and then moved, so a CPU generator
        gives the same latents on any model device (bit-identical samples on one device type).
        The generator runs in eval mode (restored afterwards): BatchNorm then uses its running
        statistics, so a sample depends only on its own z, not on n or on how generation is
        chunked, and sampling leaves the statistics alone.
        """
        device = next(self.generator.parameters()).device
        z = draw_normal(
            (n, self.latent_dim), generator=generator, device=device, dtype=torch.float32
        )
        y = sampling_labels(self.num_classes, n, labels, device)
        was_training = self.generator.training
        self.generator.eval()
        try:
            images = self.generator(z) if y is None else self.generator(z, y)
        finally:
            self.generator.train(was_training)
        return (images + 1.0) / 2.0
