"""Issue 14's conditional generation through the real pipeline: a conditional hinge + SN + EMA
GAN on tiny's digits, trained on 2 gloo ranks by torchrun, scored (intra-class FID, CAS) and
sampled (class rows) in one Prefect flow with MLflow; then `genpar generate --label 3` from the
logged run. One pipeline run serves every assertion (CI time)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from flows.pipeline import pipeline
from genpar_models.config import PipelineConfig
from genpar_models.errors import ConfigError
from genpar_models.infer.sampling import GRID_MIN_WIDTH_PX
from genpar_models.models.export import load_model
from genpar_models.util.paths import default_tracking_uri
from tests.helpers import as_family

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _labels(directory: Path) -> tuple[dict, np.ndarray]:
    info = json.loads((directory / "samples.json").read_text())
    return info, np.concatenate([np.load(directory / c["labels_file"]) for c in info["chunks"]])


def test_conditional_gan_pipeline_then_generate_one_class(
    prefect_server, tracked_home: Path, tiny: PipelineConfig, tmp_path: Path
) -> None:
    model = as_family(tiny.model, "dcgan").model_copy(
        update={"ema_decay": 0.9, "conditional": True}
    )
    cfg = tiny.model_copy(
        update={
            "name": "tiny-cgan",
            "model": model,
            "train": tiny.train.model_copy(update={"max_steps": 10, "lr": 2e-4}),
            "generate": tiny.generate.model_copy(update={"grid_rows": 4}),
        }
    )
    assert cfg.compute.cpu_procs == 2  # DDP: two ranks
    summary = pipeline(cfg)
    client = MlflowClient(default_tracking_uri())
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["genpar.world_size"] == "2"
    m = run.data.metrics
    for key in ("train/loss_d", "train/loss_g", "val/d_real", "eval/fid", "eval/fid_raw"):
        assert np.isfinite(m[key]), key
    # the conditional scorecard: intra-class FID per class and its mean, CAS beside its reference
    per_class = {k: v for k, v in m.items() if k.startswith("eval/intra_fid/")}
    assert set(per_class) == {f"eval/intra_fid/{k}" for k in range(10)}
    assert m["eval/intra_fid_mean"] == pytest.approx(np.mean(list(per_class.values())))
    assert 0.0 <= m["eval/cas"] <= 1.0 and 0.5 < m["eval/cas_real_reference"] <= 1.0
    assert m["eval/cas_ratio"] == pytest.approx(m["eval/cas"] / m["eval/cas_real_reference"])
    protocol = json.loads(run.data.tags["genpar.protocol.conditional.json"])
    assert protocol["num_classes"] == 10 and protocol["cas_train_samples"] == 200
    # the stored spec rebuilds a conditional network
    run_dir = Path(summary["run_dir"])
    net, meta = load_model(run_dir / "model")
    assert meta["model_spec"]["conditional"] is True and net.num_classes == 10
    # the pipeline's samples: balanced labels beside them, one grid row per class
    info, labels = _labels(run_dir / "samples")
    assert info["labels"] == "balanced" and info["num_classes"] == 10
    assert np.array_equal(labels, np.arange(64) % 10)
    grid = Image.open(run_dir / "samples" / "grid.png")
    scale = grid.width // (4 * 9 + 1)
    assert grid.width >= GRID_MIN_WIDTH_PX and grid.height == (10 * 9 + 1) * scale
    # genpar generate --label 3 from the logged run: threes only, the labels recorded
    from flows.cli import app

    out = tmp_path / "threes"
    args = ["generate", "--model", summary["run_id"], "--n", "20", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--label", "3"])
    assert result.exit_code == 0, result.output
    info, labels = _labels(out)
    assert info["labels"] == 3 and (labels == 3).all() and len(labels) == 20
    assert sum(np.load(out / c["file"]).shape[0] for c in info["chunks"]) == 20
    # a class out of range is refused, naming the option and the classes, before any sample
    bad = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "bad"), "--label", "10"])
    assert bad.exit_code == 1
    assert "--label (generate.label) 10: out of range" in bad.output and "0..9" in bad.output
    assert not (tmp_path / "bad").exists()


def test_conditional_gan_under_fsdp_logs_the_same_losses_as_ddp(
    tmp_path: Path, tiny: PipelineConfig
) -> None:
    """2 gloo ranks each: FSDP2 shards the generator (its label embedding), the projection
    discriminator and the moving average, and trains them to the same losses as DDP."""
    from genpar_models.train.runspec import RunSpec
    from tests.helpers import launch, make_shard_set

    model = as_family(tiny.model, "dcgan").model_copy(
        update={"ema_decay": 0.9, "conditional": True}
    )
    train = tiny.train.model_copy(
        update={"max_steps": 4, "batch_size_per_rank": 8, "checkpoint_every_steps": 4}
    )
    shards = None
    results = {}
    for strategy in ("ddp", "fsdp"):
        compute = tiny.compute.model_copy(update={"strategy": strategy})
        cfg = tiny.model_copy(update={"model": model, "train": train, "compute": compute})
        shards = shards or make_shard_set(tmp_path / "shards", cfg, n=120)
        spec = RunSpec(
            config=cfg, shards_dir=str(shards), run_dir=str(tmp_path / strategy), train_key="k"
        )
        launch(spec)
        results[strategy] = json.loads(spec.result_path.read_text())["metrics"]
        net, meta = load_model(spec.model_dir)
        assert meta["model_spec"]["num_classes"] == 10 and set(meta["variants"]) == {"raw"}
    for key in ("train/loss_d", "train/loss_g", "val/d_real"):
        assert results["fsdp"][key] == pytest.approx(results["ddp"][key], rel=1e-5), key


def test_a_pipeline_label_the_data_lacks_is_refused_before_training(
    prefect_server, tracked_home: Path, tiny: PipelineConfig
) -> None:
    """generate.label 10 on the digits' classes 0..9: refused by the train task, naming the
    field and the range, before any rank starts (not after training, at generation)."""
    cfg = tiny.model_copy(
        update={
            "model": tiny.model.model_copy(update={"conditional": True}),
            "generate": tiny.generate.model_copy(update={"label": 10}),
        }
    )
    with pytest.raises(ConfigError, match=r"generate.label 10: out of range.*0\.\.9"):
        pipeline(cfg)
    assert not list(tracked_home.rglob("torchrun")), "a rank started for an impossible label"
