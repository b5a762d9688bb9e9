"""Training throughput: genpar's step against the plain loop, 1 vs 2 DDP processes, FLOP/s.

Throughput is the steady state of one run of 2W steps: the trainer logs at W and at 2W, and its
train/samples_per_s at 2W covers exactly the W training steps in between (the rate restarts at
every log, validation and checkpoint), so start-up, warm-up, the first log's all-reduce and the
final validation/checkpoint are all outside it. The plain loop likewise times W steps after W
warm-up steps. Model: the mnist-vae config's conv VAE on mnist5k (28x28), batch 64 per rank.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import Result, interleaved, median
from benchmarks.plain_train import load_train_images, plain_loop
from genpar_models.config import PipelineConfig, load_config
from genpar_models.train.dist import DistContext
from genpar_models.train.loop import train
from genpar_models.train.runspec import RunSpec, write_spec

REPO = Path(__file__).resolve().parents[1]


def bench_config(window: int) -> PipelineConfig:
    """2 x window steps, logged at window and 2 x window, validated and saved only at the end."""
    steps = 2 * window
    return load_config(
        REPO / "configs" / "mnist-vae.yaml",
        [
            f"train.max_steps={steps}",
            f"train.checkpoint_every_steps={steps}",
            f"train.val_every_steps={steps}",
            f"train.log_every_steps={window}",
            "evaluate.batch_size=512",
            "train.resume=false",
        ],
    )


def _spec(shards: Path, work: Path, window: int, threads: int) -> RunSpec:
    run_dir = work / f"run-{window}-{time.monotonic_ns()}"
    return RunSpec(
        config=bench_config(window),
        shards_dir=str(shards),
        run_dir=str(run_dir),
        train_key="bench",
        threads_per_proc=threads,
    )


def _steady_rate(result: dict) -> float:
    return float(result["metrics"]["train/samples_per_s"])


def genpar_in_process(shards: Path, work: Path, window: int, threads: int) -> float:
    """Steady-state samples/s of genpar's trainer in this process (world size 1)."""
    torch.set_num_threads(threads)
    spec = _spec(shards, work, window, threads)
    result = train(spec, DistContext(0, 0, 1, torch.device("cpu")))
    shutil.rmtree(spec.run_dir, ignore_errors=True)
    return _steady_rate(result)


def genpar_torchrun(shards: Path, work: Path, window: int, procs: int, threads: int) -> float:
    """Steady-state samples/s (all ranks) of one torchrun launch of genpar's trainer."""
    spec = _spec(shards, work, window, threads)
    path = write_spec(spec, Path(spec.run_dir) / "spec.json")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={procs}",
            "-m",
            "genpar_models.train",
            "--spec",
            str(path),
        ],
        check=True,
        capture_output=True,
        env=env,
        cwd=REPO,
    )
    rate = _steady_rate(json.loads(spec.result_path.read_text()))
    shutil.rmtree(spec.run_dir, ignore_errors=True)
    return rate


def matmul_peak(threads: int, n: int = 1024, reps: int = 20) -> float:
    """fp32 matmul FLOP/s on this machine with `threads` torch threads (the practical peak)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def flops_per_sample(images) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from genpar_models.models.export import build_model

    cfg = bench_config(1)
    model = build_model(cfg.model, images.shape[1:])
    x = torch.from_numpy(images[:64]).float() / 255.0
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        (out["recon"] + out["kl"]).mean().backward()
    return counter.get_total_flops() / 64


def run(shards: Path, work: Path, quick: bool) -> list[Result]:
    window = 10 if quick else 64
    repeats = 1 if quick else 3
    batch = bench_config(1).train.batch_size_per_rank
    images = load_train_images(shards)
    model_cfg = bench_config(1).model
    work.mkdir(parents=True, exist_ok=True)

    def plain(threads: int) -> float:
        torch.set_num_threads(threads)
        return plain_loop(images, model_cfg, steps=window, batch=batch, warmup=window)

    fns = {
        "plain2": lambda: plain(2),
        "genpar2": lambda: genpar_in_process(shards, work, window, 2),
        "ddp1x1": lambda: genpar_torchrun(shards, work, window, 1, 1),
        "ddp1x2": lambda: genpar_torchrun(shards, work, window, 1, 2),
        "ddp2x1": lambda: genpar_torchrun(shards, work, window, 2, 1),
    }
    m = {k: median(v) for k, v in interleaved(fns, repeats).items()}
    sec = "training (conv VAE, mnist5k 28x28, batch 64/rank)"
    flops = flops_per_sample(images)
    peak = matmul_peak(2)
    best_single = max(m["ddp1x1"], m["ddp1x2"])
    return [
        Result(sec, "plain PyTorch loop, 1 process x 2 threads", m["plain2"], "samples/s"),
        Result(
            sec,
            "genpar step, 1 process x 2 threads",
            m["genpar2"],
            "samples/s",
            baseline="plain loop",
            ratio=m["genpar2"] / m["plain2"],
            target=0.95,
        ),
        Result(sec, "torchrun 1 process x 1 thread", m["ddp1x1"], "samples/s"),
        Result(sec, "torchrun 1 process x 2 threads", m["ddp1x2"], "samples/s"),
        Result(
            sec,
            "torchrun 2 processes x 1 thread (DDP, gloo)",
            m["ddp2x1"],
            "samples/s",
            baseline="1 process x 1 thread",
            ratio=m["ddp2x1"] / m["ddp1x1"],
            target=1.6,
        ),
        Result(
            sec,
            "2 DDP processes vs best single process",
            m["ddp2x1"],
            "samples/s",
            baseline="best of 1x1, 1x2",
            ratio=m["ddp2x1"] / best_single,
        ),
        Result(
            sec,
            "achieved FLOP/s (2 DDP processes)",
            m["ddp2x1"] * flops / 1e9,
            "GFLOP/s",
            baseline="fp32 matmul peak, 2 threads",
            ratio=m["ddp2x1"] * flops / peak,
            note=f"{flops / 1e6:.1f} MFLOP per sample (fwd+bwd); peak {peak / 1e9:.1f} GFLOP/s",
        ),
    ]
