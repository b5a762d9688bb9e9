"""Sample-quality metrics between real and generated feature sets, from maintained libraries.

Every function takes features (N, D) that an extractor (features.py) computed, so
the metric itself never sees pixels, resizing or batch sizes.

- FID, Heusel et al. 2017 (https://arxiv.org/abs/1706.08500): torchmetrics'
  FrechetInceptionDistance fed with precomputed features; d^2 = |mu1 - mu2|^2 +
  Tr(S1 + S2 - 2 (S1 S2)^1/2), accumulated in float64.
- KID, Bińkowski et al. 2018 (https://arxiv.org/abs/1801.01401): the unbiased MMD^2 with the
  cubic polynomial kernel, torchmetrics' `poly_mmd`, of the full feature sets.
- Precision and recall, Kynkäänniemi et al. 2019 (https://arxiv.org/abs/1904.06991), and
  density and coverage, Naeem et al. 2020 (https://arxiv.org/abs/2002.09797): the `prdc`
  package, the reference code of Naeem et al.
- Inception score (Salimans et al. 2016, https://arxiv.org/abs/1606.03498) with genpar's own
  classifier in place of Inception: torchmetrics' InceptionScore fed with logits.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def quiet_import(module: str) -> Any:
    """Import a torchmetrics module when first needed, not when genpar_models loads: importing
    torchmetrics costs ~2 s (it pulls in scipy.signal), paid by every `genpar run` start-up
    before this change. It warns about optional packages it does not need; those are muted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


class _Given(nn.Module):
    """A 'feature extractor' that returns its input: lets torchmetrics score features we already
    computed (and cached) instead of images."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def _t64(x: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (>= 2 rows each)."""
    fid_module = quiet_import("torchmetrics.image.fid")
    metric = fid_module.FrechetInceptionDistance(feature=_Given(real.shape[1]))
    metric.update(_t64(real), real=True)
    metric.update(_t64(fake), real=False)
    return max(float(metric.compute()), 0.0)  # tiny negatives are round-off


def poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's cubic polynomial kernel (x.y / d + 1)^3 (Bińkowski et al. 2018), float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def weighted_mmd2(
    k_rr: np.ndarray, k_ff: np.ndarray, k_rf: np.ndarray, cr: np.ndarray, cf: np.ndarray
) -> float:
    """Unbiased MMD^2 of a multiset of real and of fake rows, row i drawn c[i] times (all ones:
    the sets themselves; a bootstrap draw otherwise): within-set means over pairs of distinct
    draws, the cross term over all pairs. Correct for sets of different sizes."""

    def distinct_pair_mean(k: np.ndarray, c: np.ndarray) -> float:
        same = c * c  # pairs of a draw with itself: c'Kc - sum_i c_i^2 K_ii
        return float((c @ k @ c - same @ np.diag(k)) / (c.sum() ** 2 - same.sum()))

    cross = float(cr @ k_rf @ cf / (cr.sum() * cf.sum()))
    return distinct_pair_mean(k_rr, cr) + distinct_pair_mean(k_ff, cf) - 2.0 * cross


def kid(real: np.ndarray, fake: np.ndarray) -> float:
    """KID: the unbiased MMD^2 of the two full feature sets under the cubic polynomial kernel
    (Bińkowski et al. 2018, eq. 4). Its spread comes from the bootstrap
    (uncertainty.kid_bootstrap), which resamples this same statistic.

    Computed here rather than by torchmetrics' poly_mmd, which divides every term by the first
    set's size and so is biased when the sets differ in size (a reference of 1,500 test images
    against 1,000 samples).
    """
    if min(len(real), len(fake)) < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(real)}, {len(fake)}")
    ones_r, ones_f = np.ones(len(real)), np.ones(len(fake))
    k_rr, k_ff, k_rf = poly_kernel(real, real), poly_kernel(fake, fake), poly_kernel(real, fake)
    return weighted_mmd2(k_rr, k_ff, k_rf, ones_r, ones_f)


def prdc(real: np.ndarray, fake: np.ndarray, *, nearest_k: int) -> dict[str, float]:
    """Precision, recall (k-NN manifolds) and density, coverage of fake against real."""
    from prdc import compute_prdc

    if min(len(real), len(fake)) <= nearest_k:
        raise ValueError(
            f"precision/recall with nearest_k={nearest_k} needs more than {nearest_k} samples "
            f"per set, got {len(real)} real and {len(fake)} generated"
        )
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        out = compute_prdc(
            np.asarray(real, np.float32), np.asarray(fake, np.float32), nearest_k=nearest_k
        )
    return {k: float(v) for k, v in out.items()}


def inception_score(logits: np.ndarray, *, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) from class logits (N, K): mean and std over splits."""
    with warnings.catch_warnings():  # "keeps features in memory"; std of one split is NaN
        warnings.simplefilter("ignore", UserWarning)
        inception = quiet_import("torchmetrics.image.inception")
        metric = inception.InceptionScore(feature=_Given(logits.shape[1]), splits=splits)
        metric.update(_t64(logits))
        with torch.random.fork_rng(devices=[]):  # compute() shuffles with the global RNG
            torch.manual_seed(seed)
            mean, std = metric.compute()
    return float(mean), float(std)
