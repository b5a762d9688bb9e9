"""Real 2-rank gloo torchrun jobs: an elastic restart after SIGKILL, and rank errors surfacing."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow import MlflowClient

from genpar_models.config import PipelineConfig
from genpar_models.models.export import load_exported
from genpar_models.train.runspec import RunSpec, TrackingTarget
from tasks.launcher import TrainingFailed
from tests.helpers import as_family, launch, make_shard_set

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _rank_processes(root_pid: int) -> dict[int, psutil.Process]:
    """The ranks under `root_pid` by rank: CPU ranks forked from the agent are named
    genpar-rank<N> (their command line and initial environment are the agent's); fresh
    interpreters have RANK in their environment."""
    ranks = {}
    for p in psutil.Process(root_pid).children(recursive=True):
        try:
            name = p.name()
            if name.startswith("genpar-rank"):
                ranks[int(name.removeprefix("genpar-rank"))] = p
            elif "genpar_models.train" in " ".join(p.cmdline()):
                ranks[int(p.environ().get("RANK", -1))] = p
        except psutil.NoSuchProcess:
            continue
    return ranks


@pytest.mark.parametrize(
    ("family", "steps", "strategy"),
    [("vae", 600, "ddp"), ("dcgan", 300, "ddp"), ("dcgan", 100, "fsdp")],
)
def test_sigkilled_worker_restarts_and_resumes_exactly(
    tmp_path: Path,
    tiny: PipelineConfig,
    mlflow_template: Path,
    family: str,
    steps: int,
    strategy: str,
) -> None:
    """A rank SIGKILLed mid-run: torchrun restarts both ranks, they resume from the newest
    checkpoint (sharded under fsdp), and the final weights equal an uninterrupted 2-rank
    run's bit for bit. The fsdp case is a GAN with a generator EMA, whose average is sharded,
    checkpointed and exported beside the raw generator."""
    model = as_family(tiny.model, family)
    if strategy == "fsdp":
        model = model.model_copy(update={"ema_decay": 0.9})
    cfg = tiny.model_copy(
        update={
            "compute": tiny.compute.model_copy(update={"strategy": strategy}),
            "model": model,
            "train": tiny.train.model_copy(
                update={
                    "max_steps": steps,
                    "checkpoint_every_steps": 25,
                    "log_every_steps": 5,
                    "val_every_steps": 100,
                    "max_restarts": 1,
                }
            ),
        }
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "mlflow.db").write_bytes(mlflow_template.read_bytes())
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("kill")).info.run_id
    spec = RunSpec(
        config=cfg,
        shards_dir=str(make_shard_set(tmp_path / "shards", cfg, n=1000)),
        run_dir=str(tmp_path / "run"),
        train_key="k",
        tracking=TrackingTarget(uri=uri, run_id=run_id),
    )
    killed: dict[str, int] = {}
    ckpts = tmp_path / "run" / "checkpoints"

    def kill_rank1_at_a_random_step() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not (ckpts / "ckpt-00000025.json").exists():
            time.sleep(0.02)
        time.sleep(random.Random(1234).uniform(0.0, 1.5))  # somewhere after the first checkpoint
        me = psutil.Process(os.getpid())
        for child in me.children():
            ranks = _rank_processes(child.pid)
            if 1 in ranks:
                steps = [int(p.stem[5:]) for p in ckpts.glob("ckpt-*.json")]
                killed["newest_checkpoint"] = max(steps)
                killed["pid"] = ranks[1].pid
                ranks[1].send_signal(signal.SIGKILL)
                return

    killer = threading.Thread(target=kill_rank1_at_a_random_step, daemon=True)
    killer.start()
    lines: list[str] = []
    launch(spec, lines.append)
    killer.join(timeout=5)

    assert "pid" in killed, "the test did not manage to kill rank 1 mid-training"
    result = json.loads(spec.result_path.read_text())
    assert result["step"] == steps
    assert result["elastic_restarts"] == 1
    assert result["metrics_sink"] == "FileSink"  # logged through the flow (metrics_relay.py)
    # Resumed from the newest checkpoint that existed when the rank died (or one completed
    # while torchrun noticed): at most checkpoint_every_steps steps are redone.
    assert result["resumed_from_step"] >= killed["newest_checkpoint"]
    assert result["resumed_from_step"] % 25 == 0
    # Metrics are committed with checkpoints, so the redone steps appear exactly once.
    key = "train/loss" if family == "vae" else "train/loss_g"
    logged = [m.step for m in client.get_metric_history(run_id, key)]
    assert logged == list(range(5, steps + 1, 5))
    straight = spec.model_copy(update={"run_dir": str(tmp_path / "straight"), "tracking": None})
    launch(straight)
    assert _weights(straight) == _weights(spec)  # bit for bit, not just the same step count
    if strategy == "fsdp":  # the EMA's average exported (gathered whole) beside the raw weights
        average, meta = load_exported(spec.model_dir)
        raw, _ = load_exported(spec.model_dir, "raw")
        assert meta["variants"]["raw"]["sha256"] == _variant_sha(straight, "raw")
        assert average.keys() == raw.keys()
        gen = [k for k in raw if k.startswith("generator.") and raw[k].is_floating_point()]
        assert gen and any(not torch.equal(average[k], raw[k]) for k in gen)
        assert all(torch.equal(average[k], raw[k]) for k in raw if k.startswith("discrim"))


def _weights(spec: RunSpec) -> str:
    return json.loads((spec.model_dir / "model.json").read_text())["sha256"]


def _variant_sha(spec: RunSpec, name: str) -> str:
    return json.loads((spec.model_dir / "model.json").read_text())["variants"][name]["sha256"]


@pytest.mark.timeout(180)
def test_a_rank_without_validation_samples_does_not_hang(
    tmp_path: Path, tiny: PipelineConfig
) -> None:
    """Fewer validation samples than ranks: rank 1's stride is empty, and it must still take
    part in the all-reduce (it used to send no keys, and the collective failed or hung)."""
    data = tiny.data.model_copy(update={"val_fraction": 0.003, "test_fraction": 0.0})
    train = tiny.train.model_copy(update={"max_steps": 4, "val_every_steps": 2})
    cfg = tiny.model_copy(update={"data": data, "train": train})
    shards_dir = make_shard_set(tmp_path / "shards", cfg, n=300)
    assert json.loads((shards_dir / "manifest.json").read_text())["splits"]["val"]["count"] == 1
    spec = RunSpec(
        config=cfg, shards_dir=str(shards_dir), run_dir=str(tmp_path / "run"), train_key="k"
    )
    launch(spec)
    metrics = json.loads(spec.result_path.read_text())["metrics"]
    assert "val/elbo" in metrics and math.isfinite(metrics["val/elbo"])


@pytest.mark.parametrize("fork", ["default", "0"])
def test_cpu_ranks_start_forked_from_the_agent_unless_turned_off(
    tmp_path: Path, tiny: PipelineConfig, monkeypatch: pytest.MonkeyPatch, fork: str
) -> None:
    """One node of CPU ranks is forked from torchrun's agent (its imports done once: issue 18);
    GENPAR_FORK_RANKS=0 starts fresh interpreters. result.json records which ran."""
    if fork == "default":
        monkeypatch.delenv("GENPAR_FORK_RANKS", raising=False)
    else:
        monkeypatch.setenv("GENPAR_FORK_RANKS", fork)
    cfg = tiny.model_copy(update={"train": tiny.train.model_copy(update={"max_steps": 2})})
    spec = RunSpec(
        config=cfg,
        shards_dir=str(make_shard_set(tmp_path / "shards", cfg, n=300)),
        run_dir=str(tmp_path / "run"),
        train_key="k",
    )
    launch(spec)
    result = json.loads(spec.result_path.read_text())
    assert result["step"] == 2
    assert result["rank_start"] == ("forked" if fork == "default" else "interpreter")


def test_failing_rank_error_becomes_the_error_message(tmp_path: Path, tiny: PipelineConfig) -> None:
    cfg = tiny.model_copy(
        update={
            "train": tiny.train.model_copy(update={"batch_size_per_rank": 4096, "max_restarts": 0})
        }
    )
    spec = RunSpec(
        config=cfg,
        shards_dir=str(make_shard_set(tmp_path / "shards", cfg)),
        run_dir=str(tmp_path / "run"),
        train_key="k",
    )
    with pytest.raises(TrainingFailed) as exc:
        launch(spec)
    message = str(exc.value)
    assert "rank" in message and "train.batch_size_per_rank=4096" in message
    assert "ConfigError" in message  # the rank's own exception type, from its error.json
    # nothing left running
    assert not _rank_processes(os.getpid())


@pytest.mark.parametrize(("norm", "sn", "equal"), [("group", True, True), ("batch", False, False)])
def test_a_global_batch_gives_the_same_gan_outputs_on_one_rank_or_two(
    tmp_path: Path, norm: str, sn: bool, equal: bool
) -> None:
    """The default DCGAN has no batch statistics, so a batch split over 2 DDP ranks gives the
    outputs of 1 rank on the whole batch (training mode, within 1e-5); genpar 0.1's BatchNorm
    network does not (each rank normalised by its own half)."""
    import torch
    import torch.multiprocessing as mp

    from tests.helpers import ddp_gan_forward, gan_forward_on

    out = str(tmp_path / "out")
    mp.spawn(ddp_gan_forward, args=(2, str(tmp_path / "init"), norm, sn, out), nprocs=2)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    one = gan_forward_on(0, 1, norm, sn)
    for key in ("g", "d"):
        split = torch.cat([r[key] for r in ranks])
        close = torch.allclose(split, one[key], rtol=1e-5, atol=1e-5)
        assert close == equal, (key, (split - one[key]).abs().max())
