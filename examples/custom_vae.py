"""A VAE of your own: an MLP encoder and decoder with a Bernoulli likelihood.

genpar builds it as `TinyVAE(image_shape=(C, H, W), latent_dim=model.latent_dim,
**model.options)` and adds the prior, the KL, the ELBO, sampling and the scorecard
(genpar_models/models/custom/ documents the interface). Train it with
`genpar run examples/custom_vae.yaml` from the repository root.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TinyVAE(nn.Module):
    genpar_family = "vae"  # encode / decode / loss / mean (the VAE-like interface)

    def __init__(self, *, image_shape, latent_dim: int, hidden: int = 128, layers: int = 1):
        super().__init__()
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        if layers not in (1, 2):
            raise ValueError(f"layers must be 1 or 2, got {layers!r}")
        self.image_shape, self.hidden, self.layers = tuple(image_shape), hidden, layers
        pixels = math.prod(image_shape)
        widths = [hidden] * layers
        self.encoder = mlp([pixels, *widths, 2 * latent_dim])
        self.decoder = mlp([latent_dim, *widths, pixels])

    def model_spec(self) -> dict:
        """The options that rebuild this network (defaults included), stored with the model."""
        return {"hidden": self.hidden, "layers": self.layers}

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, C, H, W) in [0, 1] -> the posterior's (mu, logvar), each (N, latent_dim)."""
        mu, logvar = self.encoder(2 * x.flatten(1) - 1).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def decode(self, z: Tensor) -> Tensor:
        """z (N, latent_dim) -> Bernoulli logits (N, C, H, W)."""
        return self.decoder(z).view(-1, *self.image_shape)

    def loss(self, x: Tensor, logits: Tensor) -> Tensor:
        """-log p(x | z) per sample, (N,) nats."""
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)

    def mean(self, logits: Tensor) -> Tensor:
        """The image the logits stand for: the Bernoulli means, in [0, 1]."""
        return torch.sigmoid(logits)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given sizes, SiLU between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)
