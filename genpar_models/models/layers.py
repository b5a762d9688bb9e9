"""Building blocks shared by genpar's models: the resolution plan, conv down/up blocks, noise.

Both the VAE and the DCGAN halve the image side once per "level" with a stride-2 conv and undo
it with a stride-2 transposed conv. `plan_levels` decides how many levels an image size allows,
`level_channels` how wide each level is, and `down_block` / `up_block` build one level with the
normalisation each model wants (GroupNorm for the VAE, BatchNorm for the DCGAN).

`model.arch: resnet` replaces each level's conv by a pre-activation residual block
(`ResDown` / `ResUp`: norm, activation, 3x3 conv, twice, with a 1x1 skip where the channels
change, He et al. 2016, https://arxiv.org/abs/1603.05027; the GAN layout of SN-GAN, Miyato et
al. 2018, and Gulrajani et al. 2017): the same levels and widths, so both archs handle the same
image sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Norm = Literal["group", "batch", "pixel", "none"]
Arch = Literal["dcgan", "resnet"]
ARCHS = ("dcgan", "resnet")

MAX_LEVELS = 5  # 128 px -> 4 px at the top; sides up to 64 never reach a fifth level
MIN_BASE_SIDE = 4
# Channels double per level, capped at this multiple of base_channels.
MAX_CHANNEL_MULT = 8


def plan_levels(image_size: int) -> tuple[int, int]:
    """How many stride-2 levels an image side allows, and the side left after them.

    Args:
        image_size: side of the square image in pixels; even and at least 8.

    Returns:
        (n_down, base_side): n_down is the largest k in 1..5 with image_size divisible by 2**k
        and image_size // 2**k >= 4 (1 when none qualifies); base_side = image_size // 2**n_down.

    Raises:
        ValueError: for an odd image_size or one below 8.
    """
    if image_size < 2 * MIN_BASE_SIDE or image_size % 2:
        raise ValueError(f"image size must be an even number >= 8, got {image_size}")
    n_down = 1
    for k in range(1, MAX_LEVELS + 1):
        if image_size % 2**k == 0 and image_size // 2**k >= MIN_BASE_SIDE:
            n_down = k
    return n_down, image_size // 2**n_down


def level_channels(base_channels: int, n_down: int) -> list[int]:
    """Channels of each level, finest first: base, 2*base, 4*base, ... capped at 8*base."""
    return [base_channels * min(2**i, MAX_CHANNEL_MULT) for i in range(n_down)]


def check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """Validate a (channels, height, width) image shape and return it as a tuple of ints.

    Raises:
        ValueError: unless it is (1 or 3, S, S) with S even and at least 8.
    """
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or shape[1] != shape[2]:
        raise ValueError(
            f"image_shape must be (channels, side, side) with 1 or 3 channels, got {image_shape}"
        )
    plan_levels(shape[1])  # raises for unsupported sides
    return shape  # type: ignore[return-value]


def make_norm(kind: Norm, channels: int) -> nn.Module:
    """A normalisation layer over `channels` feature maps, or identity for "none"."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "pixel":
        return PixelNorm()
    if kind == "group":
        # Up to 8 groups (Wu & He 2018, https://arxiv.org/abs/1803.08494): statistics are per
        # sample, so outputs do not depend on batch size or on how DDP splits the batch.
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    return nn.Identity()


class PixelNorm(nn.Module):
    """Each pixel's feature vector scaled to unit mean square (Karras et al. 2018,
    https://arxiv.org/abs/1710.10196, section 4.2): per sample and pixel, no batch statistics."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


def down_block(
    in_channels: int, out_channels: int, *, norm: Norm, activation: Callable[[], nn.Module]
) -> nn.Sequential:
    """Stride-2 4x4 conv (halves the side, DCGAN-style) + norm + activation."""
    return nn.Sequential(
        # A norm right after the conv has its own shift, so the conv bias would be redundant.
        nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=norm == "none"),
        make_norm(norm, out_channels),
        activation(),
    )


def up_block(
    in_channels: int, out_channels: int, *, norm: Norm, activation: Callable[[], nn.Module]
) -> nn.Sequential:
    """Stride-2 4x4 transposed conv (doubles the side exactly) + norm + activation."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=norm == "none"),
        make_norm(norm, out_channels),
        activation(),
    )


def down_path(
    in_channels: int,
    widths: Sequence[int],
    *,
    norm: Norm,
    activation: Callable[[], nn.Module],
    norm_first: bool = True,
) -> nn.Sequential:
    """One `down_block` per level, from `in_channels` through `widths` (finest first).

    norm_first=False leaves the first level without a norm, as DCGAN's discriminator does.
    """
    blocks = []
    for level, width in enumerate(widths):
        level_norm: Norm = norm if norm_first or level > 0 else "none"
        blocks.append(down_block(in_channels, width, norm=level_norm, activation=activation))
        in_channels = width
    return nn.Sequential(*blocks)


def up_path(
    widths: Sequence[int], *, norm: Norm, activation: Callable[[], nn.Module]
) -> nn.Sequential:
    """The mirror of `down_path`: widths[-1] -> ... -> widths[0] -> widths[0], one per level."""
    ins = list(widths)[::-1]
    outs = list(widths)[:-1][::-1] + [widths[0]]
    return nn.Sequential(
        *(up_block(i, o, norm=norm, activation=activation) for i, o in zip(ins, outs, strict=True))
    )


def check_arch(arch: str) -> str:
    """`arch` if it is a known architecture.

    Raises:
        ValueError: naming the known ones otherwise.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    return arch


class ResDown(nn.Module):
    """Pre-activation residual block that halves the side: x + f(x) with
    f = [norm, act, conv3x3, norm, act, conv3x3, avg-pool 2], the skip a 1x1 conv (where the
    channels change) and the same pool. preactivate=False starts f at its first conv (the
    block that sees the raw image: an activation of pixels would throw half of them away)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        norm: Norm,
        activation: Callable[[], nn.Module],
        preactivate: bool = True,
    ) -> None:
        super().__init__()
        pre = [make_norm(norm, in_channels), activation()] if preactivate else []
        self.residual = nn.Sequential(
            *pre,
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            make_norm(norm, out_channels),
            activation(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.AvgPool2d(2),
        )
        skip = [nn.Conv2d(in_channels, out_channels, 1)] if in_channels != out_channels else []
        self.skip = nn.Sequential(*skip, nn.AvgPool2d(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.residual(x)  # (N, C_in, S, S) -> (N, C_out, S/2, S/2)


class ResUp(nn.Module):
    """Pre-activation residual block that doubles the side: x + f(x) with
    f = [norm, act, nearest up-sampling x2, conv3x3, norm, act, conv3x3], the skip the same
    up-sampling then a 1x1 conv where the channels change."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        norm: Norm,
        activation: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            make_norm(norm, in_channels),
            activation(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            make_norm(norm, out_channels),
            activation(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        skip = [nn.Conv2d(in_channels, out_channels, 1)] if in_channels != out_channels else []
        self.skip = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *skip)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.residual(x)  # (N, C_in, s, s) -> (N, C_out, 2s, 2s)


def res_down_path(
    in_channels: int, widths: Sequence[int], *, norm: Norm, activation: Callable[[], nn.Module]
) -> nn.Sequential:
    """`down_path` of residual blocks: one `ResDown` per level, from `in_channels` (the first
    block without pre-activation) through `widths`, then norm + activation (the last block's
    sum is not activated yet)."""
    blocks: list[nn.Module] = []
    for level, width in enumerate(widths):
        blocks.append(
            ResDown(in_channels, width, norm=norm, activation=activation, preactivate=level > 0)
        )
        in_channels = width
    return nn.Sequential(*blocks, make_norm(norm, in_channels), activation())


def res_up_path(
    widths: Sequence[int], *, norm: Norm, activation: Callable[[], nn.Module]
) -> nn.Sequential:
    """`up_path` of residual blocks (widths[-1] -> ... -> widths[0] -> widths[0]), then norm +
    activation, ready for the output conv."""
    ins = list(widths)[::-1]
    outs = list(widths)[:-1][::-1] + [widths[0]]
    blocks = [ResUp(i, o, norm=norm, activation=activation) for i, o in zip(ins, outs, strict=True)]
    return nn.Sequential(*blocks, make_norm(norm, widths[0]), activation())


def draw_normal(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
    default_device: torch.device | str = "cpu",
) -> Tensor:
    """Standard normal noise from `generator`, returned on `device` in `dtype`.

    A generator only draws on its own device, so the noise is drawn there (on `default_device`
    when generator is None) in float32 and then moved: a CPU generator gives the same numbers
    whether the model is on CPU or GPU.
    """
    source = generator.device if generator is not None else torch.device(default_device)
    noise = torch.randn(tuple(shape), generator=generator, device=source, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


def to_range(x01: Tensor, input_range: tuple[float, float]) -> Tensor:
    """Map images in [0, 1] linearly onto `input_range`."""
    low, high = input_range
    return x01 * (high - low) + low


class Cast(nn.Module):
    """Casts its input to `dtype`: the entry and exit of a network run in half precision."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        return x.to(self.dtype)
