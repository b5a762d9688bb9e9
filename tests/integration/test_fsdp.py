"""compute.strategy=fsdp for real: 2-rank gloo torchrun jobs with FSDP2, their sharded
checkpoints (exact resume, resharding 2 -> 1, corrupt files) and the exported model.

One DDP and one FSDP run of the tiny config are shared by the module (about 25 s on 2 cores);
the rest reads or resumes their checkpoints.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from genpar_models.config import PipelineConfig, load_config
from genpar_models.errors import CheckpointError
from genpar_models.models import get_family
from genpar_models.models.export import load_exported, load_model
from genpar_models.train import checkpoint, sharded
from genpar_models.train.runspec import RunSpec, TrackingTarget
from genpar_models.train.tools import process_layout
from genpar_models.util import atomic
from tests.conftest import REPO, TINY
from tests.helpers import CPU, family_steps, launch, make_shard_set

pytestmark = [pytest.mark.integration]

STEPS = 30  # checkpoints at 10, 20, 30; losses logged every 5


def _cfg(strategy: str, *overrides: str) -> PipelineConfig:
    return load_config(
        TINY, [f"compute.strategy={strategy}", f"train.max_steps={STEPS}", *overrides]
    )


class Runs:
    def __init__(self, root: Path, template: Path) -> None:
        self.root = root
        self.shards = make_shard_set(root / "shards", _cfg("ddp"))
        (root / "mlflow.db").write_bytes(template.read_bytes())
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)
        self.experiment = self.client.create_experiment("fsdp")

    def spec(self, name: str, cfg: PipelineConfig, *, tracked: bool = True) -> RunSpec:
        tracking = None
        if tracked:
            run_id = self.client.create_run(self.experiment, run_name=name).info.run_id
            tracking = TrackingTarget(uri=self.uri, run_id=run_id)
        return RunSpec(
            config=cfg,
            shards_dir=str(self.shards),
            run_dir=str(self.root / name),
            train_key="k",
            tracking=tracking,
        )

    def losses(self, spec: RunSpec) -> dict[int, float]:
        history = self.client.get_metric_history(spec.tracking.run_id, "train/loss")
        return {m.step: m.value for m in history}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> Runs:
    runs = Runs(tmp_path_factory.mktemp("fsdp"), mlflow_template)
    runs.ddp = runs.spec("ddp", _cfg("ddp"))
    runs.fsdp = runs.spec("fsdp", _cfg("fsdp"))
    launch(runs.ddp)
    launch(runs.fsdp)
    return runs


def _sha(spec: RunSpec) -> str:
    return json.loads((spec.model_dir / "model.json").read_text())["sha256"]


def test_fsdp_gradients_equal_one_process_within_1e_6(tmp_path: Path) -> None:
    """SGD (Adam would hide a wrong gradient scale): the gradients of 2 FSDP ranks, each on
    half a batch, gathered whole, equal one process's on the whole batch; each rank holds
    half of every weight's first dimension."""
    from tests.fsdp_grads import reference

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*cmd, "-m", "tests.fsdp_grads", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got = torch.load(f"{out}.grads", weights_only=True)
    want = reference()
    assert got.keys() == want.keys()
    for name, g in want.items():
        rel = (got[name] - g).norm() / g.norm().clamp_min(1e-30)
        assert rel <= 1e-6, (name, float(rel))
    shards = [torch.load(f"{out}.shards{r}", weights_only=True) for r in range(2)]
    for name, g in want.items():
        rows = [s[name].shape[0] for s in shards]
        assert sum(rows) == g.shape[0] and max(rows) == (g.shape[0] + 1) // 2, name


def test_ddp_and_fsdp_log_the_same_losses_and_export_one_file(runs: Runs) -> None:
    ddp, fsdp = runs.losses(runs.ddp), runs.losses(runs.fsdp)
    assert sorted(ddp) == list(range(5, STEPS + 1, 5)) and sorted(fsdp) == sorted(ddp)
    for step, loss in ddp.items():
        assert abs(fsdp[step] - loss) <= 1e-4 * abs(loss), (step, loss, fsdp[step])
    result = json.loads(runs.fsdp.result_path.read_text())
    assert result["strategy"] == "fsdp" and result["num_parameters"] > 0
    # Sharded checkpoints: one directory per checkpoint, a file per rank, and a sidecar.
    steps = [s for s, _ in checkpoint.list_checkpoints(runs.fsdp.checkpoint_dir)]
    assert steps == [30, 20, 10]
    files = sorted(p.name for p in sharded.sharded_path(runs.fsdp.checkpoint_dir, 30).iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    # The exported model is one safetensors file of whole tensors, loadable by the family.
    state, meta = load_exported(runs.fsdp.model_dir)
    assert sorted(p.name for p in runs.fsdp.model_dir.glob("*.safetensors")) == [
        "model.safetensors"
    ]
    model, _ = load_model(runs.fsdp.model_dir)  # the loader evaluation and the registry use
    assert model.model_spec() == meta["model_spec"]
    ddp_state, _ = load_exported(runs.ddp.model_dir)
    for key, value in ddp_state.items():
        assert torch.allclose(state[key], value, rtol=1e-4, atol=1e-6), key
    tags = runs.client.get_run(runs.fsdp.tracking.run_id).data.tags
    assert tags["genpar.strategy"] == "fsdp"


def _copy_until(src: RunSpec, dst: Path, step: int) -> None:
    """`src`'s checkpoint directory as it was after `step` (newer checkpoints dropped)."""
    shutil.copytree(src.checkpoint_dir, dst / "checkpoints")
    for s, path in checkpoint.list_checkpoints(dst / "checkpoints"):
        if s > step:
            path.with_suffix(".json").unlink()
            shutil.rmtree(path)


def test_fsdp_resumes_exactly_from_its_sharded_checkpoint(runs: Runs) -> None:
    spec = runs.spec("resumed", runs.fsdp.config, tracked=False)
    _copy_until(runs.fsdp, Path(spec.run_dir), 20)
    launch(spec)
    result = json.loads(spec.result_path.read_text())
    assert result["resumed_from_step"] == 20 and result["resharded_from"] is None
    assert _sha(spec) == _sha(runs.fsdp)  # bit for bit


def _fresh_vae(cfg: PipelineConfig):
    family = get_family("vae")
    torch.manual_seed(123)  # other weights than the checkpoint's
    model = family.build(cfg.model, (1, 8, 8))
    return model, family_steps(model, cfg.train)


def _restore_in_one_process(runs: Runs, directory: Path, *, allow_reshard: bool):
    cfg = runs.fsdp.config
    model, steps = _fresh_vae(cfg)
    resumed = sharded.restore_latest_sharded(
        directory,
        modules=steps.modules,
        optimizers=steps.optimizers,
        expect={"model_spec": model.model_spec(), "train_key": "k"},
        layout=process_layout(CPU, cfg.train.precision, "fsdp"),
        allow_reshard=allow_reshard,
    )
    return model, steps, resumed


def test_a_2_rank_checkpoint_reshards_onto_1_only_when_allowed(runs: Runs, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as exc:
        _restore_in_one_process(runs, runs.fsdp.checkpoint_dir, allow_reshard=False)
    message = str(exc.value)
    assert "2 cpu rank(s) in fp32 (fsdp), this run has 1 cpu rank(s)" in message
    assert "train.allow_reshard=true" in message and "compute.cpu_procs=2" in message
    model, steps, resumed = _restore_in_one_process(
        runs, runs.fsdp.checkpoint_dir, allow_reshard=True
    )
    assert resumed.step == STEPS and resumed.resharded_from == 2
    exported, _ = load_exported(runs.fsdp.model_dir)  # the step-30 weights, gathered whole
    for key, value in model.state_dict().items():
        assert torch.equal(value, exported[key]), key
    assert steps.optimizers["vae"].state  # Adam's moments came back too


def test_a_resharded_resume_is_recorded_on_the_run(runs: Runs) -> None:
    spec = runs.spec(
        "reshard",
        _cfg("fsdp", "compute.cpu_procs=1", "train.allow_reshard=true", "train.max_steps=25"),
    )
    _copy_until(runs.fsdp, Path(spec.run_dir), 20)
    launch(spec)
    result = json.loads(spec.result_path.read_text())
    assert result["resumed_from_step"] == 20 and result["resharded_from"] == 2
    tags = runs.client.get_run(spec.tracking.run_id).data.tags
    assert tags["genpar.resharded_from"] == "2 ranks" and tags["genpar.world_size"] == "1"


def test_a_2_rank_checkpoint_reshards_onto_3_ranks(runs: Runs) -> None:
    """The other direction: 2 ranks' shards loaded 3 ways. Three ranks exceed this machine's 2
    cores, which genpar's launcher refuses for speed; correctness does not care, so the test
    launches torchrun with the 3-rank plan itself."""
    from tasks.launcher import Plan, launch_training

    cfg = _cfg("fsdp", "train.allow_reshard=true", "train.max_steps=25")
    cfg = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"cpu_procs": 3})})
    spec = runs.spec("reshard3", cfg)
    _copy_until(runs.fsdp, Path(spec.run_dir), 20)
    launch_training(
        spec, Plan(3, "cpu", 1), log_dir=Path(spec.run_dir) / "torchrun", on_line=lambda _: None
    )
    result = json.loads(spec.result_path.read_text())
    assert result["resumed_from_step"] == 20 and result["resharded_from"] == 2
    assert result["step"] == 25
    tags = runs.client.get_run(spec.tracking.run_id).data.tags
    assert tags["genpar.resharded_from"] == "2 ranks" and tags["genpar.world_size"] == "3"
    losses = runs.losses(spec)
    assert 25 in losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    # the exported model is one whole file again, loadable in one process
    model, meta = load_model(spec.model_dir)
    assert meta["model_spec"] == load_model(runs.fsdp.model_dir)[1]["model_spec"]


def test_a_corrupt_shard_is_skipped_for_the_previous_checkpoint(runs: Runs, tmp_path: Path) -> None:
    _copy_until(runs.fsdp, tmp_path, STEPS)
    shard = sharded.sharded_path(tmp_path / "checkpoints", 30) / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    _, _, resumed = _restore_in_one_process(runs, tmp_path / "checkpoints", allow_reshard=True)
    assert resumed.step == 20
    assert len(resumed.skipped) == 1 and "__1_0.distcp: sha256 does not match" in resumed.skipped[0]


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_an_index_holding_code_is_refused_even_with_a_matching_sidecar(
    runs: Runs, tmp_path: Path
) -> None:
    """The sidecar's hashes only prove the files are the ones written; the DCP index is read
    by an unpickler that admits DCP's metadata classes only."""
    _copy_until(runs.fsdp, tmp_path, STEPS)
    path = sharded.sharded_path(tmp_path / "checkpoints", 30)
    (path / ".metadata").write_bytes(pickle.dumps(_Boom()))
    sidecar = json.loads(path.with_suffix(".json").read_text())
    sidecar["files"][".metadata"] = atomic.sha256_file(path / ".metadata")
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="posix.system is not allowed in a DCP index"):
        _restore_in_one_process(runs, tmp_path / "checkpoints", allow_reshard=True)


def test_a_ddp_run_refuses_an_fsdp_checkpoint_naming_the_strategy(runs: Runs) -> None:
    model, steps = _fresh_vae(runs.ddp.config)
    with pytest.raises(CheckpointError, match="run with compute.strategy=fsdp"):
        checkpoint.restore_latest(
            runs.fsdp.checkpoint_dir,
            modules=steps.modules,
            optimizers=steps.optimizers,
            expect={"model_spec": model.model_spec(), "train_key": "k"},
        )
