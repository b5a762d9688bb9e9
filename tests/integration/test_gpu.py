"""The CUDA paths: nccl process group, bf16 autocast, data resident on the GPU. Skipped without
CUDA; run on a GPU machine with `python -m pytest -m gpu`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genpar_models.config import PipelineConfig
from genpar_models.train.runspec import RunSpec
from tasks.launcher import plan_processes
from tests.helpers import as_family, launch, make_shard_set

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.integration,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("model", ["vae", "dcgan"])
def test_torchrun_on_every_gpu_with_bf16(tmp_path: Path, tiny: PipelineConfig, model: str) -> None:
    cfg = tiny.model_copy(
        update={
            "model": as_family(tiny.model, model),
            "compute": tiny.compute.model_copy(update={"device": "cuda"}),
            "train": tiny.train.model_copy(update={"precision": "bf16"}),
        }
    )
    plan = plan_processes(cfg.compute, torch.cuda.device_count())
    assert plan.device == "cuda" and plan.nproc == torch.cuda.device_count()
    spec = RunSpec(
        config=cfg,
        shards_dir=str(make_shard_set(tmp_path / "shards", cfg)),
        run_dir=str(tmp_path / "run"),
        train_key="k",
    )
    lines: list[str] = []
    launch(spec, lines.append, cuda_devices=torch.cuda.device_count())
    result = json.loads(spec.result_path.read_text())
    assert result["step"] == cfg.train.max_steps
    assert any("cuda rank(s)" in line for line in lines)


def test_gpu_samples_are_the_cpus_up_to_fp32_rounding(tmp_path: Path, tiny: PipelineConfig) -> None:
    """The documented guarantee across device types: the same latents, samples equal up to
    fp32 rounding (bit-identical is only promised on one device type)."""
    from genpar_models.infer.sampling import sample_uint8
    from genpar_models.models.export import build_model
    from genpar_models.util.threads import exact_fp32

    torch.manual_seed(0)
    model = build_model(tiny.model, (1, 8, 8)).eval()
    cpu = sample_uint8(model, 64, seed=7)
    with exact_fp32():
        gpu = sample_uint8(model.to("cuda"), 64, seed=7)
    assert (abs(cpu.astype(int) - gpu.astype(int)) <= 1).all()  # one grey level at most


def _halfway_spec(
    tmp_path: Path, tiny: PipelineConfig, model: str, precision: str, strategy: str = "ddp"
) -> RunSpec:
    """A CUDA run of `model` at `precision` that stops at half its steps (then resumes)."""
    cfg = tiny.model_copy(
        update={
            "model": as_family(tiny.model, model),
            "compute": tiny.compute.model_copy(update={"device": "cuda", "strategy": strategy}),
            "train": tiny.train.model_copy(update={"precision": precision}),
        }
    )
    return RunSpec(
        config=cfg,
        shards_dir=str(make_shard_set(tmp_path / "shards", cfg)),
        run_dir=str(tmp_path / "run"),
        train_key="k",
        stop_at_step=cfg.train.max_steps // 2,
    )


@pytest.mark.parametrize("model", ["vae", "dcgan"])
def test_fp16_trains_and_resumes_its_loss_scale(
    tmp_path: Path, tiny: PipelineConfig, model: str
) -> None:
    """fp16 with a gradient scaler under torchrun: the checkpoint holds the scaler's state,
    and a resumed run starts from that scale, not from the initial 65536."""
    spec = _halfway_spec(tmp_path, tiny, model, "fp16")
    cfg = spec.config
    devices = torch.cuda.device_count()
    launch(spec, cuda_devices=devices)
    newest = sorted(spec.checkpoint_dir.glob("ckpt-*.json"))[-1]
    state = json.loads(newest.read_text())["grad_scaler"]
    assert state is not None and state["scale"] > 0
    lines: list[str] = []
    launch(spec.model_copy(update={"stop_at_step": None}), lines.append, cuda_devices=devices)
    assert json.loads(spec.result_path.read_text())["step"] == cfg.train.max_steps
    assert not any("loss scale starts afresh" in line for line in lines)


@pytest.mark.parametrize("model", ["vae", "dcgan"])
def test_fsdp_on_every_gpu_with_bf16_params_and_fp32_reduction(
    tmp_path: Path, tiny: PipelineConfig, model: str
) -> None:
    """FSDP2 on nccl with the mixed-precision policy (bf16 parameters, fp32 reduction): trains
    to a checkpoint, resumes from its sharded checkpoint on the same GPUs, exports one file."""
    spec = _halfway_spec(tmp_path, tiny, model, "bf16", strategy="fsdp")
    cfg = spec.config
    devices = torch.cuda.device_count()
    launch(spec, cuda_devices=devices)
    assert sorted(spec.checkpoint_dir.glob("ckpt-*.dcp")), "no sharded checkpoint"
    lines: list[str] = []
    launch(spec.model_copy(update={"stop_at_step": None}), lines.append, cuda_devices=devices)
    result = json.loads(spec.result_path.read_text())
    assert result["step"] == cfg.train.max_steps and result["strategy"] == "fsdp"
    assert 0 < result["resumed_from_step"] <= cfg.train.max_steps // 2
    assert Path(result["model_path"]).is_file()
    assert any("cuda rank(s)" in line for line in lines)
