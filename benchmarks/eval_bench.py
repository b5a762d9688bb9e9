"""Evaluation cost: time to score a trained model (its full evaluation report), and that time's
share of the training time of the same default config."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import Result, stopwatch
from genpar_models.eval.scorecard import evaluate_model


def run(model_dir: Path, shards_dir: Path, cfg, train_samples_per_s: float) -> list[Result]:
    evaluate_model(model_dir, shards_dir, cfg)  # warm caches (feature extractor, reference stats)
    with stopwatch() as t:
        report = evaluate_model(model_dir, shards_dir, cfg)
    train_s = (
        cfg.train.max_steps
        * cfg.train.batch_size_per_rank
        * cfg.compute.cpu_procs
        / (train_samples_per_s)
    )
    n = cfg.evaluate.num_samples
    quality = report["protocols"]["quality"]
    sec = f"evaluation ({cfg.name}: {n} generated vs {quality['real_samples']} {quality['split']})"
    return [
        Result(
            sec,
            "evaluation, warm caches",
            t["s"],
            "s",
            note=", ".join(sorted(k.removeprefix("eval/") for k in report["metrics"])),
        ),
        Result(
            sec,
            "share of the config's training time",
            t["s"],
            "s",
            baseline=f"training {cfg.train.max_steps} steps ≈ {train_s:.0f} s",
            ratio=t["s"] / train_s,
            target=0.25,
            target_kind="max",
        ),
    ]
