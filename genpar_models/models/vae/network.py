"""The convolutional VAE (Kingma & Welling 2014, https://arxiv.org/abs/1312.6114).

A stride-2 conv encoder to a diagonal Gaussian posterior q(z|x), a mirrored transposed-conv
decoder to a Bernoulli or discretised-Gaussian p(x|z), and the quantities training and
evaluation need: the per-sample ELBO terms, samples, reconstructions and the importance-weighted
bound. GroupNorm instead of BatchNorm keeps every output independent of the batch it sits in,
so DDP shards and evaluation batch sizes do not change the numbers.

A conditional VAE (CVAE, Sohn et al. 2015, `num_classes` > 0) models p(x | y): the encoder sees
the label as one-hot channels beside the image, the decoder a label embedding beside z, and
every quantity above takes the labels. The module is longer than 300 lines because those
labels thread through each of them; they belong with the network they condition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from genpar_models.models.conditioning import check_conditioning, config_classes, sampling_labels
from genpar_models.models.layers import (
    Arch,
    check_arch,
    check_image_shape,
    down_path,
    draw_normal,
    level_channels,
    plan_levels,
    res_down_path,
    res_up_path,
    to_range,
    up_path,
)
from genpar_models.models.likelihoods import (
    bernoulli_nll,
    discretized_gaussian_nll,
    discretized_logistic_mixture_nll,
    gaussian_kl,
    importance_weighted_bound,
    logistic_mixture_mean,
)

if TYPE_CHECKING:
    from genpar_models.config import ModelConfig

Likelihood = Literal["bernoulli", "gaussian", "logistic_mixture"]
LIKELIHOODS = ("bernoulli", "gaussian", "logistic_mixture")
# Likelihoods that are normalised distributions over 8-bit pixel values: their ELBO is a code
# length of the data, so bits/dim means what it says. A Bernoulli is one only on binary pixels.
DISCRETISED = ("gaussian", "logistic_mixture")
# Initial decoder scale 0.1 rather than 1: with Adam's ~lr-sized steps on log_scale, starting at
# 1 (log 0) would spend thousands of steps just shrinking the scale to the data's noise level.
_INIT_LOG_SCALE = math.log(0.1)


class Encoder(nn.Module):
    """x (N, C, S, S) -> (mu, logvar), each (N, latent_dim); a CVAE's encoder also sees the
    label, as num_classes one-hot channels beside the image's."""

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        base_channels: int,
        num_classes: int = 0,
        arch: Arch = "dcgan",
    ) -> None:
        super().__init__()
        channels, side, _ = image_shape
        n_down, base_side = plan_levels(side)
        widths = level_channels(base_channels, n_down)
        self.num_classes = num_classes
        path = res_down_path if arch == "resnet" else down_path
        self.features = path(channels + num_classes, widths, norm="group", activation=nn.SiLU)
        self.to_stats = nn.Linear(widths[-1] * base_side**2, 2 * latent_dim)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.num_classes:
            if labels is None:
                raise ValueError("a conditional encoder needs labels (N,) beside the images")
            onehot = nn.functional.one_hot(labels, self.num_classes).to(x.dtype)  # (N, K)
            planes = onehot[:, :, None, None].expand(-1, -1, *x.shape[2:])  # (N, K, S, S)
            x = torch.cat([x, planes], dim=1)  # (N, C + K, S, S)
        h = self.features(x)  # (N, C, S, S) -> (N, C_top, s, s)
        h = h.flatten(1)  # (N, C_top, s, s) -> (N, C_top*s*s)
        mu, logvar = self.to_stats(h).chunk(2, dim=1)  # (N, 2*D) -> 2 x (N, D)
        return mu, logvar


class Decoder(nn.Module):
    """z (N, latent_dim) -> (N, C * outputs_per_channel, S, S) unconstrained outputs (logits,
    pre-sigmoid means, or a mixture's parameters)."""

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        base_channels: int,
        outputs_per_channel: int = 1,
        num_classes: int = 0,
        arch: Arch = "dcgan",
    ) -> None:
        super().__init__()
        channels, side, _ = image_shape
        n_down, base_side = plan_levels(side)
        widths = level_channels(base_channels, n_down)
        self.base_shape = (widths[-1], base_side, base_side)
        # A CVAE's decoder: a label embedding of z's size concatenated with z.
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        width_in = 2 * latent_dim if num_classes else latent_dim
        self.project = nn.Sequential(nn.Linear(width_in, widths[-1] * base_side**2), nn.SiLU())
        path = res_up_path if arch == "resnet" else up_path
        self.upsample = path(widths, norm="group", activation=nn.SiLU)
        self.to_image = nn.Conv2d(widths[0], channels * outputs_per_channel, 3, padding=1)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional decoder needs labels (N,) beside z")
            z = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)  # (N, D) -> (N, 2D)
        h = self.project(z).view(-1, *self.base_shape)  # (N, D) -> (N, C_top, s, s)
        h = self.upsample(h)  # (N, C_top, s, s) -> (N, base, S, S)
        # The last conv runs in float32 even under bf16 autocast: bf16 keeps ~3 significant
        # digits, coarser than the 1/255 bins the discretised likelihood tells apart.
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.to_image(h.float())  # (N, base, S, S) -> (N, C, S, S)


def _spread_components(conv: nn.Conv2d, k: int, channels: int) -> None:
    """Start the K means spread over [0, 1] and every scale at 0.1, so each component has its
    own part of the pixel range to take from the start (all at 0 they would learn as one)."""
    with torch.no_grad():
        bias = conv.bias.view(3, k, channels)  # the (3, K, C) layout of the decoder's output
        bias[1] = ((torch.arange(k, dtype=bias.dtype) + 0.5) / k).unsqueeze(1)
        bias[2] = _INIT_LOG_SCALE


class VAE(nn.Module):
    """Convolutional VAE on images in [0, 1] with a Bernoulli, discretised-Gaussian or
    discretised-logistic-mixture decoder."""

    input_range = (0.0, 1.0)

    def __init__(
        self,
        *,
        image_shape: Sequence[int],
        latent_dim: int,
        base_channels: int,
        likelihood: Likelihood = "bernoulli",
        mixture_components: int = 5,
        conditional: bool = False,
        num_classes: int = 0,
        arch: Arch = "dcgan",
    ) -> None:
        super().__init__()
        check_conditioning(conditional, num_classes)
        self.arch = check_arch(arch)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if latent_dim < 1 or base_channels < 1:
            raise ValueError(
                f"latent_dim and base_channels must be >= 1, got {latent_dim}, {base_channels}"
            )
        self.image_shape = check_image_shape(image_shape)
        self.latent_dim = latent_dim
        self.base_channels = base_channels
        if mixture_components < 1:
            raise ValueError(f"mixture_components must be >= 1, got {mixture_components}")
        self.likelihood = likelihood
        self.mixture_components = mixture_components
        self.num_classes = int(num_classes) if conditional else 0
        sizes = {
            "image_shape": self.image_shape,
            "latent_dim": latent_dim,
            "num_classes": self.num_classes,
            "arch": self.arch,
        }
        self.encoder = Encoder(**sizes, base_channels=base_channels)
        per_channel = 3 * mixture_components if likelihood == "logistic_mixture" else 1
        self.decoder = Decoder(
            **sizes, base_channels=base_channels, outputs_per_channel=per_channel
        )
        if likelihood == "logistic_mixture":
            _spread_components(self.decoder.to_image, mixture_components, self.image_shape[0])
        if likelihood == "gaussian":
            # One learned scale per channel (the "calibrated decoder" of Rybkin et al. 2021,
            # https://arxiv.org/abs/2006.13202), shape (C, 1, 1) to broadcast over pixels.
            log_scale = torch.full((self.image_shape[0], 1, 1), _INIT_LOG_SCALE)
            self.log_scale: nn.Parameter | None = nn.Parameter(log_scale)
        else:
            self.register_parameter("log_scale", None)

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, image_shape: Sequence[int], num_classes: int | None = None
    ) -> VAE:
        """Build from the `model` config section and the data's (C, H, W); `num_classes`
        (from the shard manifest) with model.conditional."""
        return cls(
            image_shape=image_shape,
            latent_dim=cfg.latent_dim,
            base_channels=cfg.base_channels,
            likelihood=cfg.likelihood,
            mixture_components=cfg.mixture_components,
            conditional=cfg.conditional,
            num_classes=config_classes(cfg, num_classes),
            arch=cfg.arch,
        )

    def model_spec(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments; `VAE(**spec minus "name")` rebuilds it."""
        spec = {
            "name": "vae",
            "image_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "base_channels": self.base_channels,
            "likelihood": self.likelihood,
        }
        if self.likelihood == "logistic_mixture":  # other specs stay as genpar 0.1 wrote them
            spec["mixture_components"] = self.mixture_components
        if self.num_classes:  # unconditional specs stay as they were written before
            spec.update(conditional=True, num_classes=self.num_classes)
        if self.arch != "dcgan":  # specs of the default arch stay as they were written before
            spec["arch"] = self.arch
        return spec

    def to_model_range(self, x01: Tensor) -> Tensor:
        """Images in [0, 1] as the model takes them (the VAE works in [0, 1] itself)."""
        return to_range(x01, self.input_range)

    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posterior parameters (mu, logvar), each (N, latent_dim) in float32, of x in [0, 1]
        (and, for a CVAE, its labels: q(z | x, y))."""
        # Centre the input: zero-mean inputs condition the first conv better than [0, 1].
        x = 2.0 * x - 1.0
        mu, logvar = self.encoder(x) if labels is None else self.encoder(x, labels)
        return mu.float(), logvar.float()

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """For z (N, latent_dim) (and a CVAE's labels): (N, C, H, W) logits (bernoulli) or
        means in [0, 1] (gaussian), or (N, 3*K*C, H, W) mixture parameters (logistic_mixture)."""
        out = self.decoder(z) if labels is None else self.decoder(z, labels)
        return torch.sigmoid(out) if self.likelihood == "gaussian" else out

    def nll(self, x: Tensor, decoded: Tensor) -> Tensor:
        """-log p(x | z) per sample, (N,) nats, given `decode(z)`."""
        if self.likelihood == "gaussian":
            return discretized_gaussian_nll(x, decoded, self.log_scale)
        if self.likelihood == "logistic_mixture":
            return discretized_logistic_mixture_nll(x, decoded, self.mixture_components)
        return bernoulli_nll(x, decoded)

    def forward(
        self,
        x: Tensor,
        *,
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One-sample ELBO terms of x (N, C, H, W) in [0, 1] (a CVAE's: of log p(x | y), with
        the labels (N,)).

        Returns:
            {"recon", "kl", "elbo"}: (N,) tensors in nats, elbo = -(recon + kl).
        """
        mu, logvar = self.encode(x, labels)
        eps = draw_normal(
            mu.shape,
            generator=generator,
            device=mu.device,
            dtype=mu.dtype,
            default_device=mu.device,
        )
        # Reparameterisation trick (Kingma & Welling 2014, section 2.4): z stays differentiable.
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = self.nll(x, self.decode(z, labels))
        kl = gaussian_kl(mu, logvar)
        return {"recon": recon, "kl": kl, "elbo": -(recon + kl)}

    def loss(self, out: dict[str, Tensor], kl_weight: float) -> Tensor:
        """Batch mean of recon + kl_weight * kl (kl_weight != 1 is a beta-VAE)."""
        return (out["recon"] + kl_weight * out["kl"]).mean()

    def _to_image(self, decoded: Tensor) -> Tensor:
        # The Bernoulli mean, not a draw: a draw would add salt-and-pepper noise to samples.
        if self.likelihood == "bernoulli":
            return torch.sigmoid(decoded)
        if self.likelihood == "logistic_mixture":
            return logistic_mixture_mean(decoded, self.mixture_components, self.image_shape[0])
        return decoded.clamp(0.0, 1.0)

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, labels: Any = None
    ) -> Tensor:
        """n decoded prior samples, (n, C, H, W) in [0, 1]; a CVAE's of `labels` (n,)
        (balanced, i mod K, when None).

        z is drawn on the generator's device (CPU when None) and then moved, so a CPU generator
        gives the same latents on any model device (the samples then differ only by that
        device's floating-point kernels: bit-identical on one device type, close across).
        """
        device = next(self.parameters()).device
        z = draw_normal(
            (n, self.latent_dim), generator=generator, device=device, dtype=torch.float32
        )
        y = sampling_labels(self.num_classes, n, labels, device)
        return self._to_image(self.decode(z, y))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Decoded posterior means of x, (N, C, H, W) in [0, 1] (a CVAE's: given labels)."""
        mu, _ = self.encode(x, labels)
        return self._to_image(self.decode(mu, labels))

    @torch.no_grad()
    def importance_weighted_bound(
        self,
        x: Tensor,
        k: int,
        *,
        generator: torch.Generator | None = None,
        chunk: int = 16,
        labels: Tensor | None = None,
    ) -> Tensor:
        """The k-sample IWAE bound on log p(x), (N,) nats (likelihoods.importance_weighted_bound);
        a conditional model's given the labels, log p(x | y)."""

        def log_likelihood(x_rep: Tensor, z: Tensor, c: int) -> Tensor:
            y_rep = None if labels is None else labels.repeat(c)  # z's row order
            return -self.nll(x_rep, self.decode(z, y_rep))

        return importance_weighted_bound(
            x,
            k,
            encode=lambda v: self.encode(v, labels),
            log_likelihood=log_likelihood,
            latent_dim=self.latent_dim,
            generator=generator,
            chunk=chunk,
        )
