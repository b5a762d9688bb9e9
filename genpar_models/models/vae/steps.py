"""The VAE's training step: the negative ELBO (https://arxiv.org/abs/1312.6114), one DDP module.

`kl_weight` other than 1 trains a beta-VAE. Validation returns per-batch sums of the ELBO
terms and bits/dim; the trainer all-reduces them and divides by the sample count.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genpar_models.config import TrainConfig
from genpar_models.models.family import StepTools


class VaeSteps:
    """ELBO training of a VAE."""

    loss_key = "train/loss"

    def __init__(self, model: nn.Module, cfg: TrainConfig, tools: StepTools) -> None:
        self.model, self.cfg, self.tools = model, cfg, tools
        self.modules = {"vae": model}
        self.optimizers = {"vae": tools.optimizer(model.parameters(), cfg.lr)}
        self.ddp: nn.Module = model

    def wrap(self) -> None:
        self.ddp = self.tools.wrap(self.model)

    def step(
        self, x: torch.Tensor, noise: torch.Generator, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """One optimizer step on x (a CVAE's: with its labels), accumulated over
        tools.accum_steps micro-batches."""
        opt = self.optimizers["vae"]
        self.model.train()
        opt.zero_grad(set_to_none=True)
        if getattr(self.model, "num_classes", 0) and labels is None:
            raise ValueError("a conditional VAE's step needs the rows' labels")
        chunks = self.tools.micro_batches(*((x,) if labels is None else (x, labels)))
        sums: dict[str, torch.Tensor] = {}
        for i, (xi, *yi) in enumerate(chunks):
            kw = {"labels": yi[0]} if yi else {}
            with self.tools.sync_if(self.ddp, i == len(chunks) - 1):
                with self.tools.autocast():
                    out = self.ddp(xi, generator=noise, **kw)
                loss = self.model.loss(out, self.cfg.kl_weight)
                self.tools.backward(self.tools.scaled(loss))
            metrics = {
                "train/loss": loss.detach(),
                "train/recon": out["recon"].detach().float().mean(),
                "train/kl": out["kl"].detach().float().mean(),
            }
            sums = {k: sums.get(k, 0) + v for k, v in metrics.items()}
        self.tools.apply(opt, self.model.parameters())
        return sums if len(chunks) == 1 else {k: v / len(chunks) for k, v in sums.items()}

    @torch.no_grad()
    def validate(
        self, x: torch.Tensor, noise: torch.Generator, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-batch sums (the trainer all-reduces and divides by the count)."""
        self.model.eval()
        out = self.model(x, generator=noise, **({"labels": labels} if labels is not None else {}))
        dims = x[0].numel()
        nats = -out["elbo"].double()
        return {
            "val/elbo": out["elbo"].double().sum(),
            "val/recon": out["recon"].double().sum(),
            "val/kl": out["kl"].double().sum(),
            "val/bits_per_dim": (nats / (dims * math.log(2))).sum(),
        }
