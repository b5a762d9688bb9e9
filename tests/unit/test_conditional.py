"""Conditional generation (issue 14): the CVAE and the projection-discriminator GAN, their specs,
their errors, balanced labels, class-row grids, and the maths of intra-class FID and CAS.

Real modules on tiny sizes, CPU only; no mocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genpar_models.config import ModelConfig, TrainConfig
from genpar_models.errors import ConfigError
from genpar_models.eval import features, metrics
from genpar_models.eval.conditional import classifier_accuracy, intra_fid
from genpar_models.infer.sampling import GRID_MIN_WIDTH_PX, make_grid, sample_uint8
from genpar_models.models import conditioning, get_family
from genpar_models.models.export import build_model_from_spec, export_model
from genpar_models.models.gan.network import DCGAN
from genpar_models.models.vae.network import VAE
from tests.helpers import family_steps

SHAPE = (1, 8, 8)
K = 4
SIZES = {"latent_dim": 4, "base_channels": 4}


def _gan(**kw) -> DCGAN:
    torch.manual_seed(0)
    return DCGAN(image_shape=SHAPE, conditional=True, num_classes=K, norm="group", **SIZES, **kw)


def _vae(**kw) -> VAE:
    torch.manual_seed(0)
    return VAE(image_shape=SHAPE, conditional=True, num_classes=K, **SIZES, **kw)


@pytest.mark.parametrize("projection", ["head", "pooled"])
def test_conditional_gan_shapes_and_the_projection_term(projection: str) -> None:
    gan = _gan(spectral_norm=False, projection=projection).eval()
    z, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    x = gan.generator(z, y)
    assert x.shape == (6, *SHAPE)
    d = gan.discriminator
    logits = d(x, y)
    assert logits.shape == (6,)
    # logit(x, y) = linear(phi(x)) + <embed(y), phi(x)> (Miyato & Koyama 2018), phi(x) the
    # flattened features the head reads; "pooled" (specs before 2026-12-04) sums them over pixels
    feats = d.features(x)
    phi = feats.flatten(1) if projection == "head" else feats.sum(dim=(2, 3))
    assert d.embed.weight.shape == (K, phi.shape[1])
    expected = d.to_logit(feats.flatten(1)).squeeze(1)
    torch.testing.assert_close(logits, expected + (d.embed.weight[y] * phi).sum(1))
    # the class changes the logit by exactly <embed(y') - embed(y), phi(x)>
    other = (y + 1) % K
    diff = d(x, other) - logits
    torch.testing.assert_close(diff, ((d.embed.weight[other] - d.embed.weight[y]) * phi).sum(1))
    # the label changes the generator's output
    assert not torch.allclose(gan.generator(z, other), x)
    with pytest.raises(ValueError, match="labels"):
        gan.generator(z)
    with pytest.raises(ValueError, match="labels"):
        d(x)
    with pytest.raises(ValueError, match="projection must be one of"):
        _gan(projection="mean")


def test_a_conditional_spec_written_before_the_projection_was_named_loads() -> None:
    """Registered conditional GANs and checkpoints from before 2026-12-04 name no projection: their
    discriminator projected sum-pooled features; they rebuild so and take their weights."""
    old = _gan(projection="pooled")
    spec = old.model_spec()
    assert spec.pop("projection") == "pooled"
    again = build_model_from_spec(spec)
    again.load_state_dict(old.state_dict(), strict=True)
    assert again.model_spec()["projection"] == "pooled"
    x, y = torch.rand(3, *SHAPE) * 2 - 1, torch.tensor([0, 1, 2])
    torch.testing.assert_close(again.discriminator(x, y), old.discriminator(x, y))
    # a new conditional spec names its projection, the head's features by default
    assert _gan().model_spec()["projection"] == "head"


def test_spectral_norm_covers_the_projection_embedding() -> None:
    gan = _gan(spectral_norm=True)
    assert torch.nn.utils.parametrize.is_parametrized(gan.discriminator.embed, "weight")


def test_cvae_conditions_encoder_and_decoder() -> None:
    vae = _vae(likelihood="bernoulli").eval()
    x = torch.rand(5, *SHAPE)
    y = torch.tensor([0, 1, 2, 3, 0])
    mu_a, _ = vae.encode(x, y)
    mu_b, _ = vae.encode(x, (y + 1) % K)
    assert mu_a.shape == (5, 4) and not torch.allclose(mu_a, mu_b)  # q(z | x, y) sees y
    out = vae(x, generator=torch.Generator().manual_seed(0), labels=y)
    assert set(out) == {"recon", "kl", "elbo"} and out["elbo"].shape == (5,)
    iw = vae.importance_weighted_bound(x, 4, generator=torch.Generator().manual_seed(1), labels=y)
    assert iw.shape == (5,) and torch.isfinite(iw).all()
    z = torch.randn(5, 4)
    assert not torch.allclose(vae.decode(z, y), vae.decode(z, (y + 1) % K))  # p(x | z, y)
    assert vae.reconstruct(x, y).shape == x.shape


@pytest.mark.parametrize("make", [_gan, _vae], ids=["dcgan", "vae"])
def test_spec_round_trips_and_rebuilds_the_same_sampler(make) -> None:
    net = make()
    spec = net.model_spec()
    assert spec["conditional"] is True and spec["num_classes"] == K
    again = build_model_from_spec(json.loads(json.dumps(spec)))
    again.load_state_dict(net.state_dict(), strict=True)
    assert again.model_spec() == spec
    labels = np.array([3, 3, 1, 0])
    a = sample_uint8(net, 4, seed=7, labels=labels)
    b = sample_uint8(again, 4, seed=7, labels=labels)
    assert np.array_equal(a, b)
    # without labels a conditional model samples balanced: sample i of class i mod K
    assert np.array_equal(
        sample_uint8(net, 4, seed=7), sample_uint8(net, 4, seed=7, labels=[0, 1, 2, 3])
    )


@pytest.mark.parametrize("name", ["dcgan", "vae"])
def test_unconditional_specs_are_unchanged(name: str) -> None:
    family = get_family(name)
    net = family.build(ModelConfig(name=name, **SIZES), SHAPE)
    spec = net.model_spec()
    assert "conditional" not in spec and "num_classes" not in spec
    assert conditioning.num_classes_of(net) == 0 and conditioning.num_classes_of(spec) == 0
    with pytest.raises(ValueError, match="unconditional"):
        net.sample(2, generator=torch.Generator(), labels=[0, 1])


def test_conditional_config_needs_labelled_data() -> None:
    cfg = ModelConfig(name="dcgan", conditional=True, **SIZES)
    with pytest.raises(ConfigError, match="model.conditional"):
        get_family("dcgan").build(cfg, SHAPE)  # no number of classes given
    unlabelled = np.full(20, -1)
    with pytest.raises(ConfigError, match=r"model\.conditional: true needs labelled data"):
        conditioning.classes_for_training(cfg, 0, unlabelled, "data.source 'folder'")
    with pytest.raises(ConfigError, match="model.conditional"):
        conditioning.classes_for_training(cfg, 1, np.zeros(20, np.int64), "x")  # one class
    assert conditioning.classes_for_training(cfg, 10, np.arange(20) % 10, "x") == 10
    plain = ModelConfig(name="dcgan", **SIZES)
    assert conditioning.classes_for_training(plain, 0, unlabelled, "x") is None
    with pytest.raises(ValueError, match="num_classes"):
        DCGAN(image_shape=SHAPE, conditional=True, num_classes=1, **SIZES)


def test_label_checks_name_the_option_and_the_range() -> None:
    with pytest.raises(ConfigError, match=r"--label 3: this model is not conditional"):
        conditioning.check_label(0, 3)
    with pytest.raises(ConfigError, match=r"--label 10: out of range.*0\.\.9"):
        conditioning.check_label(10, 10)
    conditioning.check_label(10, 9)
    with pytest.raises(ValueError, match=r"labels must be 2 ints in \[0, 4\)"):
        _gan().sample(2, generator=torch.Generator(), labels=[0, 4])


def test_generate_refuses_labels_the_model_cannot_take(tmp_path: Path) -> None:
    from genpar_models.config import GenerateConfig
    from tasks.generate import check_labels

    for name, net in (("plain", VAE(image_shape=SHAPE, **SIZES)), ("cond", _vae())):
        export_model(tmp_path / name, module=net, spec=net.model_spec(), meta={})
    with pytest.raises(ConfigError, match=r"--label \(generate.label\) 2: this model is not"):
        check_labels(GenerateConfig(label=2), str(tmp_path / "plain"))
    with pytest.raises(ConfigError, match=r"--labels \(generate.balanced_labels\)"):
        check_labels(GenerateConfig(balanced_labels=True), str(tmp_path / "plain"))
    with pytest.raises(ConfigError, match=r"out of range; this model's classes are 0\.\.3"):
        check_labels(GenerateConfig(label=4), str(tmp_path / "cond"))
    assert check_labels(GenerateConfig(label=3), str(tmp_path / "cond")) == K
    assert check_labels(GenerateConfig(), str(tmp_path / "plain")) == 0


def test_balanced_labels_do_not_depend_on_the_chunking() -> None:
    whole = conditioning.sample_labels(10, 0, 95)
    chunks = np.concatenate(
        [conditioning.sample_labels(10, s, min(20, 95 - s)) for s in range(0, 95, 20)]
    )
    assert np.array_equal(whole, chunks) and np.array_equal(whole, np.arange(95) % 10)
    assert (conditioning.sample_labels(10, 40, 5, label=3) == 3).all()


def test_conditional_steps_train_with_labels_and_refuse_without() -> None:
    cfg = TrainConfig(batch_size_per_rank=4, n_critic=2, grad_accum_steps=2)
    for net in (_gan(), _vae()):
        steps = family_steps(net, cfg)
        rows = 8 * getattr(steps, "batches_per_step", 1)
        x = torch.rand(rows, *SHAPE) * 2 - 1 if isinstance(net, DCGAN) else torch.rand(rows, *SHAPE)
        y = torch.arange(rows) % K
        out = steps.step(x, torch.Generator().manual_seed(0), labels=y)
        assert all(torch.isfinite(v).all() for v in out.values())
        assert all(
            torch.isfinite(v).all()
            for v in steps.validate(x[:4], torch.Generator(), labels=y[:4]).values()
        )
        with pytest.raises(ValueError, match="labels"):
            steps.step(x, torch.Generator().manual_seed(0))


def test_class_row_grids_are_at_least_512_px_wide() -> None:
    images = np.zeros((K * 5, 1, 8, 8), np.uint8)
    for k in range(K):
        images[k * 5 : (k + 1) * 5] = 60 * k  # class k's row is grey level 60k
    grid = make_grid(images, rows=K, cols=5)
    assert grid.width >= GRID_MIN_WIDTH_PX
    scale = grid.width // (5 * 9 + 1)  # 1-pixel padding around every 8x8 tile
    assert grid.height == (K * 9 + 1) * scale
    px = np.asarray(grid)
    for k in range(K):  # the centre of the first tile of row k
        assert px[(1 + k * 9 + 4) * scale, (1 + 4) * scale] == 60 * k
    assert make_grid(np.zeros((64, 1, 28, 28), np.uint8), rows=8).width >= GRID_MIN_WIDTH_PX


def test_intra_fid_is_the_fid_of_each_class() -> None:
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(120, 6)), rng.normal(size=(90, 6)) + 0.5
    ry, fy = np.arange(120) % 3, np.arange(90) % 3
    per_class = intra_fid(real, ry, fake, fy, 4)  # class 3 has no rows: left out
    assert set(per_class) == {0, 1, 2}
    for k, v in per_class.items():
        assert v == pytest.approx(metrics.fid(real[ry == k], fake[fy == k]))
    same = intra_fid(real, ry, real, ry, 3)
    assert max(same.values()) < 1e-6  # a class against itself


def test_cas_of_real_images_is_the_reference_classifiers_accuracy() -> None:
    """CAS trained on real train images and tested on real test images is the accuracy of
    the same classifier (recipe, steps, seed) trained on real train images, computed here
    independently from its logits."""
    rng = np.random.default_rng(1)
    y_train, y_test = np.arange(200) % 2, np.arange(60) % 2
    x_train = np.where(y_train[:, None, None, None], 200, 40) + rng.integers(0, 40, (200, *SHAPE))
    x_test = np.where(y_test[:, None, None, None], 200, 40) + rng.integers(0, 40, (60, *SHAPE))
    x_train, x_test = x_train.astype(np.uint8), x_test.astype(np.uint8)
    spec = {"kind": "classifier", "image_shape": list(SHAPE), "feature_dim": 8, "base_channels": 4}
    spec["num_classes"] = 2
    cas = classifier_accuracy((x_train, y_train), (x_test, y_test), spec, steps=30, seed=3)
    net, _ = features.train_extractor((x_train, y_train), (x_test, y_test), spec, steps=30, seed=3)
    _, logits = features.extract(net, x_test, batch_size=16)
    reference = float((logits.argmax(1) == y_test).mean())
    assert cas == pytest.approx(reference, abs=1e-9)
    assert cas > 0.9  # separable classes: the classifier learns them


def test_served_conditional_model_takes_a_label_column() -> None:
    from genpar_models.infer.serving import RequestError, Server, ServingSpec, sample_images

    spec = ServingSpec(chunk_size=3, max_samples_per_request=64, image_shape=SHAPE)
    vae = _vae(likelihood="bernoulli")
    server = Server(vae, get_family("vae"), spec)
    (one, both) = server.predict([{"n": 5, "seed": 2, "label": 1}, {"n": 5, "seed": 2}])
    # balanced over the whole request, not restarted per chunk of 3
    assert one["labels"] == [1] * 5 and both["labels"] == [0, 1, 2, 3, 0]
    assert np.array_equal(np.asarray(one["samples"], np.uint8), sample_images(vae, 5, 2, 3, 1))
    with pytest.raises(RequestError, match=r"row 0: label must be between 0 and 3, got 4"):
        server.predict([{"n": 1, "label": 4}])
    image = np.zeros(SHAPE, np.uint8).tolist()
    with pytest.raises(RequestError, match=r"row 0: missing column 'label'"):
        server.predict([{"image": image}], {"task": "elbo"})
    (terms,) = server.predict([{"image": image, "label": 2}], {"task": "elbo"})
    assert terms["unit"] == "nats" and np.isfinite(terms["elbo"])
    (recon,) = server.predict([{"image": image, "label": 2}], {"task": "reconstruct"})
    assert recon["shape"] == [1, *SHAPE]
    plain = Server(VAE(image_shape=SHAPE, **SIZES), get_family("vae"), spec)
    with pytest.raises(RequestError, match="not conditional"):
        plain.predict([{"n": 1, "label": 0}])


def test_the_pipeline_refuses_conditional_settings_before_work(tmp_path: Path, tiny) -> None:
    from tasks.preflight import check_generate_labels
    from tasks.train import check_labelled
    from tests.helpers import make_shard_set

    cfg = tiny.model_copy(update={"generate": tiny.generate.model_copy(update={"label": 2})})
    with pytest.raises(ConfigError, match=r"generate.label: only a conditional model"):
        check_generate_labels(cfg)
    model = tiny.model.model_copy(update={"conditional": True})
    check_generate_labels(cfg.model_copy(update={"model": model}))
    check_generate_labels(tiny)
    # model.conditional on shards without labels: refused by the train task, before torchrun
    unlabelled = make_shard_set(tmp_path / "u", tiny, n=60, labels=np.full(60, -1))
    conditional = tiny.model_copy(update={"model": model})
    with pytest.raises(ConfigError, match=r"model\.conditional: true needs labelled data"):
        check_labelled(conditional, str(unlabelled))
    labelled = make_shard_set(tmp_path / "l", tiny, n=60)
    assert check_labelled(conditional, str(labelled)) == 10
