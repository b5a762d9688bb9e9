"""The convolutional VAE family, `model.name: vae`.

    network.py   the VAE: encoder, decoder, ELBO terms, samples, the importance-weighted bound
    steps.py     its training step (negative ELBO) and validation sums

It has a likelihood, so its scorecard adds ELBO, bits/dim and the IWAE bound; its decoder is
the network that samples (and that compression transforms).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from genpar_models.models.family import Family
from genpar_models.models.registry import register_family

if TYPE_CHECKING:  # the network and its steps (torch) are imported when first used
    import torch
    from torch import Tensor, nn

    from genpar_models.config import ModelConfig, TrainConfig
    from genpar_models.models.family import StepTools
    from genpar_models.models.vae.network import VAE
    from genpar_models.models.vae.steps import VaeSteps


def _build(cfg: ModelConfig, image_shape: Sequence[int], num_classes: int | None = None) -> VAE:
    from genpar_models.models.vae.network import VAE

    return VAE.from_config(cfg, image_shape, num_classes)


def _rebuild(spec: Mapping[str, Any]) -> VAE:
    from genpar_models.models.vae.network import VAE

    return VAE(**{k: v for k, v in spec.items() if k != "name"})


def _steps(model: nn.Module, cfg: TrainConfig, tools: StepTools) -> VaeSteps:
    from genpar_models.models.vae.steps import VaeSteps

    return VaeSteps(model, cfg, tools)


def _likelihood(
    model: nn.Module, x: Tensor, gen: torch.Generator, iw: int, labels: Tensor | None = None
) -> dict[str, Tensor]:
    # A CVAE's terms are of log p(x | y), given the images' labels.
    out = dict(model(x, generator=gen, labels=labels))  # one-sample ELBO terms; draws first
    if iw > 0:
        out["iw_bound"] = model.importance_weighted_bound(x, iw, generator=gen, labels=labels)
    return out


def _reconstruct(model: nn.Module, x: Tensor, labels: Tensor | None = None) -> Tensor:
    return model.reconstruct(x, labels)  # the decoded posterior mean, no noise drawn


def _code_length(spec: Mapping[str, Any], binarize: str) -> bool:
    # Discretised likelihoods are distributions over 8-bit pixels; a Bernoulli over binary ones.
    return spec.get("likelihood") in ("gaussian", "logistic_mixture") or binarize != "none"


def _half(model: nn.Module, dtype: torch.dtype) -> None:
    from torch import nn

    from genpar_models.models.layers import Cast

    # The decoder runs its last conv in fp32 by design (network.py): halve the rest.
    dec = model.decoder
    dec.project = nn.Sequential(Cast(dtype), dec.project.to(dtype))
    dec.upsample = dec.upsample.to(dtype)


FAMILY = register_family(
    Family(
        name="vae",
        summary="convolutional VAE (Bernoulli, discretised-Gaussian or logistic-mixture decoder)",
        build=_build,
        rebuild=_rebuild,
        make_steps=_steps,
        input_range=(0.0, 1.0),
        sampling_net="decoder",
        options=("arch", "likelihood", "mixture_components", "conditional"),
        likelihood=_likelihood,
        reconstruct=_reconstruct,
        half=_half,
        code_length=_code_length,
    )
)
