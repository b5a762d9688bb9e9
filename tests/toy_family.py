"""A toy model family registered from the tests: an MLP VAE with a Bernoulli decoder.

It proves that a family is one folder and one registration: the real pipeline trains it under
DDP, scores it (its likelihood included), generates from it and compresses it, without any
change to genpar. Processes the pipeline starts (torchrun ranks, Dask workers) find it through
GENPAR_FAMILIES=tests.toy_family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from genpar_models.config import ModelConfig, TrainConfig
from genpar_models.models import register_family
from genpar_models.models.family import Family, StepTools
from genpar_models.models.likelihoods import bernoulli_nll, gaussian_kl

NAME = "toy-mlp-vae"


class ToyVae(nn.Module):
    """x (N, C, H, W) in [0, 1] -> Gaussian q(z|x) -> Bernoulli logits, through two Linears."""

    def __init__(self, *, image_shape: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.image_shape, self.latent_dim = [int(d) for d in image_shape], latent_dim
        pixels = int(torch.tensor(self.image_shape).prod())
        self.encoder = nn.Linear(pixels, 2 * latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, pixels), nn.Unflatten(1, image_shape))

    def model_spec(self) -> dict[str, Any]:
        return {"name": NAME, "image_shape": self.image_shape, "latent_dim": self.latent_dim}

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> dict:
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=1)
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        recon = bernoulli_nll(x, self.decoder(mu + torch.exp(0.5 * logvar) * eps))
        kl = gaussian_kl(mu, logvar)
        return {"recon": recon, "kl": kl, "elbo": -(recon + kl)}

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn((n, self.latent_dim), generator=generator)
        return torch.sigmoid(self.decoder(z.to(next(self.parameters()).device)))


class ToySteps:
    loss_key = "train/loss"

    def __init__(self, model: ToyVae, cfg: TrainConfig, tools: StepTools) -> None:
        self.model, self.tools, self.ddp = model, tools, model
        self.modules = {"toy": model}
        self.optimizers = {"toy": tools.optimizer(model.parameters(), cfg.lr)}

    def wrap(self) -> None:
        self.ddp = self.tools.wrap(self.model)

    def step(self, x: Tensor, noise: torch.Generator) -> dict[str, Tensor]:
        out = self.ddp(x, generator=noise)
        loss = -out["elbo"].mean()
        self.optimizers["toy"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["toy"].step()
        return {"train/loss": loss.detach()}

    @torch.no_grad()
    def validate(self, x: Tensor, noise: torch.Generator) -> dict[str, Tensor]:
        return {"val/elbo": self.model(x, generator=noise)["elbo"].double().sum()}


def _build(cfg: ModelConfig, image_shape: Sequence[int]) -> ToyVae:
    return ToyVae(image_shape=image_shape, latent_dim=cfg.latent_dim)


def _rebuild(spec: Mapping[str, Any]) -> ToyVae:
    return ToyVae(image_shape=spec["image_shape"], latent_dim=spec["latent_dim"])


def _likelihood(model: nn.Module, x: Tensor, gen: torch.Generator, iw: int) -> dict:
    return model(x, generator=gen)  # no importance-weighted bound: the scorecard leaves it out


FAMILY = register_family(
    Family(
        name=NAME,
        summary="a two-Linear VAE, for the tests",
        build=_build,
        rebuild=_rebuild,
        make_steps=ToySteps,
        input_range=(0.0, 1.0),
        sampling_net="decoder",
        likelihood=_likelihood,
    )
)
