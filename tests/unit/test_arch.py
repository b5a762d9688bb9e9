"""model.arch: the residual networks beside the DCGAN-style ones, at every image size up to 128.

Real networks, batch 2, small widths: each family x arch builds, runs forward and backward at
sizes 8, 28, 48, 64 and 128 with 1 and 3 channels, and round-trips through its spec; the
default arch keeps the spec it always had.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from genpar_models.config import ModelConfig, load_config
from genpar_models.errors import ConfigError
from genpar_models.models import check_model_config, get_family
from genpar_models.models.export import build_model, build_model_from_spec
from genpar_models.models.gan.network import DCGAN
from genpar_models.models.layers import ResDown, ResUp
from genpar_models.models.vae.network import VAE

SIZES = [8, 28, 48, 64, 128]
ARCHS = ["dcgan", "resnet"]


def _batch(channels: int, size: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, channels, size, size), generator=gen).float() / 255


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", SIZES)
def test_vae_every_size_and_arch(size: int, channels: int, arch: str) -> None:
    torch.manual_seed(0)
    model = VAE(
        image_shape=(channels, size, size),
        latent_dim=4,
        base_channels=4,
        likelihood="gaussian",
        arch=arch,
    )
    x = _batch(channels, size)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (2, 4)
    assert model.decode(mu).shape == (2, channels, size, size)
    out = model(x)
    model.loss(out, kl_weight=1.0).backward()
    assert all(torch.isfinite(v).all() for v in out.values())
    assert all(p.grad is not None for p in model.parameters())
    assert model.sample(2).shape == model.reconstruct(x).shape == (2, channels, size, size)
    has_blocks = any(isinstance(m, (ResDown, ResUp)) for m in model.modules())
    assert has_blocks == (arch == "resnet")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", SIZES)
def test_dcgan_every_size_and_arch(size: int, channels: int, arch: str) -> None:
    torch.manual_seed(0)
    model = DCGAN(
        image_shape=(channels, size, size),
        latent_dim=4,
        base_channels=4,
        norm="group",
        spectral_norm=True,
        arch=arch,
    )
    fake = model.generator(torch.randn(2, 4))
    assert fake.shape == (2, channels, size, size)
    assert fake.min() >= -1.0 and fake.max() <= 1.0
    logits = model.discriminator(fake)
    assert logits.shape == (2,)
    logits.sum().backward()
    samples = model.sample(2)
    assert samples.shape == (2, channels, size, size)
    assert samples.min() >= 0.0 and samples.max() <= 1.0


def test_resnet_blocks_have_a_1x1_skip_only_where_channels_change() -> None:
    same, wider = (
        ResUp(8, 8, norm="group", activation=nn.ReLU),
        ResDown(4, 8, norm="none", activation=nn.ReLU),
    )
    assert not any(isinstance(m, nn.Conv2d) for m in same.skip)
    assert [m.kernel_size for m in wider.skip if isinstance(m, nn.Conv2d)] == [(1, 1)]
    assert same(torch.randn(2, 8, 4, 4)).shape == (2, 8, 8, 8)
    assert wider(torch.randn(2, 4, 8, 8)).shape == (2, 8, 4, 4)
    # A 3x3 residual path, no stride-2 4x4 convs.
    kernels = {m.kernel_size for m in wider.residual if isinstance(m, nn.Conv2d)}
    assert kernels == {(3, 3)}


def test_resnet_discriminator_is_spectrally_normalised_and_generator_takes_model_norm() -> None:
    model = DCGAN(
        image_shape=(3, 32, 32), latent_dim=4, base_channels=4, norm="batch",
        spectral_norm=True, arch="resnet",
    )  # fmt: skip
    convs = [m for m in model.discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.discriminator.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.generator.modules())
    plain = DCGAN(
        image_shape=(3, 32, 32), latent_dim=4, base_channels=4, norm="pixel",
        spectral_norm=False, arch="resnet",
    )  # fmt: skip
    assert not any(hasattr(m, "parametrizations") for m in plain.discriminator.modules())


@pytest.mark.parametrize("name", ["vae", "dcgan"])
def test_spec_names_arch_only_when_not_the_default(name: str) -> None:
    default = build_model(ModelConfig(name=name, latent_dim=4, base_channels=4), (1, 8, 8))
    assert "arch" not in default.model_spec()
    cfg = ModelConfig(name=name, latent_dim=4, base_channels=4, arch="resnet")
    model = build_model(cfg, (3, 28, 28))
    spec = json.loads(json.dumps(model.model_spec()))
    assert spec["arch"] == "resnet"
    rebuilt = build_model_from_spec(spec)
    assert rebuilt.model_spec() == spec
    rebuilt.load_state_dict(model.state_dict())  # the same parameters, name for name


@pytest.mark.parametrize("name", ["vae", "dcgan"])
def test_conditional_resnet(name: str) -> None:
    cfg = ModelConfig(name=name, latent_dim=4, base_channels=4, arch="resnet", conditional=True)
    model = get_family(name).build(cfg, (1, 28, 28), num_classes=3)
    labels = torch.tensor([0, 2])
    assert model.sample(2, labels=labels).shape == (2, 1, 28, 28)
    if name == "dcgan":
        fake = model.generator(torch.randn(2, 4), labels)
        other = model.discriminator(fake, torch.tensor([1, 1]))
        assert not torch.equal(model.discriminator(fake, labels), other)
    else:
        out = model(_batch(1, 28), labels=labels)
        assert out["elbo"].shape == (2,)


def test_arch_is_refused_where_it_is_not_read_and_sizes_are_checked() -> None:
    with pytest.raises(ConfigError, match="model.arch"):
        check_model_config(ModelConfig(name="rvae", arch="resnet"))
    with pytest.raises(ValueError, match="arch must be one of"):
        VAE(image_shape=(1, 8, 8), latent_dim=4, base_channels=4, arch="unet")  # type: ignore[arg-type]
    base = load_config("configs/tiny.yaml")
    for size in (28, 48, 128):
        data = base.data.model_validate({**base.data.model_dump(), "image_size": size})
        assert data.image_size == size
    for bad in (130, 256, 27):
        with pytest.raises(ValueError, match="even number from 8 to 128"):
            base.data.model_validate({**base.data.model_dump(), "image_size": bad})


@pytest.mark.parametrize(
    ("name", "train"),
    [
        ("vae", {"lr": 3e-3}),
        ("dcgan", {"lr": 2e-3, "r1_gamma": 1.0}),  # hinge, R1 through the residual D
        ("dcgan", {"lr": 1e-3, "n_critic": 2}),
    ],
)
def test_resnet_models_train_with_their_familys_steps(name: str, train: dict) -> None:
    """A few real optimizer steps of each family's steps on a resnet network: finite losses,
    every parameter moved (the skips and the residual paths both get gradients)."""
    from genpar_models.config import TrainConfig
    from tests.helpers import family_steps

    torch.manual_seed(0)
    cfg = ModelConfig(name=name, latent_dim=4, base_channels=4, arch="resnet")
    model = build_model(cfg, (3, 16, 16))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    tcfg = TrainConfig(**train)
    steps = family_steps(model, tcfg)
    if name == "dcgan":
        assert model.gan_loss == "hinge"
    rows = 8 * getattr(steps, "batches_per_step", 1)
    x = torch.rand(rows, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x = x if name == "vae" else 2 * x - 1
    for _ in range(3):
        metrics = steps.step(x, torch.Generator().manual_seed(0))
    assert metrics and all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values())
    unmoved = [k for k, v in model.named_parameters() if torch.equal(v, before[k])]
    assert not unmoved


@pytest.mark.parametrize("variant", ["bf16", "int8", "prune50"])
@pytest.mark.parametrize("name", ["vae", "dcgan"])
def test_compressed_variants_of_resnet_models_sample(name: str, variant: str) -> None:
    from genpar_models.infer import compress

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(name=name, latent_dim=4, base_channels=4, arch="resnet"), (3, 28, 28)
    ).eval()
    out = compress.build_variant(model, variant)
    x = out.sample(4, generator=torch.Generator().manual_seed(1))
    ref = model.sample(4, generator=torch.Generator().manual_seed(1))
    assert x.shape == ref.shape == (4, 3, 28, 28) and torch.isfinite(x).all()
    # Tolerances as test_compress's: pruning an untrained network without fine-tuning moves
    # its samples freely, so prune50 is checked for shape and sparsity only.
    assert float((x - ref).abs().mean()) < {"bf16": 0.02, "int8": 0.05}.get(variant, 1.0)
    if variant == "prune50":
        net = getattr(out, compress.sampling_net_name(out))
        weights = [m.weight for m, _ in compress.prunable(net)]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert zeros == pytest.approx(0.5, abs=0.01)
