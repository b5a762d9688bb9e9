"""Each sample-quality metric against its reference: scipy, closed forms, the unbiased formula."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from genpar_models.errors import GenparError
from genpar_models.eval import metrics, uncertainty
from genpar_models.eval.protocol import ProtocolMismatch, check_comparable, protocol_id


def _with_moments(mu: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n samples whose sample mean and (unbiased) covariance are exactly mu and cov."""
    z = np.random.default_rng(seed).normal(size=(n, len(mu)))
    q, _ = np.linalg.qr(z - z.mean(0))  # (n, d) orthonormal columns, each summing to 0
    return mu + np.sqrt(n - 1) * q @ linalg.cholesky(cov)  # cholesky: upper, cov = U'U


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_matches_a_direct_scipy_sqrtm_computation() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(1.0, 2.0, size=(300, 16))
    assert metrics.fid(a, b) == pytest.approx(_scipy_fid(a, b), rel=1e-9)
    mu1, s1 = metrics.gaussian_stats(a)
    mu2, s2 = metrics.gaussian_stats(b)
    assert uncertainty.frechet_from_stats(mu1, s1, mu2, s2) == pytest.approx(
        metrics.fid(a, b), rel=1e-9
    )


def test_fid_equals_the_closed_form_for_known_gaussians() -> None:
    # Diagonal covariances commute: FID = |mu1-mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    d = 6
    mu1, mu2 = np.zeros(d), np.arange(d, dtype=float)
    var1, var2 = np.linspace(0.5, 3.0, d), np.linspace(4.0, 1.0, d)
    a = _with_moments(mu1, np.diag(var1), 500, seed=1)
    b = _with_moments(mu2, np.diag(var2), 800, seed=2)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    assert metrics.fid(a, b) == pytest.approx(expected, rel=1e-9)
    assert metrics.fid(a, a) == pytest.approx(0.0, abs=1e-9)


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Bińkowski et al. 2018, eq. (2) with k(a, b) = (a.b / d + 1)^3, written out."""
    d, m, n = x.shape[1], len(x), len(y)
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def test_kid_point_and_interval_measure_the_same_statistic() -> None:
    """The point is the full-set unbiased MMD^2 (a reference computation), and the bootstrap
    interval and std are of that same statistic: the interval brackets the point, and its
    std shrinks with more samples (it used to be the spread over subsets, which is zero when a
    subset is the whole set)."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(60, 8)), rng.normal(0.3, 1.2, size=(60, 8))
    point = metrics.kid(x, y)
    assert point == pytest.approx(_unbiased_mmd2(x, y), rel=1e-9)
    lo, hi, std = uncertainty.kid_bootstrap(x, y, point, resamples=200, confidence=0.9, seed=0)
    assert lo < point < hi and std > 0
    assert std == pytest.approx((hi - lo) / (2 * 1.645), rel=0.5)  # a 90% interval ~ +-1.645 sd
    x4, y4 = rng.normal(size=(240, 8)), rng.normal(0.3, 1.2, size=(240, 8))
    big = metrics.kid(x4, y4)
    _, _, std4 = uncertainty.kid_bootstrap(x4, y4, big, resamples=200, confidence=0.9, seed=0)
    assert std4 < std / 1.5
    x2 = rng.normal(size=(60, 8))  # the same distribution as x: MMD^2 is 0 in expectation
    same = metrics.kid(x, x2)
    _, _, same_std = uncertainty.kid_bootstrap(x, x2, same, resamples=200, confidence=0.9, seed=0)
    assert abs(same) < 3 * same_std and abs(same) < point / 3


def test_kid_is_unbiased_for_sets_of_different_sizes() -> None:
    """A reference of 1,500 real images against 1,000 samples: torchmetrics' poly_mmd divides
    every term by the first set's size (here it read 3,343 against replicates near 751 on
    mnist5k); the point must equal the reference computation and sit inside its interval."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(90, 8)), rng.normal(0.3, 1.2, size=(50, 8))
    point = metrics.kid(x, y)
    assert point == pytest.approx(_unbiased_mmd2(x, y), rel=1e-9)
    lo, hi, _ = uncertainty.kid_bootstrap(x, y, point, resamples=200, confidence=0.9, seed=0)
    assert lo < point < hi
    assert metrics.kid(y, x) == pytest.approx(point, rel=1e-9)  # symmetric in the two sets


def test_precision_recall_of_a_set_against_itself_is_one() -> None:
    x = np.random.default_rng(4).normal(size=(200, 10))
    out = metrics.prdc(x, x.copy(), nearest_k=5)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["coverage"] == 1.0
    far = metrics.prdc(x, x + 100.0, nearest_k=5)
    assert far["precision"] == 0.0 and far["recall"] == 0.0 and far["coverage"] == 0.0
    with pytest.raises(ValueError, match="nearest_k=5"):
        metrics.prdc(x[:5], x, nearest_k=5)


def test_inception_score_bounds() -> None:
    k, n = 10, 1000
    assert metrics.inception_score(np.zeros((n, k)))[0] == pytest.approx(1.0)  # no confidence
    confident = np.full((n, k), -30.0)
    confident[np.arange(n), np.arange(n) % k] = 30.0  # certain and balanced: IS = K
    assert metrics.inception_score(confident, splits=1)[0] == pytest.approx(k, rel=1e-6)
    assert 0.9 * k < metrics.inception_score(confident)[0] <= k  # 10 random splits


def test_fid_interval_contains_the_point_and_narrows_with_more_samples() -> None:
    rng = np.random.default_rng(5)
    widths = []
    for n in (100, 1600):
        a, b = rng.normal(size=(n, 4)), rng.normal(0.5, 1.0, size=(n, 4))
        point = metrics.fid(a, b)
        lo, hi = uncertainty.fid_interval(a, b, point, resamples=200, confidence=0.95, seed=0)
        assert lo <= point <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_fid_interval_covers_the_expected_fid_where_resampling_bias_exceeds_the_spread() -> None:
    """At 32 feature dimensions every bootstrap replicate of FID lies above the point value (a
    draw repeats rows, which inflates the covariances' mismatch). The bias-corrected percentile
    interval then saturated to a sliver of the lowest replicates, entirely above the point: it
    held neither the point nor the expected FID at this size in any of 60 simulations. The
    interval must hold the point, cover the expected FID of fresh evaluations of this size in
    most draws, and be about as wide as the spread of those fresh evaluations."""
    rng = np.random.default_rng(11)
    dim, n_real, n_fake = 32, 300, 400
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)

    def draw() -> tuple[np.ndarray, np.ndarray]:
        real = rng.normal(size=(n_real, dim)) @ mix
        return real, (rng.normal(size=(n_fake, dim)) * 1.1 + 0.1) @ mix

    fresh = np.array([metrics.fid(*draw()) for _ in range(60)])
    expected, spread = fresh.mean(), fresh.std(ddof=1)
    covered, widths = 0, []
    for trial in range(20):
        real, fake = draw()
        point = metrics.fid(real, fake)
        lo, hi = uncertainty.fid_interval(
            real, fake, point, resamples=100, confidence=0.95, seed=trial
        )
        assert lo < point < hi, (lo, point, hi)
        covered += lo <= expected <= hi
        widths.append(hi - lo)
    assert covered >= 16, f"covered the expected FID in {covered} of 20"
    assert 0.7 < np.mean(widths) / (2 * 1.96 * spread) < 2.0


def test_protocol_guard_names_the_differing_fields() -> None:
    a = {"extractor": "classifier", "extractor_fp": "abc", "real_samples": 180, "seed": 0}
    b = {**a, "real_samples": 500}
    assert check_comparable("eval/fid", {"r1": a, "r2": dict(a)}) == protocol_id(a)
    assert check_comparable("eval/num_parameters", {"r1": a, "r2": b}) is None  # no protocol
    with pytest.raises(ProtocolMismatch, match=r"real_samples: 180 vs 500") as err:
        check_comparable("eval/fid", {"r1": a, "r2": b}, hint="Use --protocol.")
    assert isinstance(err.value, GenparError) and "Use --protocol." in str(err.value)
    with pytest.raises(ProtocolMismatch, match="no recorded protocol"):
        check_comparable("eval/elbo", {"r1": None, "r2": a})
