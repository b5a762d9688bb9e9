"""The GAN losses: the discriminator's BCE and the non-saturating generator loss, on logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """BCE of the discriminator: real images labelled 1, generated ones 0 (batch means, summed).

    Args:
        logits_real: (N,) discriminator logits of real images.
        logits_fake: (M,) logits of generated images (detached for the discriminator step).
    """
    real = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
    fake = F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
    return real + fake


def generator_loss(logits_fake: Tensor) -> Tensor:
    """Non-saturating generator loss -E[log D(G(z))] (Goodfellow et al. 2014, section 3,
    https://arxiv.org/abs/1406.2661): strong gradients early, when D rejects every sample.
    """
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))
