"""The scorecard on real data (scikit-learn's digits): extractor, cache, protocols, invariances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from genpar_models.config import PipelineConfig
from genpar_models.data.shards import open_shard_set
from genpar_models.errors import ConfigError
from genpar_models.eval import features, metrics
from genpar_models.eval.protocol import LIKELIHOOD, QUALITY
from genpar_models.eval.scorecard import evaluate_model, prepare
from genpar_models.models.export import build_model, export_model
from tests.helpers import make_shard_set

FAST = {
    "extractor_steps": 100,
    "num_samples": 300,
    "bootstrap": 40,
    "iw_samples": 4,
}


def _cfg(tiny: PipelineConfig, **evaluate) -> PipelineConfig:
    return tiny.model_copy(
        update={"evaluate": tiny.evaluate.model_copy(update={**FAST, **evaluate})}
    )


@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from genpar_models.config import load_config
    from tests.conftest import TINY

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    root = tmp_path_factory.mktemp("digits") / "shards"
    return make_shard_set(root, load_config(TINY), images=images, labels=digits.target)


@pytest.fixture(scope="module")
def warm_root(digits_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An evaluation cache holding the digits extractor (trained once for this module)."""
    from genpar_models.config import load_config
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("eval-cache")
    prepare(digits_shards, _cfg(load_config(TINY)).evaluate, root=root)
    return root


def _export(model: torch.nn.Module, directory: Path) -> Path:
    export_model(directory, module=model, spec=model.model_spec(), meta={"step": 0})
    return directory


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from genpar_models.config import load_config
    from tests.conftest import TINY

    torch.manual_seed(0)
    model = build_model(load_config(TINY).model, (1, 8, 8))
    return _export(model, tmp_path_factory.mktemp("vae") / "model")


def test_real_vs_real_fid_is_far_below_noise_vs_real(
    digits_shards: Path, tiny: PipelineConfig, warm_root: Path
) -> None:
    extractor, ref = prepare(digits_shards, _cfg(tiny).evaluate, root=warm_root)
    assert extractor.kind == "classifier" and extractor.summary["val_accuracy"] > 0.8
    net, _ = features.load_extractor(extractor.directory)
    noise = np.random.default_rng(0).integers(0, 256, (300, 1, 8, 8), dtype=np.uint8)
    noise_feats, _ = features.extract(net, noise, batch_size=64)
    real_vs_real = metrics.fid(ref.features, ref.floor_features)
    assert real_vs_real * 10 < metrics.fid(ref.features, noise_feats)


def test_scorecard_cache_hits_and_batch_size_independence(
    digits_shards: Path, vae_dir: Path, tiny: PipelineConfig, tmp_path: Path
) -> None:
    cfg = _cfg(tiny, extractor_steps=20)  # a fresh cache: the extractor is trained here
    first = evaluate_model(vae_dir, digits_shards, cfg, root=tmp_path)
    assert first["cache"] == {"extractor": "trained", "reference": "computed"}
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    stamps = [p.stat().st_mtime_ns for p in files]

    cfg7 = _cfg(tiny, extractor_steps=20, batch_size=7)
    second = evaluate_model(vae_dir, digits_shards, cfg7, root=tmp_path)
    assert second["cache"] == {"extractor": "cached", "reference": "cached"}
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files
    assert [p.stat().st_mtime_ns for p in files] == stamps  # nothing retrained or rewritten
    assert second["protocol_ids"] == first["protocol_ids"]  # batch size is not protocol
    for key, value in first["metrics"].items():
        if not key.endswith(("seconds", "ms_per_image")):
            assert second["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key

    m = first["metrics"]
    assert m["eval/fid_ci_low"] <= m["eval/fid"] <= m["eval/fid_ci_high"]
    assert 0 <= m["eval/precision"] <= 1 and 0 <= m["eval/coverage"] <= 1
    assert 1 <= m["eval/inception_score"] <= 10
    assert m["eval/iw_bound"] >= m["eval/elbo"] - 0.5
    # tiny's Bernoulli decoder on grey levels is no code length: no bits/dim (see below)
    assert not any(key.endswith("bits_per_dim") for key in m)
    quality = first["protocols"][QUALITY]
    assert quality["extractor_fp"] == first["extractor"]["fingerprint"][:16]
    assert quality["generated_samples"] == 300 and quality["split"] == "test"
    assert first["protocols"][LIKELIHOOD]["iw_samples"] == 4


def test_protocol_follows_what_changes_the_numbers(
    digits_shards: Path, vae_dir: Path, tiny: PipelineConfig, warm_root: Path
) -> None:
    base = evaluate_model(vae_dir, digits_shards, _cfg(tiny), root=warm_root)
    more = evaluate_model(vae_dir, digits_shards, _cfg(tiny, num_samples=400), root=warm_root)
    assert more["protocol_ids"][QUALITY] != base["protocol_ids"][QUALITY]
    assert more["protocol_ids"][LIKELIHOOD] == base["protocol_ids"][LIKELIHOOD]
    assert more["cache"]["extractor"] == "cached"


def test_dcgan_gets_the_quality_scorecard_only(
    digits_shards: Path, tiny: PipelineConfig, tmp_path: Path, warm_root: Path
) -> None:
    cfg = _cfg(tiny)
    gan = build_model(cfg.model.model_copy(update={"name": "dcgan"}), (1, 8, 8))
    report = evaluate_model(_export(gan, tmp_path / "gan"), digits_shards, cfg, root=warm_root)
    assert "eval/fid" in report["metrics"] and "eval/elbo" not in report["metrics"]
    assert set(report["protocols"]) == {QUALITY}


def test_unlabelled_data_gets_an_autoencoder(tiny: PipelineConfig, tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (200, 1, 8, 8), dtype=np.uint8)
    shards = make_shard_set(tmp_path / "s", tiny, images=images, labels=np.full(200, -1))
    cfg = _cfg(tiny, extractor_steps=20)
    extractor, ref = prepare(shards, cfg.evaluate, root=tmp_path / "cache")
    assert extractor.kind == "autoencoder" and ref.logits is None
    with pytest.raises(ConfigError, match="evaluate.extractor=classifier needs a labelled"):
        prepare(shards, _cfg(tiny, extractor="classifier").evaluate, root=tmp_path / "c2")


def test_inception_is_never_downloaded(
    digits_shards: Path, tiny: PipelineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no weights there
    with pytest.raises(ConfigError, match="evaluate.extractor=inception"):
        prepare(digits_shards, _cfg(tiny, extractor="inception").evaluate, root=tmp_path)
    assert not (tmp_path / "torch").exists()


def test_extractor_features_do_not_depend_on_batch_size(digits_shards: Path) -> None:
    shardset = open_shard_set(digits_shards)
    spec = {"kind": "classifier", "image_shape": [1, 8, 8], "feature_dim": 16, "num_classes": 10}
    torch.manual_seed(0)
    net = features.FeatureNet(**spec).eval()
    images = shardset.load("train")[0][:100]
    one, _ = features.extract(net, images, batch_size=1)
    all_, _ = features.extract(net, images, batch_size=100)
    np.testing.assert_allclose(one, all_, rtol=1e-5, atol=1e-6)


def test_cuda_evaluation_is_true_fp32() -> None:
    """The protocols say fp32; PyTorch enables TF32 for cuDNN convolutions by default, so the
    evaluation context turns TF32 off on CUDA (and restores the user's settings)."""
    import torch

    from genpar_models.util.threads import one_thread

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with one_thread("cuda"):
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize(
    ("likelihood", "binarize", "bits"),
    [
        ("bernoulli", "none", False),  # grey levels are not outcomes of a Bernoulli
        ("bernoulli", "static", True),
        ("bernoulli", "dynamic", True),
        ("gaussian", "none", True),  # discretised over the 256 levels: a code length
        ("logistic_mixture", "none", True),
    ],
)
def test_bits_per_dim_is_reported_only_where_it_is_a_code_length(
    likelihood: str, binarize: str, bits: bool
) -> None:
    import torch

    from genpar_models.config import ModelConfig
    from genpar_models.eval.likelihood import likelihood_terms
    from genpar_models.models import get_family

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(name="vae", likelihood=likelihood, latent_dim=4, base_channels=4), (1, 8, 8)
    )
    images = np.random.default_rng(0).integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
    out = likelihood_terms(
        model.eval(), get_family("vae"), images, iw_samples=2, seed=0, binarize=binarize
    )
    assert {"eval/elbo", "eval/recon", "eval/kl", "eval/iw_bound"} <= set(out)
    assert ("eval/bits_per_dim" in out) == bits and ("eval/iw_bits_per_dim" in out) == bits
    if bits:
        assert out["eval/bits_per_dim"] == pytest.approx(-out["eval/elbo"] / (64 * np.log(2)))
        assert out["eval/recon_bits_per_dim"] + out["eval/kl_bits_per_dim"] == pytest.approx(
            out["eval/bits_per_dim"]
        )


def test_a_split_too_small_to_score_is_refused_by_name(tmp_path: Path, tiny: PipelineConfig):
    """Twelve images give one test image: the scorecard says so, naming the shard set, the
    split, its size and the fix, instead of failing inside torchmetrics or prdc."""
    from genpar_models.errors import DataError
    from genpar_models.eval.reference import check_split_sizes

    shardset = open_shard_set(make_shard_set(tmp_path / "shards", tiny, n=12))
    assert shardset.count("test") < tiny.evaluate.nearest_k + 1
    with pytest.raises(DataError, match=r"the test split holds \d image\(s\).*data.test_fraction"):
        check_split_sizes(shardset, tiny.evaluate)
    roomy = open_shard_set(make_shard_set(tmp_path / "roomy", tiny, n=300))
    check_split_sizes(roomy, tiny.evaluate)  # the same config on enough data passes
