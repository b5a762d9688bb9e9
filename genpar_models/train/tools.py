"""The `StepTools` a family's training steps get: DDP wrapping, Adam, clipping, autocast.

Built by the trainer from the process group and the `train` section, so a family's steps
(genpar_models/models/<family>/steps.py) stay free of torch.distributed and of config
plumbing, and a single-process fine-tune (compression) gets the same tools without DDP.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from genpar_models.config import TrainConfig
from genpar_models.models.family import StepTools
from genpar_models.train.dist import DistContext


def resolved_precision(ctx: DistContext, precision: str) -> str:
    """What `train.precision` means on this device: auto is bf16 on CUDA, fp32 on CPU."""
    if precision == "auto":
        return "bf16" if ctx.device.type == "cuda" else "fp32"
    return precision


def autocast(ctx: DistContext, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast where the resolved precision is bf16; plain fp32 otherwise."""
    if resolved_precision(ctx, precision) == "bf16":
        return torch.autocast(ctx.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def process_layout(ctx: DistContext, precision: str) -> dict[str, object]:
    """What a checkpoint must match to resume exactly: ranks, device type, precision."""
    return {
        "world_size": ctx.world_size,
        "device": ctx.device.type,
        "precision": resolved_precision(ctx, precision),
    }


def step_tools(ctx: DistContext, cfg: TrainConfig) -> StepTools:
    """The tools for this process group (DDP when distributed) and this `train` section."""

    def wrap(module: nn.Module) -> nn.Module:
        if not ctx.distributed:
            return module
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DDP(module, device_ids=ids)

    def optimizer(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
        )

    def clip(params: Iterable[torch.Tensor]) -> None:
        if cfg.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)

    return StepTools(
        device=ctx.device,
        wrap=wrap,
        optimizer=optimizer,
        clip=clip,
        autocast=lambda: autocast(ctx, cfg.precision),
    )
