"""The RVAE's training step: the negative ELBO per series, with KL annealing and free bits.

KL annealing (Bowman et al. 2016): the KL weight rises linearly from 0 to train.kl_weight over
train.kl_anneal_steps, counted by the network's `steps_taken` buffer, so a resumed run continues
the ramp exactly. Free bits (Kingma et al. 2016): each latent dimension's batch-mean KL is
counted as at least model.free_bits nats in the loss (the metrics report the true KL).
"""

from __future__ import annotations

import torch
from torch import nn

from genpar_models.config import TrainConfig
from genpar_models.models.family import StepTools


class RvaeSteps:
    loss_key = "train/loss"

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, tools: StepTools, free_bits: float
    ) -> None:
        self.model, self.cfg, self.tools, self.free_bits = model, cfg, tools, free_bits
        self.modules = {"rvae": model}
        self.optimizers = {"rvae": tools.optimizer(model.parameters(), cfg.lr)}
        self.ddp: nn.Module = model

    def wrap(self) -> None:
        # Its buffers (steps_taken, data_mean/std, length_counts) are set alike on every rank:
        # from the same shard set, the same checkpoint and one increment per step. DDP's
        # broadcast of them before every forward was a second collective per step (issue 20).
        self.ddp = self.tools.wrap(self.model, broadcast_buffers=False)

    def kl_weight(self) -> float:
        ramp = self.cfg.kl_anneal_steps
        done = int(self.model.steps_taken)
        return self.cfg.kl_weight * (1.0 if ramp == 0 else min(1.0, done / ramp))

    def loss(self, out: dict[str, torch.Tensor], beta: float) -> torch.Tensor:
        kl = out["kl_dims"].mean(dim=0)  # (D,) batch-mean KL per latent dimension
        if self.free_bits > 0:
            kl = kl.clamp(min=self.free_bits)
        return out["recon"].mean() + beta * kl.sum()

    def step(self, x: torch.Tensor, noise: torch.Generator) -> dict[str, torch.Tensor]:
        opt = self.optimizers["rvae"]
        self.model.train()
        beta = self.kl_weight()
        opt.zero_grad(set_to_none=True)
        chunks = self.tools.micro_batches(x)
        sums: dict[str, torch.Tensor] = {}
        for i, (xi,) in enumerate(chunks):
            with self.tools.sync_if(self.ddp, i == len(chunks) - 1):
                with self.tools.autocast():
                    out = self.ddp(xi, generator=noise)
                loss = self.loss(out, beta)
                self.tools.backward(self.tools.scaled(loss))
            steps = out["steps"].sum().clamp(min=1)
            metrics = {
                "train/loss": loss.detach(),
                "train/recon": out["recon"].detach().mean(),
                "train/kl": out["kl"].detach().mean(),
                "train/nats_per_step": (-out["elbo"].detach().sum() / steps),
            }
            sums = {k: sums.get(k, 0) + v for k, v in metrics.items()}
        self.tools.apply(opt, self.model.parameters())
        with torch.no_grad():
            self.model.steps_taken += 1
        metrics = sums if len(chunks) == 1 else {k: v / len(chunks) for k, v in sums.items()}
        metrics["train/kl_weight"] = torch.tensor(beta, dtype=torch.float64, device=x.device)
        return metrics

    @torch.no_grad()
    def validate(self, x: torch.Tensor, noise: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-batch sums over series (the trainer all-reduces and divides by the count)."""
        self.model.eval()
        out = self.model(x, generator=noise)
        per_step = -out["elbo"].double() / out["steps"].double().clamp(min=1)
        return {
            "val/elbo": out["elbo"].double().sum(),
            "val/recon": out["recon"].double().sum(),
            "val/kl": out["kl"].double().sum(),
            "val/nats_per_step": per_step.sum(),
        }
