"""What one rank trains each step, beyond the family's steps: the learning-rate schedule, the
moving average of the sampling network, and how many rows of data a step takes.

The family's steps (models/<family>/steps.py) update the weights; `Trainer.step` sets the rates
before them and folds the new weights into the average after them, so any family gets a
schedule and an EMA without knowing of either. The average is one more checkpointed module
("ema") and, at export, the sampling network's weights; the raw weights are exported beside it
as the "raw" variant, which the scorecard scores once (eval/fid_raw).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from genpar_models.config import PipelineConfig
from genpar_models.models.family import Family, Steps
from genpar_models.train.dist import DistContext
from genpar_models.train.ema import EmaWeights, frozen_copy
from genpar_models.train.schedule import LrSchedule
from genpar_models.train.sharding import full_state_dict, shard_modules
from genpar_models.train.tools import step_tools


@dataclass
class Trainer:
    steps: Steps
    modules: dict[str, nn.Module]  # what checkpoints hold: the steps' modules (+ "ema")
    ema: EmaWeights | None
    schedule: LrSchedule
    rows_per_step: int  # this rank's rows per step: batch x accumulation x critic batches
    sampling_net: str
    grad_scaler: torch.amp.GradScaler | None = None  # fp16's, checkpointed with the run

    def step(
        self,
        step: int,
        x: torch.Tensor,
        noise: torch.Generator,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Optimizer step number `step` (1-based) on this rank's rows `x` (and, for a
        conditional model, their labels; other families' steps never see a labels argument)."""
        factor = self.schedule.set(step)
        if labels is None:
            metrics = self.steps.step(x, noise)
        else:
            metrics = self.steps.step(x, noise, labels=labels)
        if self.ema is not None:
            self.ema.update(step)
        if self.schedule.active:
            metrics["train/lr_factor"] = torch.tensor(factor, dtype=torch.float64, device=x.device)
        return metrics

    def export_states(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(the weights to export, {variant name: other weights}): with an EMA, the average
        as the sampling network and the raw weights as variant "raw"; else the weights."""
        if self.ema is None:
            return dict(model.state_dict()), {}
        return self.ema.state_dict_of(model, self.sampling_net), {"raw": model.state_dict()}

    def gather_export_states(
        self, model: nn.Module, ctx: DistContext
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """`export_states` of sharded modules, gathered whole on rank 0's CPU (None on the
        other ranks). A collective under FSDP: every rank calls it."""
        raw = full_state_dict(model, ctx)
        average = None if self.ema is None else full_state_dict(self.ema.module, ctx)
        if not ctx.is_main:
            return None
        if average is None:
            return raw, {}
        state = {**raw, **{f"{self.sampling_net}.{k}": v for k, v in average.items()}}
        return state, {"raw": raw}


def ema_net(model: nn.Module, family: Family, cfg: PipelineConfig) -> nn.Module | None:
    """The moving average's network under compute.strategy=fsdp with model.ema_decay: a frozen
    copy of the sampling network made *before* `make_steps` shards it (FSDP2 refuses to copy a
    sharded module), for `make_steps` to shard beside it. None otherwise (EmaWeights copies)."""
    if cfg.model.ema_decay is None or cfg.compute.strategy != "fsdp":
        return None
    return frozen_copy(getattr(model, family.sampling_net))


def make_steps(
    model: nn.Module,
    family: Family,
    cfg: PipelineConfig,
    ctx: DistContext,
    ema: nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Steps:
    """The family's steps with this process group's tools. Under compute.strategy=fsdp the
    modules the steps name (and `ema`, the average's network from `ema_net`) are sharded first
    (in place, new parameter objects) on one mesh, and the steps made again so that their
    optimizers hold the shards (train/sharding.py). `scaler`: fp16's (tools.grad_scaler), the
    one the trainer checkpoints."""
    tools = step_tools(ctx, cfg.train, cfg.compute.strategy, scaler)
    steps = family.make_steps(model, cfg.train, tools)
    if cfg.compute.strategy == "fsdp" and ctx.distributed:
        extra = [] if ema is None else [ema]
        shard_modules([*steps.modules.values(), *extra], ctx, cfg.train.precision)
        steps = family.make_steps(model, cfg.train, tools)
    return steps


def make_trainer(
    model: nn.Module,
    family: Family,
    steps: Steps,
    cfg: PipelineConfig,
    ema: nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Trainer:
    """The trainer of `steps` for this config (before a checkpoint is restored into it);
    `ema`: the average's network (sharded) from `ema_net`, under FSDP."""
    train = cfg.train
    schedule = LrSchedule(
        steps.optimizers,
        schedule=train.lr_schedule,
        warmup_steps=train.warmup_steps,
        max_steps=train.max_steps,
    )
    decay = cfg.model.ema_decay
    net = getattr(model, family.sampling_net)
    average = None if decay is None else EmaWeights(net, decay, module=ema)
    modules = dict(steps.modules) if average is None else {**steps.modules, "ema": average.module}
    critic_batches = getattr(steps, "batches_per_step", 1)
    rows = train.batch_size_per_rank * train.grad_accum_steps * critic_batches
    return Trainer(steps, modules, average, schedule, rows, family.sampling_net, scaler)


def global_batch_size(cfg: PipelineConfig, world_size: int) -> int:
    """Samples per optimizer update: batch_size_per_rank x ranks x grad_accum_steps."""
    return cfg.train.batch_size_per_rank * world_size * cfg.train.grad_accum_steps
