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
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from genpar_models.config import TrainConfig
from genpar_models.errors import CheckpointError, ConfigError
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


def grad_scaler(ctx: DistContext, cfg: TrainConfig) -> torch.amp.GradScaler | None:
    """fp16's gradient scaler (None at every other precision). The trainer owns it, so its
    scale and growth tracker go into checkpoints (`scaler_state`) and come back on resume."""
    if resolved_precision(ctx, cfg.precision) != "fp16":
        return None
    return torch.amp.GradScaler(ctx.device.type)


def scaler_state(scaler: torch.amp.GradScaler | None) -> dict[str, float | int] | None:
    """The scaler's state as JSON numbers (a checkpoint's sidecar), or None without one."""
    if scaler is None:
        return None
    return {k: (v if isinstance(v, int) else float(v)) for k, v in scaler.state_dict().items()}


def load_scaler_state(scaler: torch.amp.GradScaler | None, state: Any, where: str) -> str | None:
    """Restore `scaler` from a checkpoint's `grad_scaler` entry; returns a warning when a
    scaler must start afresh (a checkpoint written at another precision, or before scalers
    were checkpointed): its first steps may then be skipped while the scale backs off.

    Raises:
        CheckpointError: the entry is not a mapping of the scaler's numbers.
    """
    if scaler is None:
        return None
    if state is None:
        return f"{where} holds no gradient scaler state: fp16's loss scale starts afresh"
    keys = set(scaler.state_dict())
    if (
        not isinstance(state, dict)
        or set(state) != keys
        or not all(isinstance(v, (int, float)) for v in state.values())
    ):
        raise CheckpointError(
            f"{where}: grad_scaler is {state!r}, expected numbers for {sorted(keys)}"
        )
    scaler.load_state_dict(state)
    return None


def step_tools(
    ctx: DistContext,
    cfg: TrainConfig,
    strategy: str = "ddp",
    scaler: torch.amp.GradScaler | None = None,
) -> StepTools:
    """The tools for this process group (DDP when distributed; nothing to wrap under FSDP,
    whose modules are already sharded) and this `train` section; `scaler`: fp16's, from
    `grad_scaler` (made here when not given)."""

    def wrap(module: nn.Module, broadcast_buffers: bool = True) -> nn.Module:
        # broadcast_buffers=False: the family declares its buffers equal on every rank by
        # construction, so DDP's per-forward broadcast from rank 0 (a second collective each
        # step) is skipped; BatchNorm statistics keep it (exact resume and validation).
        if not ctx.distributed or strategy == "fsdp":
            return module
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DDP(module, device_ids=ids, broadcast_buffers=broadcast_buffers)

    def optimizer(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(
            params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
        )

    def clip(params: Iterable[torch.Tensor]) -> None:
        if cfg.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)

    # One scaler, updated after each optimizer's step: each (scale, backward, step, update)
    # round of a GAN's two players is complete on its own.
    if scaler is None:
        scaler = grad_scaler(ctx, cfg)

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
