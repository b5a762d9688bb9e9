"""Issue 14's GAN recipes on real 2-rank gloo jobs: hinge + spectral norm + EMA with R1,
n_critic, accumulation and warm-up through the torchrun entry point (finite losses, the
exported average and raw weights, exact resume with the EMA), WGAN-GP, and the EMA identical
on both DDP ranks. Tiny images and few steps: the module's runs share one fixture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from genpar_models.config import PipelineConfig, load_config
from genpar_models.train.runspec import RunSpec
from tests.conftest import TINY
from tests.helpers import as_family, launch, make_shard_set

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 12


def recipe(tiny: PipelineConfig, **train: object) -> PipelineConfig:
    """tiny as the hinge + SN + EMA recipe with every training-loop option on."""
    model = as_family(tiny.model, "dcgan").model_copy(update={"ema_decay": 0.9})
    options = {
        "max_steps": STEPS,
        "batch_size_per_rank": 8,
        "lr": 2e-4,
        "adam_beta1": 0.5,
        "n_critic": 2,
        "r1_gamma": 1.0,
        "grad_accum_steps": 2,
        "warmup_steps": 3,
        "checkpoint_every_steps": 6,
        "log_every_steps": 3,
        "val_every_steps": 6,
        **train,
    }
    return tiny.model_copy(update={"model": model, "train": tiny.train.model_copy(update=options)})


def _spec(cfg: PipelineConfig, shards: Path, run_dir: Path) -> RunSpec:
    return RunSpec(config=cfg, shards_dir=str(shards), run_dir=str(run_dir), train_key="k")


def _model_json(spec: RunSpec) -> dict:
    return json.loads((spec.model_dir / "model.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunSpec]:
    """A straight recipe run, the same run stopped at step 6 and resumed, and a WGAN-GP run."""
    tmp, tiny = tmp_path_factory.mktemp("gan"), load_config(TINY)
    cfg = recipe(tiny)
    shards = make_shard_set(tmp / "shards", cfg, n=300)
    straight = _spec(cfg, shards, tmp / "straight")
    launch(straight)
    resumed = _spec(recipe(tiny, max_steps=6), shards, tmp / "resumed")
    launch(resumed)
    resumed = _spec(cfg, shards, tmp / "resumed")
    launch(resumed)
    wgan = recipe(tiny, max_steps=6, r1_gamma=0.0, grad_accum_steps=1)
    # WGAN-GP's critic without spectral norm (the penalty constrains it) and without EMA
    critic = {"gan_loss": "wgan_gp", "norm": "none", "spectral_norm": False, "ema_decay": None}
    wgan = wgan.model_copy(update={"model": wgan.model.model_copy(update=critic)})
    wgan_spec = _spec(wgan, shards, tmp / "wgan")
    launch(wgan_spec)
    return {"straight": straight, "resumed": resumed, "wgan": wgan_spec}


def test_the_recipe_trains_with_finite_losses_and_exports_the_average(runs) -> None:
    result = json.loads(runs["straight"].result_path.read_text())
    metrics = result["metrics"]
    for key in ("train/loss_d", "train/loss_g", "train/r1_penalty", "val/d_real"):
        assert math.isfinite(metrics[key]), key
    assert metrics["train/lr_factor"] == 1.0  # past the warm-up, constant
    assert result["global_batch_size"] == 8 * 2 * 2  # batch x ranks x accumulation
    meta = _model_json(runs["straight"])
    assert set(meta["variants"]) == {"raw"}
    assert meta["variants"]["raw"]["sha256"] != meta["sha256"]  # the average is not the last step


def test_a_resumed_run_with_ema_ends_bit_for_bit_like_a_straight_one(runs) -> None:
    result = json.loads(runs["resumed"].result_path.read_text())
    assert result["resumed_from_step"] == 6 and result["step"] == STEPS
    straight, resumed = _model_json(runs["straight"]), _model_json(runs["resumed"])
    assert resumed["sha256"] == straight["sha256"]  # the average, checkpointed as "ema"
    assert resumed["variants"]["raw"]["sha256"] == straight["variants"]["raw"]["sha256"]


def test_wgan_gp_trains_with_a_finite_gradient_penalty(runs) -> None:
    metrics = json.loads(runs["wgan"].result_path.read_text())["metrics"]
    assert (
        math.isfinite(metrics["train/gradient_penalty"]) and metrics["train/gradient_penalty"] > 0
    )
    assert math.isfinite(metrics["train/loss_d"]) and math.isfinite(metrics["train/loss_g"])
    assert "variants" not in _model_json(runs["wgan"])  # no EMA, nothing beside the model


def ema_rank(rank: int, world: int, init_file: str, out: str) -> None:
    """One DDP rank of a spawn job: 5 steps of the recipe on this rank's own data and noise,
    through the trainer (EMA after each optimizer step); saves the average and raw weights."""
    import torch.distributed as tdist

    from genpar_models.config import ModelConfig, TrainConfig
    from genpar_models.models import get_family
    from genpar_models.models.export import build_model
    from genpar_models.train.dist import DistContext
    from genpar_models.train.tools import step_tools
    from genpar_models.train.trainer import make_trainer

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = PipelineConfig(
            model=ModelConfig(name="dcgan", latent_dim=4, base_channels=8, ema_decay=0.9),
            train=TrainConfig(n_critic=2, grad_accum_steps=2, r1_gamma=1.0),
        )
        torch.manual_seed(0)
        model = build_model(cfg.model, (1, 8, 8))
        ctx = DistContext(rank=rank, local_rank=rank, world_size=world, device=torch.device("cpu"))
        family = get_family("dcgan")
        steps = family.make_steps(model, cfg.train, step_tools(ctx, cfg.train))
        trainer = make_trainer(model, family, steps, cfg)
        steps.wrap()
        data = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
        for step in range(1, 6):
            x = torch.rand(trainer.rows_per_step, 1, 8, 8, generator=data) * 2 - 1
            trainer.step(step, x, torch.Generator().manual_seed(1000 * rank + step))
        torch.save(
            {"ema": trainer.ema.module.state_dict(), "raw": model.generator.state_dict()},
            f"{out}.{rank}",
        )
    finally:
        tdist.destroy_process_group()


def test_the_ema_is_identical_on_every_rank(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    out = str(tmp_path / "ema")
    mp.spawn(ema_rank, args=(2, str(tmp_path / "init"), out), nprocs=2)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    for kind in ("ema", "raw"):
        a, b = ranks[0][kind], ranks[1][kind]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kind
    ema, raw = ranks[0]["ema"], ranks[0]["raw"]
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # an average, not a copy
