"""The GAN's training steps: `train.n_critic` discriminator updates, then one generator update.

Generator and discriminator are wrapped in separate DDP modules with separate optimizers. The
discriminator sees real and fake images (and, for the penalties, the images they differentiate
at) in one concatenated batch: one forward per backward, which DDP requires (BigGAN-PyTorch
does the same). The generator step runs the discriminator with its gradient all-reduce off,
since its weight gradients are not used. Each critic update takes its own real batch (the
trainer feeds `batches_per_step` of them); with `train.grad_accum_steps` every update is
accumulated over micro-batches, all-reduced on the last.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genpar_models.config import TrainConfig
from genpar_models.models.family import StepTools
from genpar_models.models.gan import losses


class GanSteps:
    """Alternating discriminator and generator updates of a DCGAN."""

    loss_key = "train/loss_g"

    def __init__(self, model: nn.Module, cfg: TrainConfig, tools: StepTools) -> None:
        self.model, self.cfg, self.tools = model, cfg, tools
        self.kind: str = model.gan_loss
        self.batches_per_step = cfg.n_critic
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

    def step(
        self, x: Tensor, noise: torch.Generator, labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """n_critic discriminator updates on the n_critic real batches of x, then one
        generator update scored on the last of them. A conditional GAN takes the real rows'
        `labels` (N,) and generates its fakes of the same classes."""
        self.model.train()
        reals = x.tensor_split(self.batches_per_step)
        ys = self._split_labels(labels, x.shape[0])
        one_pass = self.tools.accum_steps == 1
        for k, (real, y) in enumerate(zip(reals, ys, strict=True)):
            z = torch.randn(real.shape[0], self.model.latent_dim, generator=noise).to(x.device)
            # Without accumulation the last critic update's fakes are reused by the generator
            # update (one generator forward per step); earlier ones need no graph.
            keep = one_pass and k == len(reals) - 1
            with torch.set_grad_enabled(keep), self.tools.autocast():
                fake = self._g(z, y)
            metrics = self._update_d(real, fake.detach(), noise, y)
        metrics.update(self._update_g(real, z, fake if one_pass else None, y))
        return metrics

    def _split_labels(self, labels: Tensor | None, rows: int) -> list:
        conditional = getattr(self.model, "num_classes", 0) > 0
        if conditional and (labels is None or labels.shape != (rows,)):
            raise ValueError(f"a conditional GAN's step needs labels ({rows},) for its rows")
        if not conditional:
            return [None] * self.batches_per_step
        return list(labels.tensor_split(self.batches_per_step))

    def _g(self, z: Tensor, y: Tensor | None) -> Tensor:
        return self.g(z) if y is None else self.g(z, y)

    def _d(self, x: Tensor, y: Tensor | None) -> Tensor:
        return self.d(x) if y is None else self.d(x, y)

    def _update_d(
        self, real: Tensor, fake: Tensor, noise: torch.Generator, y: Tensor | None
    ) -> dict[str, Tensor]:
        opt = self.optimizers["discriminator"]
        opt.zero_grad(set_to_none=True)
        chunks = self.tools.micro_batches(*((real, fake) if y is None else (real, fake, y)))
        sums: dict[str, Tensor] = {}
        for i, (r, f, *yi) in enumerate(chunks):
            with self.tools.sync_if(self.d, i == len(chunks) - 1):
                loss, metrics = self._d_loss(r, f, noise, yi[0] if yi else None)
                self.tools.backward(self.tools.scaled(loss))
            sums = {k: sums.get(k, 0) + v for k, v in metrics.items()}
        self.tools.apply(opt, self.model.discriminator.parameters())
        return sums if len(chunks) == 1 else {k: v / len(chunks) for k, v in sums.items()}

    def _d_loss(
        self, real: Tensor, fake: Tensor, noise: torch.Generator, y: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """D's loss on one micro-batch, penalties included, from one forward of D."""
        n, r1 = real.shape[0], self.cfg.r1_gamma > 0
        if r1:
            real = real.detach().requires_grad_(True)
        parts = [real, fake]
        if self.kind == "wgan_gp":
            parts.append(losses.interpolates(real.detach(), fake, noise))
        ys = None if y is None else torch.cat([y] * len(parts))  # fakes share the real labels
        with self.tools.autocast():
            logits = self._d(torch.cat(parts), ys).float()  # (2n or 3n,)
        loss = losses.discriminator_loss(logits[:n], logits[n : 2 * n], self.kind)
        metrics = {"train/loss_d": loss.detach()}
        if self.kind == "wgan_gp":
            gp = losses.gradient_penalty(logits[2 * n :], parts[2])
            loss = loss + self.cfg.gp_weight * gp
            metrics["train/gradient_penalty"] = gp.detach()
        if r1:
            penalty = losses.r1_penalty(logits[:n], real)
            loss = loss + 0.5 * self.cfg.r1_gamma * penalty
            metrics["train/r1_penalty"] = penalty.detach()
        metrics["train/d_real"] = torch.sigmoid(logits[:n].detach()).mean()
        metrics["train/d_fake"] = torch.sigmoid(logits[n : 2 * n].detach()).mean()
        return loss, metrics

    def _update_g(
        self, real: Tensor, z: Tensor, fake: Tensor | None, y: Tensor | None = None
    ) -> dict[str, Tensor]:
        # The generator is scored on the same mixed real+fake batch the discriminator was
        # trained on: with BatchNorm in D, a fake-only batch is normalised by other
        # statistics, D(fake) reads as "real" there and the generator's loss (and gradient)
        # collapses to ~0 while D wins on mixed batches (seen on mnist5k at 28x28).
        # D's own weight gradients are not needed here: freezing them saves their backward.
        # Without batch statistics D scores the batch in eval mode, so its spectral norm's
        # power iteration advances only in D's own updates.
        opt, d = self.optimizers["generator"], self.model.discriminator
        chunks = self.tools.micro_batches(*((real, z) if y is None else (real, z, y)))
        total = torch.zeros((), device=real.device)
        d.requires_grad_(False)
        d.train(d.uses_batch_statistics)
        try:
            opt.zero_grad(set_to_none=True)
            for i, (r, zi, *yi) in enumerate(chunks):
                y_i = yi[0] if yi else None
                with self.tools.sync_if(self.g, i == len(chunks) - 1):
                    with self.tools.no_sync(self.d), self.tools.autocast():
                        f = fake if fake is not None else self._g(zi, y_i)
                        y2 = None if y_i is None else torch.cat([y_i, y_i])
                        logits_fake = self._d(torch.cat([r, f]), y2).float()[r.shape[0] :]
                    loss_g = losses.generator_loss(logits_fake, self.kind)
                    self.tools.backward(self.tools.scaled(loss_g))
                total = total + loss_g.detach()
        finally:
            d.requires_grad_(True)
            d.train(True)
        self.tools.apply(opt, self.model.generator.parameters())
        return {"train/loss_g": total if len(chunks) == 1 else total / len(chunks)}

    @torch.no_grad()
    def validate(
        self, x: Tensor, noise: torch.Generator, labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Mean discriminator score on held-out real images (high = D overfits less); a
        conditional GAN's of the images with their labels."""
        self.model.eval()
        d = self.model.discriminator
        logits = (d(x) if labels is None else d(x, labels)).float()
        return {"val/d_real": torch.sigmoid(logits).double().sum()}
