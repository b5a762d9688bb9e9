"""What a model family is: the one object the trainer, evaluator, sampler and compressor ask.

A family (after torchtitan's `TrainSpec`) bundles how to build its network from the `model`
config section, how to rebuild it from the JSON spec stored beside its weights, its training
step(s), what evaluation it supports (a likelihood or not), and which of its submodules
generates samples (for sampling and compression). Nothing outside a family's folder branches on
`model.name`; adding a family is a folder and one `register_family` call.

Contract of a family's network (an `nn.Module`):
    model_spec() -> dict         JSON-able constructor arguments, with "name" = family name
    sample(n, *, generator)      n samples in [0, 1], (n, C, H, W), drawn from `generator`
                                 (a CPU torch.Generator: the same latents on any device);
                                 a sequence family (modality "sequences"): (n, T, C) floats in
                                 the shards' standardised units, NaN after each series' length
                                 (so the lengths travel with the values in one tensor)
    num_classes (optional)       > 0: a class-conditional network (model.conditional, built
                                 with `build(cfg, shape, num_classes=K)`); its `sample`,
                                 forward, likelihood and reconstruct take `labels` (int64
                                 (N,)) and its steps' `step`/`validate` a `labels=` keyword;
                                 families without it are never given labels

Contract of its steps (`Steps`, made by `make_steps` with the trainer's `StepTools`):
    modules, optimizers          what checkpoints hold, by name
    wrap()                       wrap the modules for the process group (after a resume)
    step(x, noise) -> metrics    one optimizer step on a batch in `input_range`
    validate(x, noise) -> sums   per-batch sums of validation metrics (the trainer averages)
    loss_key                     the metric watched for divergence
    batches_per_step (optional)  batches of train.batch_size_per_rank x grad_accum_steps rows
                                 that `step` takes (the GAN: train.n_critic); default 1
Gradient accumulation goes through the tools (`micro_batches`, `sync_if`, `scaled`,
`backward`, `apply`), which also hold fp16's gradient scaler; the trainer sets learning rates
and keeps the moving average (train/trainer.py), so a family's steps know of neither.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from genpar_models.config import ModelConfig, TrainConfig


class Steps(Protocol):
    loss_key: str
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]

    def wrap(self) -> None: ...
    def step(self, x: Tensor, noise: torch.Generator) -> dict[str, Tensor]: ...
    def validate(self, x: Tensor, noise: torch.Generator) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class StepTools:
    """What a family's steps get from the trainer, so families never touch torch.distributed:
    how to wrap a module for the process group, make an optimizer, clip, autocast."""

    device: torch.device
    # DDP under several ranks, the module itself on one; wrap(m, broadcast_buffers=False) for
    # a family whose buffers are identical on every rank by construction
    wrap: Callable[..., nn.Module]
    optimizer: Callable[[Iterable[Tensor], float], torch.optim.Optimizer]  # train.* Adam at lr
    clip: Callable[[Iterable[Tensor]], None]  # train.grad_clip_norm, when set
    autocast: Callable[[], contextlib.AbstractContextManager]  # train.precision on this device
    accum_steps: int = 1  # train.grad_accum_steps: micro-batches per optimizer step
    # loss.backward(); under fp16 the loss is scaled first (torch.amp.GradScaler)
    backward: Callable[[Tensor], None] = lambda loss: loss.backward()
    # clip, then optimizer.step(); under fp16 unscale first, skip steps with inf, update scale
    update: Callable[[torch.optim.Optimizer, Iterable[Tensor]], None] | None = None

    @staticmethod
    def no_sync(module: nn.Module) -> contextlib.AbstractContextManager:
        """A wrapped module's gradients are not all-reduced inside this block (DDP's
        `no_sync`, FSDP2's `set_requires_gradient_sync`)."""
        sync_off = getattr(module, "no_sync", None)
        if callable(sync_off):
            return sync_off()
        if callable(getattr(module, "set_requires_gradient_sync", None)):
            return _fsdp_no_sync(module)
        return contextlib.nullcontext()

    def sync_if(self, module: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Gradient accumulation under DDP: all-reduce on the last micro-batch only."""
        return contextlib.nullcontext() if last else self.no_sync(module)

    def micro_batches(self, *tensors: Tensor) -> list[tuple[Tensor, ...]]:
        """The tensors cut along dim 0 into `accum_steps` micro-batches, zipped."""
        if self.accum_steps == 1:
            return [tensors]
        return list(zip(*(t.tensor_split(self.accum_steps) for t in tensors), strict=True))

    def scaled(self, loss: Tensor) -> Tensor:
        """A micro-batch's loss as its share of the step's mean loss."""
        return loss if self.accum_steps == 1 else loss / self.accum_steps

    def apply(self, optimizer: torch.optim.Optimizer, params: Iterable[Tensor]) -> None:
        """One optimizer step on the accumulated gradients (clipped as train.* says)."""
        if self.update is not None:
            self.update(optimizer, params)
        else:
            self.clip(params)
            optimizer.step()


@contextlib.contextmanager
def _fsdp_no_sync(module: nn.Module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


# likelihood(model, x, generator, iw_samples) -> per-sample (N,) tensors in nats: "recon",
# "kl", "elbo" (= -(recon + kl)) and, when iw_samples > 0, "iw_bound".
Likelihood = Callable[["nn.Module", "Tensor", "torch.Generator", int], dict[str, "Tensor"]]
# reconstruct(model, x) -> (N, C, H, W) in [0, 1] for x (N, C, H, W) in [0, 1] (served models'
# `task: reconstruct`).
Reconstruct = Callable[["nn.Module", "Tensor"], "Tensor"]


@dataclass(frozen=True)
class Family:
    """One model family (see the module docstring for the network's and the steps' contract)."""

    name: str  # the value of model.name
    summary: str  # one line, for listings and errors
    build: Callable[[ModelConfig, Sequence[int]], nn.Module]  # fresh network: config + (C, H, W)
    rebuild: Callable[[Mapping[str, Any]], nn.Module]  # the same architecture from model_spec()
    make_steps: Callable[[nn.Module, TrainConfig, StepTools], Steps]
    input_range: tuple[float, float]  # where the networks take images (trainer maps [0, 1] here)
    sampling_net: str  # attribute of the network that turns latents into samples
    options: tuple[str, ...] = ()  # model.* fields it reads beyond config.SHARED_FIELDS
    likelihood: Likelihood | None = None  # None: the family has no likelihood to evaluate
    reconstruct: Reconstruct | None = None  # None: the family cannot reconstruct an image
    # Cast the sampling network to half precision in place (compression's bf16/fp16 variants);
    # None: the whole network runs in `dtype` between casts.
    half: Callable[[nn.Module, torch.dtype], None] | None = None

    # Whether the likelihood of a network with this model_spec is a code length of the data as
    # seen under data.binarize (only then is bits/dim reported); None: never.
    code_length: Callable[[Mapping[str, Any], str], bool] | None = None
    # What its networks take: "images" (uint8 shards mapped into input_range) or "sequences"
    # (float (N, T, C) shards, standardised, NaN after each length, taken as they are).
    modality: str = "images"
    # Fit a fresh network to its shard set before training (sequences: the train split's
    # length histogram and the manifest's normalisation, so samples come back in source units).
    fit_data: Callable[[nn.Module, Any], None] | None = None
    # Give a network rebuilt from its spec the `model` settings that say how it trains but are
    # kept out of the spec (a GAN's gan_loss), before more training (compression's
    # fine-tuning); None: the spec holds everything its steps read.
    train_settings: Callable[[nn.Module, ModelConfig], None] | None = None

    def to_input(
        self, batch_u8: Tensor, binarize: str = "none", generator: torch.Generator | None = None
    ) -> Tensor:
        """uint8 pixels as floats in `input_range` (0..255 -> [lo, hi], linearly), binarised
        first as data.binarize says (dynamic draws from `generator`, a CPU generator)."""
        if self.modality == "sequences":
            return batch_u8  # float series already in model units
        batch_u8 = binarized(batch_u8, binarize, generator)
        lo, hi = self.input_range
        return batch_u8.float().div_(255.0).mul_(hi - lo).add_(lo)

    def reports_bits_per_dim(self, spec: Mapping[str, Any], binarize: str) -> bool:
        return self.code_length is not None and self.code_length(spec, binarize)


def binarized(batch_u8: Tensor, mode: str, generator: torch.Generator | None) -> Tensor:
    """data.binarize on a uint8 batch: none = as is; static = 255 above half-white, else 0;
    dynamic = 255 with probability x/255 (Salakhutdinov & Murray 2008), drawn from `generator`
    on the CPU and moved, so the draw is the same on any device."""
    import torch

    if mode == "none":
        return batch_u8
    if mode == "static":
        return (batch_u8 > 127).to(torch.uint8) * 255
    if mode != "dynamic":
        raise ValueError(f"data.binarize must be none, static or dynamic, got {mode!r}")
    u = torch.rand(batch_u8.shape, generator=generator).to(batch_u8.device)
    return (u * 255.0 < batch_u8.float()).to(torch.uint8) * 255
