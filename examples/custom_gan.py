"""A GAN of your own: an MLP generator and a spectrally normalised MLP discriminator.

genpar builds it as `TinyGAN(image_shape=(C, H, W), latent_dim=model.latent_dim,
**model.options)` and trains `self.generator` and `self.discriminator` with the dcgan family's
steps (model.gan_loss, train.n_critic, model.ema_decay; genpar_models/models/custom/
documents the interface). Images are in [-1, 1] on both sides. Train it with
`genpar run examples/custom_gan.yaml` from the repository root.
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


class Generator(nn.Module):
    def __init__(self, image_shape, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, math.prod(image_shape)),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:  # (N, latent_dim) -> (N, C, H, W) in [-1, 1]
        return self.net(z).view(-1, *self.image_shape)


class Discriminator(nn.Module):
    def __init__(self, image_shape, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            spectral_norm(nn.Linear(math.prod(image_shape), hidden)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(hidden, hidden)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(hidden, 1)),
        )

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) in [-1, 1] -> logits (N,)
        return self.net(x.flatten(1)).squeeze(1)


class TinyGAN(nn.Module):
    genpar_family = "gan"  # self.generator and self.discriminator (the GAN-like interface)

    def __init__(self, *, image_shape, latent_dim: int, hidden: int = 128) -> None:
        super().__init__()
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        self.hidden = hidden
        self.generator = Generator(image_shape, latent_dim, hidden)
        self.discriminator = Discriminator(image_shape, hidden)

    def model_spec(self) -> dict:
        return {"hidden": self.hidden}
