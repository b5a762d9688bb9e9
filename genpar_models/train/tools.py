"""The `StepTools` a family's training steps get: DDP wrapping, the optimizer, clipping,
autocast.

Built by the trainer from the process group and the `train` section, so a family's steps
(genpar_models/models/<family>/steps.py) stay free of torch.distributed and of config
plumbing, and a single-process fine-tune (compression) gets the same tools without DDP.
Under compute.strategy=fsdp the modules are sharded before the steps are made
(train/sharding.py), so `wrap` leaves them as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from genpar_models.config import TrainConfig
from genpar_models.errors import ConfigError
from genpar_models.models.family import StepTools
from genpar_models.train.dist import DistContext


def resolved_precision(ctx: DistContext, precision: str) -> str:
    """What `train.precision` means on this device: auto is bf16 on CUDA, fp32 on CPU.

    Raises:
        ConfigError: fp16 on a device other than CUDA (its gradient scaler is CUDA's).
    """
    if precision == "auto":
        return "bf16" if ctx.device.type == "cuda" else "fp32"
    if precision == "fp16" and ctx.device.type != "cuda":
        raise ConfigError(
            f"train.precision=fp16 needs CUDA, but this rank trains on {ctx.device.type}; "
            "use fp32 or bf16"
        )
    return precision


_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(ctx: DistContext, precision: str) -> contextlib.AbstractContextManager:
    """bf16 or fp16 autocast where the resolved precision says so; plain fp32 otherwise."""
    dtype = _HALF.get(resolved_precision(ctx, precision))
    if dtype is not None:
        return torch.autocast(ctx.device.type, dtype=dtype)
    return contextlib.nullcontext()


def process_layout(ctx: DistContext, precision: str, strategy: str = "ddp") -> dict[str, object]:
    """What a checkpoint must match to resume exactly: ranks, device type, precision and
    the parallel strategy (whose checkpoints are safetensors or sharded)."""
    return {
        "world_size": ctx.world_size,
        "device": ctx.device.type,
        "precision": resolved_precision(ctx, precision),
        "strategy": strategy,
    }


def step_tools(ctx: DistContext, cfg: TrainConfig, strategy: str = "ddp") -> StepTools:
    """The tools for this process group (DDP when distributed; nothing to wrap under FSDP,
    whose modules are already sharded) and this `train` section."""

    def wrap(module: nn.Module) -> nn.Module:
        if not ctx.distributed or strategy == "fsdp":
            return module
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DDP(module, device_ids=ids)

    def optimizer(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(
            params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
        )

    def clip(params: Iterable[torch.Tensor]) -> None:
        if cfg.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)

    scaler = None
    if resolved_precision(ctx, cfg.precision) == "fp16":
        # One scaler, updated after each optimizer's step: each (scale, backward, step,
        # update) round of a GAN's two players is complete on its own.
        scaler = torch.amp.GradScaler(ctx.device.type)

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def update(opt: torch.optim.Optimizer, params: Iterable[torch.Tensor]) -> None:
        if scaler is None:
            clip(params)
            opt.step()
            return
        scaler.unscale_(opt)  # clip the true gradients
        clip(params)
        scaler.step(opt)  # skipped when the scaled gradients overflowed
        scaler.update()

    return StepTools(
        device=ctx.device,
        wrap=wrap,
        optimizer=optimizer,
        clip=clip,
        autocast=lambda: autocast(ctx, cfg.precision),
        accum_steps=cfg.grad_accum_steps,
        backward=backward,
        update=update,
    )
