"""Sequences: the RVAE on TimeGAN's sines against the plain teacher-forced GRU VAE, and its DDP
throughput on 1 vs 2 gloo ranks.

    python -m benchmarks.run --only sequences --out benchmarks/results/sequences

1. Quality (issue 20's targets). configs/sines-rvae.yaml (10,000 sines x 24 steps x 5
   channels) is trained by genpar's trainer in one process with 2 threads at batch 128, the
   global batch of the config's 2 ranks x 64, for the config's 3,000 steps: the samples seen
   equal the peer's (benchmarks/peer_rvae.py, 3,000 steps of batch 128). Both are scored by
   genpar's sequence scorecard under one protocol: the same real reference split (test), the
   same post-hoc GRU classifier and predictor (TimeGAN's, evaluate.posthoc_steps = 2000 steps
   of batch 128), the same evaluation seed and number of generated series. Targets:
   eval/discriminative_score <= 0.05, and eval/predictive_mae within 10% of the real-on-real
   reference (ratio <= 1.10).
2. Throughput. Real torchrun launches of the same config, 1 process x 1 thread, 1 x 2 and 2 x
   1 (DDP, gloo), batch 64 per rank, taken in alternation; the steady rate of the W steps
   between the logs at W and 2W (as the training section). Target: 2 ranks >= 1.6x 1 x 1. Its
   floor, taken in the same alternation: the bare DDP loop of the same network
   (benchmarks/rvae_ddp_profile.py, W steps, 2 processes vs 1); a miss that the bare loop
   misses too reads "MISSED; the floor (...) misses it too".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ABSOLUTE, Result, interleaved, median, stopwatch
from benchmarks.peer_rvae import sample_peer, train_peer
from genpar_models.config import PipelineConfig, load_config
from genpar_models.train.dist import DistContext
from genpar_models.train.loop import train
from genpar_models.train.runspec import RunSpec, write_spec

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "sines-rvae.yaml"
GLOBAL_BATCH = 128  # the config's 2 ranks x 64, and the peer's batch
# One thread per arm: on a shared machine two OpenMP threads collapse when a core is taken
# (measured here: 13 series/s against 286 with one), and both arms get the same.
THREADS = 1


# quick mode (CI's smoke test): 400 series, a few steps of everything
QUICK = ["data.num_series=400", "data.shard_size=200", "train.kl_anneal_steps=10"]
QUICK += ["evaluate.num_samples=64", "evaluate.posthoc_steps=20", "evaluate.bootstrap=20"]
QUICK += ["evaluate.extractor_steps=20", "evaluate.iw_samples=2"]


def quality_config(quick: bool, steps: int | None = None) -> PipelineConfig:
    steps = 30 if quick else steps or load_config(CONFIG).train.max_steps
    sets = [
        f"train.max_steps={steps}",
        f"train.batch_size_per_rank={GLOBAL_BATCH}",
        f"train.checkpoint_every_steps={steps}",
        f"train.val_every_steps={steps}",
        "train.resume=false",
        "compute.cpu_procs=1",
    ]
    return load_config(CONFIG, sets + (QUICK if quick else []))


def build(cfg: PipelineConfig, work: Path) -> Path:
    os.environ["GENPAR_HOME"] = str(work / "home")  # the suite's own state, never the user's
    from tasks.preprocess import preprocess

    return Path(preprocess.fn(cfg))


def genpar_arm(cfg: PipelineConfig, shards: Path, work: Path) -> tuple[dict, float]:
    """Train in this process (THREADS) and score with the pipeline's own scorecard."""
    from genpar_models.eval.scorecard import evaluate_model

    spec = RunSpec(
        config=cfg,
        shards_dir=str(shards),
        run_dir=str(work),
        train_key="seq-bench",
        threads_per_proc=THREADS,
    )
    torch.set_num_threads(THREADS)
    with stopwatch() as t:
        train(spec, DistContext(0, 0, 1, torch.device("cpu")))
    return evaluate_model(spec.model_dir, shards, cfg)["metrics"], t["s"]


def peer_arm(cfg: PipelineConfig, shards: Path, steps: int) -> tuple[dict, float]:
    """Train the peer on the train split (source units) and score its free-running samples
    with the same sequence_quality call, reference and seed as genpar's evaluation."""
    from genpar_models.data.shards import open_shard_set
    from genpar_models.eval.scorecard import prepare
    from genpar_models.eval.sequence_scorecard import _pick, sequence_quality
    from genpar_models.util import seeding

    shardset = open_shard_set(shards)
    norm = shardset.manifest.normalisation
    mean, std = (np.asarray(norm[k], np.float32) for k in ("mean", "std"))
    train_std = shardset.load("train")[0]
    torch.set_num_threads(THREADS)
    with stopwatch() as t:
        net = train_peer(train_std * std + mean, steps=steps, batch=GLOBAL_BATCH)
    ecfg = cfg.evaluate
    seed = seeding.evaluation(ecfg.seed)
    gen = sample_peer(net, ecfg.num_samples, train_std.shape[1], seed=seed)
    gen_std = ((gen - mean) / std).astype(np.float32)
    extractor, ref = prepare(shards, ecfg)
    real_std = _pick(shardset.load(ecfg.reference_split)[0], ecfg.max_real_samples, ecfg.seed)
    scores = sequence_quality(real_std, gen_std, train_std, ref, extractor, shardset, ecfg, seed)
    return scores, t["s"]


def _launch(cfg: PipelineConfig, shards: Path, work: Path, procs: int, threads: int) -> float:
    """Steady-state samples/s (all ranks) of one torchrun launch of genpar's trainer."""
    spec = RunSpec(
        config=cfg,
        shards_dir=str(shards),
        run_dir=str(work / f"tp-{time.monotonic_ns()}"),
        train_key="seq-tp",
        threads_per_proc=threads,
    )
    path = write_spec(spec, Path(spec.run_dir) / "spec.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={procs}", "-m", "genpar_models.train", "--spec", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=REPO)
    rate = float(json.loads(spec.result_path.read_text())["metrics"]["train/samples_per_s"])
    shutil.rmtree(spec.run_dir, ignore_errors=True)
    return rate


def _bare(work: Path, procs: int, steps: int) -> float:
    """series/s (all ranks) of the bare DDP loop of the same network (rvae_ddp_profile.py,
    broadcast_buffers=False as the RVAE asks, 1 thread, batch 64 per rank, random series):
    nothing of genpar's trainer, so the 2-rank target's floor on this machine."""
    out = work / f"bare-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={procs}", "-m", "benchmarks.rvae_ddp_profile", "nobuf"]
    cmd += ["--steps", str(steps), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=REPO)
    rate = float(json.loads(out.read_text())["series_per_s"])
    out.unlink()
    return rate


def throughput(shards: Path, work: Path, quick: bool) -> list[Result]:
    window = 10 if quick else 100
    steps = 2 * window
    cfg = load_config(
        CONFIG,
        [
            f"train.max_steps={steps}",
            f"train.checkpoint_every_steps={steps}",
            f"train.val_every_steps={steps}",
            f"train.log_every_steps={window}",
            "train.resume=false",
            *(QUICK if quick else []),
        ],
    )
    work.mkdir(parents=True, exist_ok=True)
    fns = {
        "1x1": lambda: _launch(cfg, shards, work, 1, 1),
        "1x2": lambda: _launch(cfg, shards, work, 1, 2),
        "2x1": lambda: _launch(cfg, shards, work, 2, 1),
        # the floor: the bare DDP loop of the same network, over as many steps as the window
        "bare 1x1": lambda: _bare(work, 1, window),
        "bare 2x1": lambda: _bare(work, 2, window),
    }
    if quick:  # the smoke test needs one single-process arm
        del fns["1x2"]
    m = {k: median(v) for k, v in interleaved(fns, 1 if quick else 2).items()}
    m.setdefault("1x2", float("nan"))
    batch = cfg.train.batch_size_per_rank
    sec = f"sequences: RVAE training throughput (sines-rvae, batch {batch}/rank)"
    best = max(v for v in (m["1x1"], m["1x2"]) if v == v)
    bare = m["bare 2x1"] / m["bare 1x1"]
    return [
        Result(sec, "torchrun 1 process x 1 thread", m["1x1"], "series/s"),
        *([] if quick else [Result(sec, "torchrun 1 process x 2 threads", m["1x2"], "series/s")]),
        Result(
            sec,
            "torchrun 2 processes x 1 thread (DDP, gloo)",
            m["2x1"],
            "series/s",
            baseline="1 process x 1 thread",
            ratio=m["2x1"] / m["1x1"],
            target=1.6,
            floor=(bare, "the bare DDP loop of the same network, 2 vs 1 process"),
        ),
        Result(
            sec,
            "bare DDP loop of the network (rvae_ddp_profile.py), 2 processes x 1 thread",
            m["bare 2x1"],
            "series/s",
            baseline=f"its 1 process x 1 thread, {m['bare 1x1']:.0f} series/s",
            ratio=bare,
        ),
        Result(
            sec,
            "2 DDP processes vs best single process",
            m["2x1"],
            "series/s",
            baseline="best of 1x1, 1x2",
            ratio=m["2x1"] / best,
        ),
    ]


def quality(cfg: PipelineConfig, shards: Path, work: Path) -> list[Result]:
    steps = cfg.train.max_steps
    ours, ours_s = genpar_arm(cfg, shards, work / "rvae")
    peer, peer_s = peer_arm(cfg, shards, steps)
    sec = (
        f"sequences: sines ({cfg.data.num_series} x 24 x 5), {steps} steps of batch "
        f"{GLOBAL_BATCH}, 1 process x {THREADS} thread; {cfg.evaluate.num_samples} generated "
        "vs test"
    )
    real = ours["eval/predictive_mae_real"]
    out = []
    for label, m, s in (("genpar rvae (sines-rvae)", ours, ours_s), ("peer GRU VAE", peer, peer_s)):
        ci = (m.get("eval/discriminative_score_ci_low"), m.get("eval/discriminative_score_ci_high"))
        note = f"trained in {s:.0f} s" + (
            f"; 95% CI {ci[0]:.3f}-{ci[1]:.3f}" if ci[0] is not None else ""
        )
        out.append(
            Result(
                sec,
                f"{label}: eval/discriminative_score",
                m["eval/discriminative_score"],
                "",
                baseline=ABSOLUTE,
                ratio=m["eval/discriminative_score"],
                target=0.05,
                target_kind="max",
                note=note,
            )
        )
        out.append(
            Result(
                sec,
                f"{label}: eval/predictive_mae",
                m["eval/predictive_mae"],
                "",
                baseline=f"real-on-real {real:.4f}",
                ratio=m["eval/predictive_mae"] / real,
                target=1.10,
                target_kind="max",
            )
        )
        out.append(Result(sec, f"{label}: eval/fid (recurrent encoder)", m["eval/fid"], ""))
    out.append(Result(sec, "real-on-real predictive MAE (reference)", real, ""))
    return out


def run(work: Path, quick: bool, steps: int | None = None) -> list[Result]:
    """The section; `steps` (default: the config's 3,000) trains both quality arms."""
    cfg = quality_config(quick, steps)
    shards = build(cfg, work)
    # the throughput arms train the config's batch of 64 per rank on the same shards
    return quality(cfg, shards, work) + throughput(shards, work / "tp", quick)
