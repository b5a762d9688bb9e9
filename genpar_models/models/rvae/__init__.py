"""The recurrent VAE family, `model.name: rvae`, for data.modality sequences.

    network.py   the RVAE: GRU/LSTM encoder, recurrent decoder fed z, Gaussian likelihood
    steps.py     its training step (negative ELBO, KL annealing, free bits)

Its networks take float series (N, T, C), standardised, NaN after each length (what sequence
shard sets load), and `sample` returns the same layout: the lengths travel with the values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from genpar_models.models.family import Family
from genpar_models.models.registry import register_family

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from genpar_models.config import ModelConfig, TrainConfig
    from genpar_models.models.family import StepTools
    from genpar_models.models.rvae.network import RVAE


def _build(cfg: ModelConfig, shape: Sequence[int]) -> RVAE:
    from genpar_models.models.rvae.network import RVAE

    net = RVAE(
        sequence_shape=shape,
        latent_dim=cfg.latent_dim,
        hidden_dim=cfg.hidden_dim,
        rnn=cfg.rnn,
        rnn_layers=cfg.rnn_layers,
        decoder_input=cfg.decoder_input,
        input_dropout=cfg.input_dropout,
    )
    net.free_bits = cfg.free_bits  # a training option, not architecture: not in model_spec
    return net


def _rebuild(spec: Mapping[str, Any]) -> RVAE:
    from genpar_models.models.rvae.network import RVAE

    return RVAE(**{k: v for k, v in spec.items() if k != "name"})


def _steps(model: nn.Module, cfg: TrainConfig, tools: StepTools) -> Any:
    from genpar_models.models.rvae.steps import RvaeSteps

    return RvaeSteps(model, cfg, tools, free_bits=getattr(model, "free_bits", 0.0))


def _likelihood(model: nn.Module, x: Tensor, gen: torch.Generator, iw: int) -> dict[str, Tensor]:
    out = {k: v for k, v in model(x, generator=gen).items() if k in ("recon", "kl", "elbo")}
    if iw > 0:
        out["iw_bound"] = model.importance_weighted_bound(x, iw, generator=gen)
    return out


def _reconstruct(model: nn.Module, x: Tensor) -> Tensor:
    return model.reconstruct(x)


def _fit_data(model: nn.Module, shardset: Any) -> None:
    import torch

    model.fit_lengths(torch.as_tensor(shardset.lengths("train")))
    norm = shardset.manifest.normalisation
    model.fit_normalisation(norm["mean"], norm["std"])


def _half(model: nn.Module, dtype: torch.dtype) -> None:
    # The whole decoder (GRU/LSTM and its linears) in half precision; it casts its inputs and
    # returns float32 means, so sampling and the likelihood around it stay as they are.
    model.decoder.to(dtype)
    model.decoder.compute_dtype = dtype


FAMILY = register_family(
    Family(
        name="rvae",
        summary="recurrent VAE for sequences (GRU/LSTM, Gaussian likelihood, z fed every step)",
        build=_build,
        rebuild=_rebuild,
        make_steps=_steps,
        input_range=(0.0, 1.0),  # unused: sequences arrive as standardised floats
        sampling_net="decoder",
        options=("rnn", "hidden_dim", "rnn_layers", "decoder_input", "input_dropout", "free_bits"),
        likelihood=_likelihood,
        reconstruct=_reconstruct,
        half=_half,
        modality="sequences",
        fit_data=_fit_data,
    )
)
