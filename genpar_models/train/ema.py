"""An exponential moving average of the sampling network's weights (`model.ema_decay`).

Averaging the generator's weights over the last steps gives better samples than its last
iterate (Yazici et al. 2019, https://arxiv.org/abs/1806.04498; Karras et al. 2018 and BigGAN
sample from it). The average starts from the initial weights, so early on a fixed decay would
keep mostly the random init: the effective decay is warmed up as
min(decay, (1 + step) / (10 + step)) (TensorFlow's ExponentialMovingAverage with num_updates).

It is updated after each optimizer step from the weights DDP has already made identical, with
the same arithmetic on every rank, so every rank holds the same average; buffers (BatchNorm's
running statistics) are copied, not averaged. The trainer checkpoints it as one more module
("ema") and exports it as the sampling network's weights.

Under compute.strategy=fsdp the average is sharded like the network: the trainer copies the
network before it is sharded (FSDP2 refuses to deepcopy a sharded module) and shards the copy
on the same mesh (train/trainer.py), so each rank averages its own shard of every weight
(DTensors with the same placements; the foreach arithmetic runs on the local shards) and
holds 1/world_size of the average, which the checkpoint writes sharded and the export gathers.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def effective_decay(decay: float, step: int) -> float:
    """The decay used after optimizer step `step` (1-based): min(decay, (1+step)/(10+step))."""
    return min(decay, (1.0 + step) / (10.0 + step))


class EmaWeights:
    """A frozen copy of `net` whose parameters track ema = d * ema + (1 - d) * weights."""

    def __init__(self, net: nn.Module, decay: float, module: nn.Module | None = None) -> None:
        """`module`: the average's network, made by the caller (a sharded copy of `net` under
        FSDP, see `frozen_copy`); default a copy of `net`."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"model.ema_decay must be in [0, 1), got {decay}")
        self.net, self.decay = net, decay
        self.module = module if module is not None else frozen_copy(net)

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average again from the network's current weights."""
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*self.net.parameters(), *self.net.buffers()]
        for a, b in zip(mine, theirs, strict=True):
            a.copy_(b.detach())

    @torch.no_grad()
    def update(self, step: int) -> float:
        """Fold the network's current weights in after optimizer step `step`; returns d."""
        d = effective_decay(self.decay, step)
        ema = list(self.module.parameters())
        raw = [p.detach() for p in self.net.parameters()]
        torch._foreach_mul_(ema, d)
        torch._foreach_add_(ema, raw, alpha=1.0 - d)
        for mine, theirs in zip(self.module.buffers(), self.net.buffers(), strict=True):
            mine.copy_(theirs)
        return d

    def state_dict_of(self, model: nn.Module, attr: str) -> dict[str, torch.Tensor]:
        """`model`'s state_dict with its submodule `attr` replaced by the average."""
        state = dict(model.state_dict())
        for key, value in self.module.state_dict().items():
            state[f"{attr}.{key}"] = value
        return state


def frozen_copy(net: nn.Module) -> nn.Module:
    """A copy of `net` that takes no gradients, in eval mode (the average's network)."""
    return copy.deepcopy(net).requires_grad_(False).eval()
