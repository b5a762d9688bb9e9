"""One training step per model family, DDP-wrapped: what the trainer loop calls each step.

`VaeSteps` wraps the whole VAE in one DDP module. `GanSteps` wraps generator and discriminator
in separate DDP modules with separate optimizers; the discriminator sees real and fake images
in one concatenated batch (one forward per backward, which DDP requires; BigGAN-PyTorch does
the same), and the generator step runs the discriminator under `no_sync()` so the
discriminator gradients it produces (discarded anyway) are not all-reduced.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from genpar_models.config import TrainConfig
from genpar_models.dist import DistContext
from genpar_models.models.dcgan import discriminator_loss, generator_loss


def _wrap(module: nn.Module, ctx: DistContext) -> nn.Module:
    if not ctx.distributed:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(module, device_ids=ids)


def _adam(params: Any, lr: float, cfg: TrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(
        params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
    )


def _clip(params: Any, cfg: TrainConfig) -> None:
    if cfg.grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)


def autocast(ctx: DistContext, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (precision auto/bf16); plain fp32 otherwise."""
    if ctx.device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if ctx.device.type == "cpu" and precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class VaeSteps:
    """ELBO training of a VAE (https://arxiv.org/abs/1312.6114)."""

    loss_key = "train/loss"

    def __init__(self, model: nn.Module, cfg: TrainConfig, ctx: DistContext) -> None:
        self.model, self.cfg, self.ctx = model, cfg, ctx
        self.modules = {"vae": model}
        self.optimizers = {"vae": _adam(model.parameters(), cfg.lr, cfg)}
        self.ddp: nn.Module = model

    def wrap(self) -> None:
        self.ddp = _wrap(self.model, self.ctx)

    def step(self, x: torch.Tensor, noise: torch.Generator) -> dict[str, torch.Tensor]:
        opt = self.optimizers["vae"]
        self.model.train()
        with autocast(self.ctx, self.cfg.precision):
            out = self.ddp(x, generator=noise)
        loss = self.model.loss(out, self.cfg.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _clip(self.model.parameters(), self.cfg)
        opt.step()
        return {
            "train/loss": loss.detach(),
            "train/recon": out["recon"].detach().float().mean(),
            "train/kl": out["kl"].detach().float().mean(),
        }

    @torch.no_grad()
    def validate(self, x: torch.Tensor, noise: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-batch sums (the trainer all-reduces and divides by the count)."""
        self.model.eval()
        out = self.model(x, generator=noise)
        dims = x[0].numel()
        nats = -out["elbo"].double()
        return {
            "val/elbo": out["elbo"].double().sum(),
            "val/recon": out["recon"].double().sum(),
            "val/kl": out["kl"].double().sum(),
            "val/bits_per_dim": (nats / (dims * math.log(2))).sum(),
        }


class GanSteps:
    """Non-saturating GAN training (https://arxiv.org/abs/1406.2661) of a DCGAN."""

    loss_key = "train/loss_g"

    def __init__(self, model: nn.Module, cfg: TrainConfig, ctx: DistContext) -> None:
        self.model, self.cfg, self.ctx = model, cfg, ctx
        self.modules = {"generator": model.generator, "discriminator": model.discriminator}
        self.optimizers = {
            "generator": _adam(model.generator.parameters(), cfg.lr, cfg),
            "discriminator": _adam(
                model.discriminator.parameters(), cfg.lr_discriminator or cfg.lr, cfg
            ),
        }
        self.g: nn.Module = model.generator
        self.d: nn.Module = model.discriminator

    def wrap(self) -> None:
        self.g = _wrap(self.model.generator, self.ctx)
        self.d = _wrap(self.model.discriminator, self.ctx)

    def step(self, real: torch.Tensor, noise: torch.Generator) -> dict[str, torch.Tensor]:
        n = real.shape[0]
        z = torch.randn(n, self.model.latent_dim, generator=noise).to(real.device)
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        self.model.train()
        with autocast(self.ctx, self.cfg.precision):
            fake = self.g(z)
            logits = self.d(torch.cat([real, fake.detach()])).float()
        loss_d = discriminator_loss(logits[:n], logits[n:])
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        _clip(self.model.discriminator.parameters(), self.cfg)
        opt_d.step()
        # The generator is scored on the same mixed real+fake batch the discriminator was
        # trained on: with BatchNorm in D, a fake-only batch is normalised by other
        # statistics, D(fake) reads as "real" there and the generator's loss (and gradient)
        # collapses to ~0 while D wins on mixed batches (seen on mnist5k at 28x28).
        # D's own weight gradients are not needed here: freezing them saves their backward.
        no_sync = self.d.no_sync() if isinstance(self.d, DDP) else contextlib.nullcontext()
        self.model.discriminator.requires_grad_(False)
        try:
            with no_sync, autocast(self.ctx, self.cfg.precision):
                logits_fake = self.d(torch.cat([real, fake])).float()[n:]
            loss_g = generator_loss(logits_fake)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
        finally:
            self.model.discriminator.requires_grad_(True)
        _clip(self.model.generator.parameters(), self.cfg)
        opt_g.step()
        return {
            "train/loss_d": loss_d.detach(),
            "train/loss_g": loss_g.detach(),
            "train/d_real": torch.sigmoid(logits[:n].detach()).mean(),
            "train/d_fake": torch.sigmoid(logits[n:].detach()).mean(),
        }

    @torch.no_grad()
    def validate(self, x: torch.Tensor, noise: torch.Generator) -> dict[str, torch.Tensor]:
        """Mean discriminator score on held-out real images (high = D overfits less)."""
        self.model.eval()
        logits = self.model.discriminator(x).float()
        return {"val/d_real": torch.sigmoid(logits).double().sum()}


def make_steps(model: nn.Module, name: str, cfg: TrainConfig, ctx: DistContext) -> Any:
    return {"vae": VaeSteps, "dcgan": GanSteps}[name](model, cfg, ctx)
