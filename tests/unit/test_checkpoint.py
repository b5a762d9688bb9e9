"""Checkpoints: tensors only, hash-checked, newest valid wins, exact resume, no pickles."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from genpar_models.config import PipelineConfig
from genpar_models.errors import CheckpointError
from genpar_models.models.export import build_model, load_exported, load_model
from genpar_models.train import checkpoint
from genpar_models.train.dist import DistContext
from genpar_models.train.loop import train
from genpar_models.train.runspec import RunSpec
from tests.helpers import CPU, family_steps, make_shard_set


def _steps(cfg: PipelineConfig):
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 8, 8))
    return family_steps(model, cfg.train)


@pytest.mark.parametrize("name", ["vae", "dcgan"])
def test_save_restore_round_trip(tmp_path: Path, tiny: PipelineConfig, name: str) -> None:
    cfg = tiny.model_copy(update={"model": tiny.model.model_copy(update={"name": name})})
    a = _steps(cfg)
    a.step(torch.rand(8, 1, 8, 8) * 2 - 1, torch.Generator().manual_seed(1))  # optimizer state
    expect = {"model_spec": a.model.model_spec(), "train_key": "k"}
    checkpoint.save_checkpoint(
        tmp_path, step=5, modules=a.modules, optimizers=a.optimizers, meta=expect
    )
    b = _steps(cfg)
    got = checkpoint.restore_latest(
        tmp_path, modules=b.modules, optimizers=b.optimizers, expect=expect
    )
    assert got is not None and got.step == 5
    for (ka, va), (kb, vb) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)
    for opt_name, opt in a.optimizers.items():
        sa, sb = opt.state_dict()["state"], b.optimizers[opt_name].state_dict()["state"]
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)


def test_corrupt_newest_is_skipped_for_previous(tmp_path: Path, tiny: PipelineConfig) -> None:
    s = _steps(tiny)
    expect = {"model_spec": s.model.model_spec(), "train_key": "k"}
    for step in (10, 20):
        checkpoint.save_checkpoint(
            tmp_path, step=step, modules=s.modules, optimizers=s.optimizers, meta=expect
        )
    newest = checkpoint.checkpoint_path(tmp_path, 20)
    blob = bytearray(newest.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one flipped bit
    newest.write_bytes(bytes(blob))
    got = checkpoint.restore_latest(
        tmp_path, modules=s.modules, optimizers=s.optimizers, expect=expect
    )
    assert got is not None and got.step == 10
    assert "sha256 mismatch" in got.skipped[0] and newest.name in got.skipped[0]
    # truncated file: same outcome
    checkpoint.checkpoint_path(tmp_path, 10).write_bytes(b"")
    assert (
        checkpoint.restore_latest(
            tmp_path, modules=s.modules, optimizers=s.optimizers, expect=expect
        )
        is None
    )


def test_checkpoint_of_other_model_is_refused(tmp_path: Path, tiny: PipelineConfig) -> None:
    s = _steps(tiny)
    checkpoint.save_checkpoint(
        tmp_path,
        step=1,
        modules=s.modules,
        optimizers=s.optimizers,
        meta={"model_spec": s.model.model_spec(), "train_key": "k"},
    )
    with pytest.raises(CheckpointError, match="different train_key"):
        checkpoint.restore_latest(
            tmp_path,
            modules=s.modules,
            optimizers=s.optimizers,
            expect={"model_spec": s.model.model_spec(), "train_key": "z"},
        )


def test_pickle_payload_is_never_loaded(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(pickle.dumps({"w": Boom()}))
    import hashlib
    import json

    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    (model_dir / "model.json").write_text(
        json.dumps(
            {
                "sha256": digest,
                "model_spec": {
                    "name": "vae",
                    "image_shape": [1, 8, 8],
                    "latent_dim": 2,
                    "base_channels": 4,
                    "likelihood": "bernoulli",
                },
            }
        )
    )
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model(model_dir)
    assert not (tmp_path / "pwned").exists()


def _spec(tmp_path: Path, cfg: PipelineConfig, shards_dir: Path, run: str, steps: int) -> RunSpec:
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": steps})})
    return RunSpec(
        config=cfg, shards_dir=str(shards_dir), run_dir=str(tmp_path / run), train_key="k"
    )


def test_resume_is_exact(tmp_path: Path, tiny: PipelineConfig) -> None:
    """0->20 in one go equals 0->10 then a resumed 10->20, bit for bit."""
    shards_dir = make_shard_set(tmp_path / "shards", tiny)
    train(_spec(tmp_path, tiny, shards_dir, "straight", 20), CPU)
    train(_spec(tmp_path, tiny, shards_dir, "resumed", 10), CPU)
    result = train(_spec(tmp_path, tiny, shards_dir, "resumed", 20), CPU)
    assert result["resumed_from_step"] == 10
    a, _ = load_exported(tmp_path / "straight" / "model")
    b, _ = load_exported(tmp_path / "resumed" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_under_another_layout_is_refused_saying_how_to_resume(
    tmp_path: Path, tiny: PipelineConfig
) -> None:
    """The world size, device and precision decide the global batch, the data order, the
    noise streams and the numbers: a resume under others is refused, naming what differs."""
    shards_dir = make_shard_set(tmp_path / "shards", tiny)
    train(_spec(tmp_path, tiny, shards_dir, "run", 10), CPU)
    longer = _spec(tmp_path, tiny, shards_dir, "run", 20)
    two_ranks = DistContext(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
    with pytest.raises(CheckpointError) as exc:
        train(longer, two_ranks)
    message = str(exc.value)
    assert "ckpt-00000010.safetensors was written with 1 cpu rank(s) in fp32" in message
    assert "world_size 1 -> 2" in message and "compute.cpu_procs=1" in message
    assert "train.resume=false" in message
    bf16 = tiny.train.model_copy(update={"precision": "bf16", "max_steps": 20})
    with pytest.raises(CheckpointError, match=r"precision fp32 -> bf16.*train\.precision=fp32"):
        train(longer.model_copy(update={"config": tiny.model_copy(update={"train": bf16})}), CPU)
    assert train(longer, CPU)["resumed_from_step"] == 10  # the same layout resumes


def test_nan_loss_stops_with_step_and_writes_no_newer_checkpoint(
    tmp_path: Path, tiny: PipelineConfig
) -> None:
    """Weights that turn non-finite (here: planted in a valid checkpoint) stop training with the
    step and the loss, and no checkpoint is written past the last one."""
    shards_dir = make_shard_set(tmp_path / "shards", tiny)
    spec = _spec(tmp_path, tiny, shards_dir, "nan", 30)
    s = _steps(spec.config)
    with torch.no_grad():
        next(s.model.parameters()).fill_(float("inf"))
    checkpoint.save_checkpoint(
        spec.checkpoint_dir,
        step=10,
        modules=s.modules,
        optimizers=s.optimizers,
        meta={"model_spec": s.model.model_spec(), "train_key": "k"},
    )
    with pytest.raises(FloatingPointError, match=r"diverged at step 15: .*train/loss=nan") as exc:
        train(spec, CPU)
    assert "ckpt-00000010" in str(exc.value)
    assert [step for step, _ in checkpoint.list_checkpoints(spec.checkpoint_dir)] == [10]


def test_skipped_corrupt_checkpoint_is_reported_on_the_run(
    tmp_path: Path, tiny: PipelineConfig
) -> None:
    from mlflow import MlflowClient

    from genpar_models.train.runspec import TrackingTarget

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("corrupt")).info.run_id
    shards_dir = make_shard_set(tmp_path / "shards", tiny)
    spec = _spec(tmp_path, tiny, shards_dir, "run", 20).model_copy(
        update={"tracking": TrackingTarget(uri=uri, run_id=run_id)}
    )
    train(spec, CPU)
    newest = checkpoint.checkpoint_path(spec.checkpoint_dir, 20)
    newest.write_bytes(newest.read_bytes()[:100])  # truncated on disk
    longer = spec.config.model_copy(
        update={"train": spec.config.train.model_copy(update={"max_steps": 30})}
    )
    result = train(spec.model_copy(update={"config": longer}), CPU)
    assert result["resumed_from_step"] == 10
    tag = client.get_run(run_id).data.tags["genpar.skipped_checkpoints"]
    assert "ckpt-00000020.safetensors" in tag and "sha256 mismatch" in tag


def _scaled_trainer(cfg: PipelineConfig, scaler: torch.amp.GradScaler):
    from genpar_models.models.registry import get_family
    from genpar_models.train.trainer import make_steps, make_trainer

    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 8, 8))
    family = get_family(cfg.model.name)
    steps = make_steps(model, family, cfg, CPU, None, scaler)
    return make_trainer(model, family, steps, cfg, None, scaler)


def test_gradient_scaler_state_is_checkpointed_and_restored(
    tmp_path: Path, tiny: PipelineConfig
) -> None:
    """fp16's loss scale and growth tracker survive a resume: a restarted run neither skips
    steps re-finding its scale nor overflows from the initial one. CUDA's fp16 is what uses it;
    the scaler's bookkeeping is the same on the CPU, where this test drives a real one."""
    from genpar_models.train import persist
    from genpar_models.train.sink import NullSink

    spec = RunSpec(
        config=tiny, shards_dir=str(tmp_path), run_dir=str(tmp_path / "run"), train_key="k"
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=1e38)  # the scaled loss overflows: backs off
    trainer = _scaled_trainer(tiny, scaler)
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    for step in (1, 2):
        trainer.step(step, x, torch.Generator().manual_seed(step))
    assert scaler.get_scale() < 1e38  # a real back-off happened
    expect = {"model_spec": trainer.steps.model.model_spec(), "train_key": "k"}
    persist.save(trainer, spec, CPU, 2, expect, NullSink())

    fresh = torch.amp.GradScaler("cpu")
    resumed = persist.restore(spec, _scaled_trainer(tiny, fresh), expect, layout=None)
    assert resumed is not None and resumed.step == 2
    assert fresh.state_dict() == scaler.state_dict()

    sidecar = checkpoint.checkpoint_path(spec.checkpoint_dir, 2).with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["grad_scaler"] = {"scale": "big"}
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="grad_scaler"):
        persist.restore(spec, _scaled_trainer(tiny, torch.amp.GradScaler("cpu")), expect, None)
