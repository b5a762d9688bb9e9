"""The sequence scorecard's parts against reference computations on tiny data: TimeGAN's
discriminative and predictive scores, the recurrent feature space, per-step likelihood, plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genpar_models.data.sources.series import sine_series
from genpar_models.eval import sequence_metrics as sm


def _sines(n: int, seed: int, steps: int = 12, channels: int = 3) -> np.ndarray:
    return np.stack([sine_series(seed, i, steps, channels) for i in range(n)]).astype(np.float32)


def test_discriminative_score_tells_apart_what_differs_and_not_what_does_not() -> None:
    real, same = _sines(100, 0), _sines(100, 1)
    flat = np.zeros_like(real)  # constant series below the sines' range [0.5, 1]
    apart = sm.discriminative_score(real, flat, steps=400, seed=0)
    alike = sm.discriminative_score(real, same, steps=400, seed=0)
    assert apart.value > 0.4 and alike.value < 0.15
    # the score is |accuracy - 0.5| of the held-out 20%: recomputed from its outcomes
    assert len(apart.outcomes) == 40
    assert apart.value == pytest.approx(abs(apart.outcomes.mean() - 0.5))
    lo, hi = sm.mean_interval(
        alike, resamples=200, confidence=0.9, seed=0, transform=lambda a: abs(a - 0.5)
    )
    assert lo <= alike.value <= hi


def test_predictive_mae_against_a_reference_predictor() -> None:
    real = _sines(150, 0)
    # a predictor trained on all-zero series predicts ~0: its MAE on real series is the mean
    # absolute value of the predicted channel at steps 1..T-1, averaged per series
    zeros = np.zeros_like(real)
    score = sm.predictive_mae(zeros, real, steps=300, seed=0)
    reference = np.abs(real[:, 1:, -1]).mean(axis=1).mean()
    assert score.value == pytest.approx(reference, abs=0.03)
    # trained on real series it does far better than that
    assert sm.predictive_mae(real, real, steps=300, seed=0).value < 0.5 * reference


def test_predictive_mae_counts_only_steps_inside_each_length() -> None:
    real = _sines(60, 0)
    padded = real.copy()
    padded[:, 8:] = np.nan
    short = sm.predictive_mae(real, padded, steps=50, seed=0)
    cut = sm.predictive_mae(real, real[:, :8], steps=50, seed=0)
    assert short.value == pytest.approx(cut.value, rel=1e-5)


def test_encoder_features_ignore_padding_and_fid_of_a_set_with_itself_is_zero() -> None:
    from genpar_models.eval import metrics

    train = _sines(80, 0)
    enc, summary = sm.train_sequence_encoder(train, hidden=6, steps=30, seed=0)
    assert np.isfinite(summary["next_step_mse"])
    x = _sines(40, 2)
    padded = np.concatenate([x, np.full((40, 4, 3), np.nan, np.float32)], axis=1)
    np.testing.assert_allclose(enc.features(x), enc.features(padded), atol=1e-6)
    f = enc.features(x)
    assert f.shape == (40, 12)
    assert metrics.fid(f, f) == pytest.approx(0.0, abs=1e-6)
    assert metrics.fid(f, enc.features(np.full_like(x, 0.5))) > 0.01


def test_sequence_likelihood_per_step_and_plots(tmp_path: Path, tiny) -> None:
    import logging

    from genpar_models.config import DataConfig, EvaluateConfig
    from genpar_models.data.preprocess import build_shard_set, process_partition
    from genpar_models.data.shards import open_shard_set
    from genpar_models.eval.plots import plot_series_embedding, plot_series_pairs
    from genpar_models.eval.sequence_scorecard import sequence_likelihood
    from genpar_models.models.registry import get_family

    x = _sines(40, 0)
    x[::3, 9:] = np.nan  # variable length
    np.save(tmp_path / "x.npy", x)
    cfg = DataConfig(
        modality="sequences",
        source="array",
        path=str(tmp_path / "x.npy"),
        val_fraction=0.2,
        test_fraction=0.25,
    )
    built = build_shard_set(
        cfg,
        tmp_path / "shards",
        lambda specs, st: [process_partition(s, cfg, st) for s in specs],
        logging.getLogger("t"),
    )
    shardset = open_shard_set(built)
    family = get_family("rvae")
    from genpar_models.config import ModelConfig

    torch.manual_seed(0)
    model = family.build(ModelConfig(name="rvae", latent_dim=2, hidden_dim=8), (12, 3)).eval()
    out, protocol = sequence_likelihood(model, family, shardset, EvaluateConfig(iw_samples=4), 3)
    test = shardset.load("test")[0]
    steps = (~np.isnan(test[..., 0])).sum()
    assert out["eval/elbo_per_step"] == pytest.approx(out["eval/elbo"] * len(test) / steps)
    assert out["eval/iw_bound_per_step"] == pytest.approx(out["eval/iw_bound"] * len(test) / steps)
    assert protocol["test_samples"] == len(test)
    # reference: the model's own per-series ELBO, one block with the evaluation's seed stream
    from genpar_models.util import seeding

    gen = torch.Generator().manual_seed(seeding.chunk(3, 0))
    direct = model(torch.from_numpy(test), generator=gen)["elbo"].double().mean().item()
    assert out["eval/elbo"] == pytest.approx(direct, rel=1e-6)
    plot_series_pairs(x, x, tmp_path / "p" / "pairs.png")
    plot_series_embedding(x, x[::-1], tmp_path / "p" / "pca.png", seed=0)
    assert (tmp_path / "p" / "pairs.png").stat().st_size > 1000
    assert (tmp_path / "p" / "pca.png").read_bytes()[:4] == b"\x89PNG"
