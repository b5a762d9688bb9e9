"""The GAN losses on logits (`model.gan_loss`) and the discriminator's gradient penalties.

    bce      the DCGAN paper's cross-entropy; the generator's loss is the non-saturating one
    hinge    SN-GAN / BigGAN's hinge loss (Miyato et al. 2018, https://arxiv.org/abs/1802.05957,
             eq. 17; Lim & Ye 2017, https://arxiv.org/abs/1705.02894)
    wgan_gp  the Wasserstein critic (Arjovsky et al. 2017) with the gradient penalty of
             Gulrajani et al. 2017 (https://arxiv.org/abs/1704.00028, algorithm 1)

The penalties take the discriminator's logits and the inputs they were computed from (the
steps compute both in one DDP forward, see steps.py) and differentiate with `create_graph`, so
the penalty's own gradient reaches the discriminator's weights in the same backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GAN_LOSSES = ("bce", "hinge", "wgan_gp")


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor, kind: str = "bce") -> Tensor:
    """The discriminator's loss (batch means, summed over real and fake), without penalties.

    Args:
        logits_real: (N,) discriminator logits of real images.
        logits_fake: (M,) logits of generated images (detached for the discriminator step).
        kind: bce, hinge or wgan_gp (the critic's E[D(fake)] - E[D(real)]).
    """
    if kind == "bce":
        real = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
        fake = F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
        return real + fake
    if kind == "hinge":
        return F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()
    if kind == "wgan_gp":
        return logits_fake.mean() - logits_real.mean()
    raise ValueError(f"model.gan_loss must be one of {GAN_LOSSES}, got {kind!r}")


def generator_loss(logits_fake: Tensor, kind: str = "bce") -> Tensor:
    """The generator's loss. bce: the non-saturating -E[log D(G(z))] (Goodfellow et al. 2014,
    section 3, https://arxiv.org/abs/1406.2661), strong gradients early, when D rejects every
    sample; hinge and wgan_gp: -E[D(G(z))]."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))
    if kind in ("hinge", "wgan_gp"):
        return -logits_fake.mean()
    raise ValueError(f"model.gan_loss must be one of {GAN_LOSSES}, got {kind!r}")


def _input_gradients(logits: Tensor, inputs: Tensor) -> Tensor:
    """d(sum of logits)/d inputs, (N, C*H*W), kept in the graph (double backward)."""
    (grads,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grads.flatten(1)


def gradient_penalty(logits_mixed: Tensor, mixed: Tensor) -> Tensor:
    """E[(|grad_x D(x)|_2 - 1)^2] at x = eps * real + (1 - eps) * fake (Gulrajani et al. 2017,
    eq. 3), without its weight lambda.

    Args:
        logits_mixed: (N,) D at `mixed`.
        mixed: (N, C, H, W) the interpolates, with requires_grad.
    """
    return (_input_gradients(logits_mixed, mixed).norm(2, dim=1) - 1.0).pow(2).mean()


def r1_penalty(logits_real: Tensor, real: Tensor) -> Tensor:
    """E[|grad_x D(x)|^2] on real images (Mescheder et al. 2018, https://arxiv.org/abs/1801.04406,
    eq. 9), without its factor gamma / 2.

    Args:
        logits_real: (N,) D at `real`.
        real: (N, C, H, W) real images, with requires_grad.
    """
    return _input_gradients(logits_real, real).pow(2).sum(1).mean()


def interpolates(real: Tensor, fake: Tensor, generator: torch.Generator) -> Tensor:
    """eps * real + (1 - eps) * fake with one eps ~ U(0, 1) per sample (drawn on the CPU from
    `generator` and moved, so the draw is the same on any device), ready for the penalty."""
    eps = torch.rand(real.shape[0], 1, 1, 1, generator=generator).to(real.device, real.dtype)
    return (eps * real + (1.0 - eps) * fake).detach().requires_grad_(True)
