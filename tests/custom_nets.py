"""Networks of users that get something wrong, for tests/unit/test_custom_models.py: each is
named as model.name "tests.custom_nets:Name" and must be refused before any training."""

from __future__ import annotations

from torch import Tensor, nn

from examples.custom_vae import TinyVAE


def not_a_class(**kwargs):  # a function, not a class
    return TinyVAE(**kwargs)


class NotAModule:  # a class, but no nn.Module
    def encode(self, x):
        return x


class NoLoss(nn.Module):  # VAE-like (encode) without loss or mean
    def __init__(self, *, image_shape, latent_dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)

    def encode(self, x: Tensor) -> Tensor:
        return x

    def decode(self, z: Tensor) -> Tensor:
        return z


class NoDiscriminator(nn.Module):  # GAN-like, but only a generator
    genpar_family = "gan"

    def __init__(self, *, image_shape, latent_dim: int) -> None:
        super().__init__()
        self.generator = nn.Linear(latent_dim, 64)


class BadKind(nn.Module):
    genpar_family = "flow"


class Drifting(TinyVAE):
    """Its model_spec() reports a width other than the one it was built with: a stored model
    would be rebuilt with other parameter shapes."""

    def model_spec(self) -> dict:
        return {"hidden": self.hidden + 1, "layers": self.layers}


class WrongLatent(TinyVAE):
    """encode returns (N, 2 * latent_dim) means."""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = super().encode(x)
        return mu.repeat(1, 2), logvar


class Exploding(nn.Module):
    genpar_family = "gan"

    def __init__(self, *, image_shape, latent_dim: int) -> None:
        super().__init__()
        self.generator = nn.Linear(latent_dim, 3)  # not an image: (N, 3)
        self.discriminator = nn.Linear(3, 1)


class NoImageShape(TinyVAE):  # its constructor takes its own sizes only
    def __init__(self, *, latent_dim: int, side: int = 8) -> None:
        super().__init__(image_shape=(1, side, side), latent_dim=latent_dim)
