"""Distribution metrics between real and generated images, in a fixed feature space.

The Fréchet distance (https://arxiv.org/abs/1706.08500) between Gaussians fitted to two
feature sets: d² = |mu1 - mu2|² + Tr(S1 + S2 - 2 (S1 S2)^½). Until the classifier-feature
scorecard lands, the feature space is the top principal components of the *training* images:
fixed per dataset, independent of the discriminator, and cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64 throughout)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        # Near-singular product: regularise as in the reference TTUR implementation.
        eps = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)  # tiny imaginary parts come from numerical error
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean), 0.0))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


@dataclass(frozen=True)
class PcaFeatures:
    """Projection onto the top-k principal components of a reference image set."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D)

    @classmethod
    def fit(cls, images01: np.ndarray, k: int = 32) -> PcaFeatures:
        x = images01.reshape(len(images01), -1).astype(np.float64)  # (N, C*H*W)
        mean = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        return cls(mean=mean, components=vt[: min(k, vt.shape[0])])

    def __call__(self, images01: np.ndarray) -> np.ndarray:
        x = images01.reshape(len(images01), -1).astype(np.float64)
        return (x - self.mean) @ self.components.T  # (N, k)


def frechet_pca(reference: PcaFeatures, a01: np.ndarray, b01: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(reference(a01)), *gaussian_stats(reference(b01)))
