"""The GAN's training steps: non-saturating GAN training (https://arxiv.org/abs/1406.2661).

Generator and discriminator are wrapped in separate DDP modules with separate optimizers; the
discriminator sees real and fake images in one concatenated batch (one forward per backward,
which DDP requires; BigGAN-PyTorch does the same), and the generator step runs the
discriminator with its gradient all-reduce off, since its weight gradients are not used.
"""

from __future__ import annotations

import torch
from torch import nn

from genpar_models.config import TrainConfig
from genpar_models.models.family import StepTools
from genpar_models.models.gan.losses import discriminator_loss, generator_loss


class GanSteps:
    """Alternating discriminator and generator updates of a DCGAN."""

    loss_key = "train/loss_g"

    def __init__(self, model: nn.Module, cfg: TrainConfig, tools: StepTools) -> None:
        self.model, self.cfg, self.tools = model, cfg, tools
        self.modules = {"generator": model.generator, "discriminator": model.discriminator}
        self.optimizers = {
            "generator": tools.optimizer(model.generator.parameters(), cfg.lr),
            "discriminator": tools.optimizer(
                model.discriminator.parameters(), cfg.lr_discriminator or cfg.lr
            ),
        }
        self.g: nn.Module = model.generator
        self.d: nn.Module = model.discriminator

    def wrap(self) -> None:
        self.g = self.tools.wrap(self.model.generator)
        self.d = self.tools.wrap(self.model.discriminator)

    def step(self, real: torch.Tensor, noise: torch.Generator) -> dict[str, torch.Tensor]:
        n = real.shape[0]
        z = torch.randn(n, self.model.latent_dim, generator=noise).to(real.device)
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        self.model.train()
        with self.tools.autocast():
            fake = self.g(z)
            logits = self.d(torch.cat([real, fake.detach()])).float()
        loss_d = discriminator_loss(logits[:n], logits[n:])
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.tools.clip(self.model.discriminator.parameters())
        opt_d.step()
        # The generator is scored on the same mixed real+fake batch the discriminator was
        # trained on: with BatchNorm in D, a fake-only batch is normalised by other
        # statistics, D(fake) reads as "real" there and the generator's loss (and gradient)
        # collapses to ~0 while D wins on mixed batches (seen on mnist5k at 28x28).
        # D's own weight gradients are not needed here: freezing them saves their backward.
        # Without batch statistics D scores the batch in eval mode, so its spectral norm's
        # power iteration advances once per step, in D's own update.
        d = self.model.discriminator
        d.requires_grad_(False)
        d.train(d.uses_batch_statistics)
        try:
            with self.tools.no_sync(self.d), self.tools.autocast():
                logits_fake = self.d(torch.cat([real, fake])).float()[n:]
            loss_g = generator_loss(logits_fake)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
        finally:
            d.requires_grad_(True)
            d.train(True)
        self.tools.clip(self.model.generator.parameters())
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
