"""Log-likelihoods and divergences the VAE is trained and evaluated with, all in nats.

Pure tensor functions: the Bernoulli, discretised-Gaussian and discretised-logistic-mixture
decoder likelihoods of an image batch, the closed-form KL of a diagonal Gaussian posterior from
N(0, I), and a diagonal Gaussian log-density (for importance weights). Per-sample results have
shape (N,), summed over pixels or latent dimensions, so bits/dim is -log p / (D * ln 2) for
D = C*H*W.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from genpar_models.models.layers import draw_normal

LEVELS = 256
# Pixel levels k/255 sit 1/255 apart, so each owns the bin of half-width 1/510 around it.
HALF_BIN = 1.0 / (2 * (LEVELS - 1))
# Floor for log Phi(hi) - log Phi(lo): keeps log() and its gradient finite for bins far
# narrower than the scale (where the two CDFs agree to machine precision); cf. the 1e-12 floor
# of PixelCNN++ (https://arxiv.org/abs/1701.05517).
_MIN_LOG_GAP = 1e-12
_LOG_2PI = math.log(2 * math.pi)


def bernoulli_nll(x: Tensor, logits: Tensor) -> Tensor:
    """-log p(x | logits) of images x in [0, 1] under independent Bernoullis, per sample.

    Args:
        x: (N, C, H, W) targets in [0, 1] (grey levels act as soft targets).
        logits: (N, C, H, W) decoder logits.

    Returns:
        (N,) negative log-likelihood in nats, summed over pixels.
    """
    nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return nll.flatten(1).sum(1)  # (N, C*H*W) -> (N,)


def discretized_gaussian_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise log P(x) of 8-bit pixel levels under a Gaussian discretised into 256 bins.

    Like the discretised logistic of PixelCNN++ (https://arxiv.org/abs/1701.05517) with the
    normal CDF: level x = k/255 owns [x - 1/510, x + 1/510], the first bin extends to -inf and
    the last to +inf, so the 256 probabilities sum to one and bits/dim is a real code length.

    Args:
        x: pixels in [0, 1]; snapped to the nearest level k/255 first.
        mean: Gaussian means, broadcastable with x.
        log_scale: log standard deviations, broadcastable with x (e.g. (C, 1, 1)).

    Returns:
        log-probabilities with the broadcast shape, in x's floating dtype (at least float32).
    """
    out_dtype = torch.promote_types(torch.promote_types(x.dtype, mean.dtype), torch.float32)
    # float64 because Phi(upper) - Phi(lower) over a bin much narrower than the scale cancels
    # catastrophically in float32; these elementwise ops are cheap next to the convs.
    level = torch.round(x.double() * (LEVELS - 1)) / (LEVELS - 1)
    centered = level - mean.double()
    inv_scale = torch.exp(-log_scale.double())
    upper = (centered + HALF_BIN) * inv_scale
    lower = (centered - HALF_BIN) * inv_scale
    # Interior bins: Phi(u) - Phi(l) = Phi(-l) - Phi(-u), so reflect bins right of the mean and
    # evaluate both CDFs in the left tail, where log_ndtr keeps full relative precision, then
    # take log(Phi(hi) - Phi(lo)) = log Phi(hi) + log(1 - exp(log Phi(lo) - log Phi(hi))).
    right = centered > 0
    log_hi = torch.special.log_ndtr(torch.where(right, -lower, upper))
    log_lo = torch.special.log_ndtr(torch.where(right, -upper, lower))
    gap = (log_hi - log_lo).clamp_min(_MIN_LOG_GAP)
    interior = log_hi + torch.log(-torch.expm1(-gap))
    first = torch.special.log_ndtr(upper)  # log Phi(upper): the bin (-inf, upper]
    last = torch.special.log_ndtr(-lower)  # log(1 - Phi(lower)): the bin [lower, inf)
    log_prob = torch.where(level < HALF_BIN, first, interior)
    log_prob = torch.where(level > 1 - HALF_BIN, last, log_prob)
    return log_prob.to(out_dtype)


def discretized_gaussian_nll(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """-log P(x) of (N, C, H, W) images under the discretised Gaussian, per sample.

    Args:
        x: (N, C, H, W) pixels in [0, 1].
        mean: (N, C, H, W) decoder means in [0, 1].
        log_scale: per-channel log standard deviation, shape (C, 1, 1).

    Returns:
        (N,) negative log-likelihood in nats, summed over pixels.
    """
    log_prob = discretized_gaussian_log_prob(x, mean, log_scale)
    return -log_prob.flatten(1).sum(1)  # (N, C*H*W) -> (N,)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """Closed-form KL(N(mu, diag(exp(logvar))) || N(0, I)) per sample, in nats.

    Kingma & Welling 2014 (https://arxiv.org/abs/1312.6114), appendix B.

    Args:
        mu: (N, D) posterior means.
        logvar: (N, D) posterior log-variances.

    Returns:
        (N,) KL divergences, summed over the D latent dimensions.
    """
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)


def normal_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension.

    Args:
        z: (..., D) points; mu, logvar: broadcastable with z.

    Returns:
        (...) log-densities in nats.
    """
    z, mu, logvar = z.float(), mu.float(), logvar.float()
    return -0.5 * (_LOG_2PI + logvar + (z - mu).square() * torch.exp(-logvar)).sum(-1)


# Floor of log-scales, as in PixelCNN++: a component narrower than this puts (almost) all its
# mass in one bin anyway, and the log-density would overflow.
_MIN_LOG_SCALE = -7.0


def discretized_logistic_mixture_log_prob(x: Tensor, params: Tensor, components: int) -> Tensor:
    """Elementwise log P(x) of 8-bit levels under a mixture of discretised logistics.

    PixelCNN++ (Salimans et al. 2017, https://arxiv.org/abs/1701.05517, section 2.1) with one
    independent mixture per channel and pixel: level x = k/255 owns [x - 1/510, x + 1/510], the
    first bin extends to -inf and the last to +inf, so the 256 probabilities sum to one and
    bits/dim is a real code length.

    Args:
        x: (N, C, H, W) pixels in [0, 1]; snapped to the nearest level first.
        params: (N, 3 * K * C, H, W) decoder outputs: per component k the mixture logit, the
            mean and the log-scale, laid out as (3, K, C) along the channel axis.
        components: K.

    Returns:
        (N, C, H, W) log-probabilities (float64).
    """
    n, c, h, w = x.shape
    p = params.double().view(n, 3, components, c, h, w)  # (N, 3*K*C, H, W) -> (N, 3, K, C, H, W)
    logit_pi, mean, log_s = p[:, 0], p[:, 1], p[:, 2].clamp_min(_MIN_LOG_SCALE)  # (N, K, C, H, W)
    level = (torch.round(x.double() * (LEVELS - 1)) / (LEVELS - 1)).unsqueeze(1)  # (N, 1, C, H, W)
    inv_s = torch.exp(-log_s)
    upper = (level - mean + HALF_BIN) * inv_s
    lower = (level - mean - HALF_BIN) * inv_s
    log_cdf_upper = F.logsigmoid(upper)  # the first bin: (-inf, upper]
    log_sf_lower = F.logsigmoid(-lower)  # the last bin: [lower, inf)
    # Interior bins: log(sigmoid(u) - sigmoid(l)), from the log-sigmoids so that it stays exact
    # in the tails: log s(u) + log(1 - exp(log s(l) - log s(u))).
    gap = (log_cdf_upper - F.logsigmoid(lower)).clamp_min(_MIN_LOG_GAP)
    interior = log_cdf_upper + torch.log(-torch.expm1(-gap))
    log_bin = torch.where(level < HALF_BIN, log_cdf_upper, interior)
    log_bin = torch.where(level > 1 - HALF_BIN, log_sf_lower, log_bin)
    log_mix = torch.log_softmax(logit_pi, dim=1)
    return torch.logsumexp(log_mix + log_bin, dim=1)  # (N, K, C, H, W) -> (N, C, H, W)


def discretized_logistic_mixture_nll(x: Tensor, params: Tensor, components: int) -> Tensor:
    """-log P(x) per sample, (N,) nats, summed over pixels (see the log_prob above)."""
    log_prob = discretized_logistic_mixture_log_prob(x, params, components)
    return -log_prob.flatten(1).sum(1).to(torch.promote_types(x.dtype, torch.float32))


def logistic_mixture_mean(params: Tensor, components: int, channels: int) -> Tensor:
    """The mixture's mean per pixel, (N, C, H, W), clamped to [0, 1]: what a sample shows."""
    n, _, h, w = params.shape
    p = params.float().view(n, 3, components, channels, h, w)
    weights = torch.softmax(p[:, 0], dim=1)  # (N, K, C, H, W)
    return (weights * p[:, 1]).sum(1).clamp(0.0, 1.0)


@torch.no_grad()
def importance_weighted_bound(
    x: Tensor,
    k: int,
    *,
    encode: Callable[[Tensor], tuple[Tensor, Tensor]],
    log_likelihood: Callable[[Tensor, Tensor, int], Tensor],
    latent_dim: int,
    generator: torch.Generator | None,
    chunk: int,
) -> Tensor:
    """The k-sample IWAE bound on log p(x) (Burda et al. 2016, https://arxiv.org/abs/1509.00519).

    log p(x) >= logmeanexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)]; tightens as k grows,
    and its expectation at k=1 is the ELBO. For evaluation: runs without autograd, decoding
    `chunk` posterior draws per pass so memory stays bounded for large k. `encode(x)` gives the
    posterior's (mu, logvar), (N, D) each; `log_likelihood(x_rep, z, c)` gives log p(x|z) per
    row, (c*N,), of the c draws of z (c*N, D) in the rows' order of x_rep (x repeated c times).

    Returns:
        (N,) bound in nats.
    """
    if k < 1 or chunk < 1:
        raise ValueError(f"k and chunk must be >= 1, got k={k}, chunk={chunk}")
    n = x.shape[0]
    mu, logvar = encode(x)  # (N, D) each
    # All k*N*D draws up front (small next to the decoder's activations), so the bound does
    # not depend on the chunk size.
    eps = draw_normal(
        (k, n, latent_dim),
        generator=generator,
        device=mu.device,
        dtype=mu.dtype,
        default_device=mu.device,
    )
    zero = mu.new_zeros(())
    log_weights = []
    for eps_chunk in eps.split(chunk):  # (c, N, D)
        c = eps_chunk.shape[0]
        z = mu + torch.exp(0.5 * logvar) * eps_chunk  # (c, N, D)
        # (N, C, H, W) -> (c, N, C, H, W) -> (c*N, C, H, W), matching z's row order
        x_rep = x.expand(c, *x.shape).reshape(c * n, *x.shape[1:])
        log_px = log_likelihood(x_rep, z.reshape(c * n, latent_dim), c).view(c, n)
        log_pz = normal_log_prob(z, zero, zero)  # (c, N)
        log_qz = normal_log_prob(z, mu, logvar)  # (c, N)
        log_weights.append(log_px + log_pz - log_qz)
    return torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(k)  # (k, N) -> (N,)
