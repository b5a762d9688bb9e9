"""The learning-rate schedule (`train.lr_schedule`, `train.warmup_steps`), set before each step.

A pure function of the step, applied by setting every optimizer group's rate from the base
rate it was built with, so a resumed run gets the same rates with no scheduler state to
checkpoint. Warm-up is linear from 0 (Goyal et al. 2017, https://arxiv.org/abs/1706.02677);
cosine decays to 0 at max_steps (SGDR without restarts, Loshchilov & Hutter 2017,
https://arxiv.org/abs/1608.03983). constant with no warm-up leaves the rate untouched.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, *, schedule: str, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the base rate for optimizer step `step` (1-based)."""
    if warmup_steps and step <= warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"train.lr_schedule must be constant or cosine, got {schedule!r}")


class LrSchedule:
    """Sets each optimizer group's lr to base lr x lr_factor(step) before step `step`."""

    def __init__(
        self,
        optimizers: dict[str, torch.optim.Optimizer],
        *,
        schedule: str,
        warmup_steps: int,
        max_steps: int,
    ) -> None:
        # Read before a checkpoint is restored (which brings back the rates it was saved with);
        # groups are looked up at each step, since load_state_dict replaces them.
        self.optimizers = list(optimizers.values())
        self.base = [[g["lr"] for g in opt.param_groups] for opt in self.optimizers]
        self.kw = {"schedule": schedule, "warmup_steps": warmup_steps, "max_steps": max_steps}
        self.active = schedule != "constant" or warmup_steps > 0

    def set(self, step: int) -> float:
        """Apply the rates of step `step`; returns the factor."""
        if not self.active:
            return 1.0
        factor = lr_factor(step, **self.kw)
        for opt, bases in zip(self.optimizers, self.base, strict=True):
            for group, base in zip(opt.param_groups, bases, strict=True):
                group["lr"] = base * factor
        return factor
