"""The maths of issue 14's GAN recipes and training loop, against reference computations.

Gradient penalty and R1 against per-sample torch.autograd on a toy discriminator (values and
the gradients they give the weights), spectral norm's largest singular value, the EMA formula
with its warm-up, the losses on known logits, the learning-rate schedule, gradient
accumulation against one big batch, n_critic, exported variants and fp16's refusal on CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from genpar_models.config import ModelConfig, PipelineConfig, TrainConfig, load_config
from genpar_models.errors import CheckpointError, ConfigError
from genpar_models.models.export import build_model, export_model, load_model, variants_of
from genpar_models.models.gan import losses
from genpar_models.train.dist import DistContext
from genpar_models.train.ema import EmaWeights, effective_decay
from genpar_models.train.schedule import LrSchedule, lr_factor
from genpar_models.train.tools import step_tools
from tests.conftest import REPO
from tests.helpers import CPU, family_steps


def toy_discriminator() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 1), nn.Flatten(0))


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 2, 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def per_sample_input_grads(d: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The reference: d D(x_i) / d x_i one sample at a time, kept in the graph."""
    out = []
    for xi in x:
        xi = xi.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(d(xi[None]).sum(), xi, create_graph=True)
        out.append(g.flatten())
    return out


def weight_grads(d: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    # the last bias moves no input gradient: its gradient is zero, not missing
    return list(torch.autograd.grad(loss, list(d.parameters()), materialize_grads=True))


def test_gradient_penalty_matches_per_sample_autograd_and_its_weight_gradient() -> None:
    d, real, fake = toy_discriminator(), images(5, 1), images(5, 2)
    mixed = losses.interpolates(real, fake, torch.Generator().manual_seed(3))
    eps = torch.rand(5, 1, 1, 1, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(mixed, eps * real + (1 - eps) * fake)
    gp = losses.gradient_penalty(d(mixed), mixed)
    reference = torch.stack([(g.norm() - 1) ** 2 for g in per_sample_input_grads(d, mixed)]).mean()
    assert torch.allclose(gp, reference, rtol=1e-6, atol=1e-7)
    for mine, ref in zip(weight_grads(d, gp), weight_grads(d, reference), strict=True):
        assert torch.allclose(mine, ref, rtol=1e-5, atol=1e-7)


def test_r1_penalty_matches_per_sample_autograd_and_its_weight_gradient() -> None:
    d, real = toy_discriminator(), images(6, 4).requires_grad_(True)
    r1 = losses.r1_penalty(d(real), real)
    reference = torch.stack([g.pow(2).sum() for g in per_sample_input_grads(d, real)]).mean()
    assert torch.allclose(r1, reference, rtol=1e-6, atol=1e-8)
    for mine, ref in zip(weight_grads(d, r1), weight_grads(d, reference), strict=True):
        assert torch.allclose(mine, ref, rtol=1e-5, atol=1e-8)


def test_losses_on_known_logits() -> None:
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 1.5])
    # hinge: mean(relu(1 - r)) + mean(relu(1 + f)) = (0 + .5 + 2)/3 + (0 + 1 + 2.5)/3 = 2
    assert losses.discriminator_loss(real, fake, "hinge").item() == pytest.approx(2.0)
    assert losses.generator_loss(fake, "hinge").item() == pytest.approx(0.5)  # -mean(f)
    # the critic: mean(f) - mean(r) = -0.5 - 0.5
    assert losses.discriminator_loss(real, fake, "wgan_gp").item() == pytest.approx(-1.0)
    assert losses.generator_loss(fake, "wgan_gp").item() == pytest.approx(0.5)
    softplus = torch.nn.functional.softplus
    bce = softplus(-real).mean() + softplus(fake).mean()
    assert losses.discriminator_loss(real, fake, "bce").item() == pytest.approx(bce.item())
    assert losses.generator_loss(fake, "bce").item() == pytest.approx(softplus(-fake).mean())
    with pytest.raises(ValueError, match="model.gan_loss"):
        losses.discriminator_loss(real, fake, "lsgan")


def test_spectral_norm_holds_each_discriminator_layer_at_unit_singular_value_in_training() -> None:
    """After hinge updates have moved the weights (test_models checks the initial network),
    every layer's weight as spectral norm reshapes it (out, in*k*k) still has its largest
    singular value at 1: the power iteration follows the updates."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="dcgan", latent_dim=4, base_channels=8), (1, 16, 16))
    steps = family_steps(model, TrainConfig(lr=5e-3))
    for _ in range(10):
        steps.step(torch.rand(8, 1, 16, 16) * 2 - 1, torch.Generator().manual_seed(0))
    d = model.discriminator.train()
    with torch.no_grad():
        for _ in range(30):
            d(torch.rand(4, 1, 16, 16) * 2 - 1)
    layers = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(hasattr(m, "parametrizations") for m in layers)
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.02), m
        raw = m.parametrizations.weight.original.detach().flatten(1)
        assert torch.linalg.matrix_norm(raw, ord=2).item() != pytest.approx(1.0, abs=0.02)


def test_ema_follows_its_formula_with_the_warm_up() -> None:
    assert effective_decay(0.999, 1) == pytest.approx(2 / 11)
    assert effective_decay(0.999, 100) == pytest.approx(101 / 110)
    assert effective_decay(0.9, 1000) == 0.9
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    ema = EmaWeights(net, 0.95)
    expected = [p.detach().clone() for p in net.parameters()]
    for step in range(1, 30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        d = ema.update(step)
        assert d == min(0.95, (1 + step) / (10 + step))
        expected = [
            d * e + (1 - d) * p.detach() for e, p in zip(expected, net.parameters(), strict=True)
        ]
    for mine, ref in zip(ema.module.parameters(), expected, strict=True):
        assert torch.allclose(mine, ref, rtol=1e-6, atol=1e-7)
        assert not mine.requires_grad


def test_lr_schedule_warms_up_linearly_then_follows_the_cosine() -> None:
    kw = {"schedule": "cosine", "warmup_steps": 10, "max_steps": 110}
    assert [lr_factor(s, **kw) for s in (1, 5, 10)] == [0.1, 0.5, 1.0]
    assert lr_factor(60, **kw) == pytest.approx(0.5)  # halfway through the decay
    assert lr_factor(110, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(35, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_factor(7, schedule="constant", warmup_steps=0, max_steps=10) == 1.0
    opt = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=0.01)
    schedule = LrSchedule({"x": opt}, **kw)
    # a restored checkpoint replaces the groups (with the rate it was saved at)
    opt.load_state_dict({**opt.state_dict(), "param_groups": [{**opt.param_groups[0], "lr": 7.0}]})
    schedule.set(5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)


def _tiny_gan(**model: object) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(name="dcgan", latent_dim=4, base_channels=8, **model)
    return build_model(cfg, (1, 8, 8))


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("gan_loss", ["bce", "hinge"])
def test_gradient_accumulation_gives_the_gradients_of_one_big_batch(gan_loss: str) -> None:
    """Both players' gradients of one step on 8 images equal those of 2 micro-batches of 4
    (a network without batch statistics or power iterations, so micro-batches see the same
    function: group norm, no spectral norm)."""
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    grads = []
    for accum in (1, 2):
        model = _tiny_gan(norm="group", spectral_norm=False, gan_loss=gan_loss)
        steps = family_steps(model, TrainConfig(grad_accum_steps=accum))
        steps.step(x, torch.Generator().manual_seed(0))
        grads.append(_grads(model))
    for one, two in zip(*grads, strict=True):
        assert torch.allclose(one, two, rtol=1e-4, atol=1e-6)


def test_n_critic_updates_the_discriminator_n_times_per_generator_update() -> None:
    model = _tiny_gan(gan_loss="wgan_gp")
    steps = family_steps(model, TrainConfig(n_critic=3, r1_gamma=1.0))
    assert steps.batches_per_step == 3
    x = torch.rand(12, 1, 8, 8) * 2 - 1  # 3 critic batches of 4
    for _ in range(2):
        metrics = steps.step(x, torch.Generator().manual_seed(0))
    assert all(math.isfinite(v.item()) for v in metrics.values())
    assert {"train/gradient_penalty", "train/r1_penalty"} <= set(metrics)

    def updates(name: str) -> int:
        opt = steps.optimizers[name]
        return int(opt.state[opt.param_groups[0]["params"][0]]["step"].item())

    assert (updates("discriminator"), updates("generator")) == (6, 2)


def test_variants_are_exported_beside_the_model_and_load_by_name(tmp_path: Path) -> None:
    model = _tiny_gan()
    raw = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    export_model(
        tmp_path, state=model.state_dict(), variants={"raw": raw}, spec=model.model_spec(), meta={}
    )
    loaded, meta = load_model(tmp_path, variant="raw")
    assert variants_of(meta) == ["raw"]
    assert torch.equal(
        loaded.state_dict()["generator.project.weight"], raw["generator.project.weight"]
    )
    with pytest.raises(CheckpointError, match="no variant 'ema'"):
        load_model(tmp_path, variant="ema")
    (tmp_path / "raw.safetensors").write_bytes(b"broken")
    with pytest.raises(CheckpointError, match="raw.safetensors"):
        load_model(tmp_path, variant="raw")


def test_fp16_is_refused_without_cuda_naming_the_field() -> None:
    with pytest.raises(ValueError, match="train.precision=fp16 needs CUDA"):
        PipelineConfig.model_validate(
            {"train": {"precision": "fp16"}, "compute": {"device": "cpu"}}
        )
    with pytest.raises(ConfigError, match="train.precision=fp16 needs CUDA"):
        step_tools(CPU, TrainConfig(precision="fp16"))
    with pytest.raises(ValueError, match="gradient penalties"):
        PipelineConfig.model_validate(
            {"model": {"name": "dcgan", "gan_loss": "wgan_gp"}, "train": {"precision": "fp16"}}
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_trains_a_gan_with_a_gradient_scaler_on_cuda() -> None:
    cuda = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cuda"))
    model = _tiny_gan().cuda()
    cfg = TrainConfig(precision="fp16", grad_accum_steps=2)
    steps = family_steps(model, cfg, cuda)
    x = torch.rand(8, 1, 8, 8, device="cuda") * 2 - 1
    before = [p.detach().clone() for p in model.generator.parameters()]
    for _ in range(5):
        metrics = steps.step(x, torch.Generator().manual_seed(0))
    assert all(math.isfinite(v.item()) for v in metrics.values())
    after = list(model.generator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert steps.tools.update is not None


def test_old_dcgan_configs_keep_bce_and_new_ones_default_to_hinge() -> None:
    old = PipelineConfig.model_validate({"version": 3, "model": {"name": "dcgan"}})
    assert (old.model.gan_loss, old.model.ema_decay, old.train.n_critic) == ("bce", None, 1)
    assert old.model.norm == "group"  # v3 already had today's norm default
    new = PipelineConfig.model_validate({"model": {"name": "dcgan"}})
    assert new.model.gan_loss == "hinge"
    stored = load_config(REPO / "tests" / "fixtures" / "v1" / "model-dcgan" / "config.yaml")
    assert (stored.model.gan_loss, stored.model.ema_decay) == ("bce", None)  # a 0.1 run's
    vae = PipelineConfig.model_validate({"version": 3, "model": {"name": "vae"}})
    assert vae.model == ModelConfig()
    tiny = TrainConfig()
    assert (tiny.lr_schedule, tiny.warmup_steps, tiny.grad_accum_steps) == ("constant", 0, 1)
    with pytest.raises(ValueError, match="train.warmup_steps"):
        TrainConfig(max_steps=10, warmup_steps=10)
