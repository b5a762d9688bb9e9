"""Evaluation of a trained model on the held-out test split.

For VAEs: reconstruction NLL, KL and ELBO (nats per image and bits/dim) and an
importance-weighted bound on log p(x) (https://arxiv.org/abs/1509.00519). For every model: a
discriminator-independent sample-quality figure, the Fréchet distance in the PCA space of the
training images (`eval/frechet_pca`, with the train-vs-test value as its floor), plus
parameter count, checkpoint size and sampling latency. Results are plain dicts, written as
JSON and Markdown by the caller.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genpar_models.config import PipelineConfig
from genpar_models.loading import load_model
from genpar_models.metrics import PcaFeatures, frechet_pca
from genpar_models.models import count_parameters
from genpar_models.sampling import derive_eval_seed, sample_uint8
from genpar_models.shards import open_shard_set


def _subset(images: np.ndarray, limit: int | None) -> np.ndarray:
    return images if limit is None or len(images) <= limit else images[:limit]


@torch.no_grad()
def vae_likelihood(
    model: torch.nn.Module, images_u8: np.ndarray, *, batch_size: int, iw_samples: int, seed: int
) -> dict[str, float]:
    """Mean per-image ELBO terms (nats), bits/dim and the IWAE bound over images_u8."""
    gen = torch.Generator().manual_seed(seed)
    dims = int(np.prod(images_u8.shape[1:]))
    sums = {"recon": 0.0, "kl": 0.0, "elbo": 0.0, "iw": 0.0}
    for i in range(0, len(images_u8), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images_u8[i : i + batch_size])).float() / 255.0
        out = model(x, generator=gen)
        for k in ("recon", "kl", "elbo"):
            sums[k] += out[k].double().sum().item()
        if iw_samples > 0:
            sums["iw"] += (
                model.importance_weighted_bound(x, iw_samples, generator=gen).double().sum().item()
            )
    n = len(images_u8)
    res = {f"eval/{k}": sums[k] / n for k in ("recon", "kl", "elbo")}
    res["eval/bits_per_dim"] = -res["eval/elbo"] / (dims * math.log(2))
    if iw_samples > 0:
        res["eval/iw_bound"] = sums["iw"] / n
        res["eval/iw_bits_per_dim"] = -res["eval/iw_bound"] / (dims * math.log(2))
    return res


def sample_quality(
    model: torch.nn.Module,
    train_u8: np.ndarray,
    test_u8: np.ndarray,
    *,
    num_samples: int,
    seed: int,
) -> dict[str, float]:
    """Fréchet distance in the training set's PCA space: generated vs test, and train vs test."""
    pca = PcaFeatures.fit(train_u8.astype(np.float32) / 255.0)
    t0 = time.perf_counter()
    fake = sample_uint8(model, num_samples, seed)
    elapsed = time.perf_counter() - t0
    test01 = test_u8.astype(np.float32) / 255.0
    ref = _subset(train_u8, max(len(test_u8), 2 * pca.components.shape[0]))
    return {
        "eval/frechet_pca": frechet_pca(pca, fake.astype(np.float32) / 255.0, test01),
        "eval/frechet_pca_train_test": frechet_pca(pca, ref.astype(np.float32) / 255.0, test01),
        "eval/sample_ms_per_image": 1000.0 * elapsed / max(num_samples, 1),
    }


def evaluate_model(
    model_dir: str | Path, shards_dir: str | Path, cfg: PipelineConfig
) -> dict[str, Any]:
    """The evaluation report of one exported model on its shard set's test split."""
    model, meta = load_model(model_dir)
    shardset = open_shard_set(shards_dir)
    test, _ = shardset.load("test")
    if len(test) == 0:
        test, _ = shardset.load("val")
    train, _ = shardset.load("train")
    test = _subset(test, cfg.evaluate.max_test_samples)
    seed = derive_eval_seed(cfg.seed)
    metrics: dict[str, float] = {
        "eval/num_parameters": float(count_parameters(model)),
        "eval/checkpoint_bytes": float(meta["size_bytes"]),
        "eval/test_samples": float(len(test)),
    }
    if meta["model_spec"]["name"] == "vae":
        metrics.update(
            vae_likelihood(
                model,
                test,
                batch_size=cfg.evaluate.batch_size,
                iw_samples=cfg.evaluate.iw_samples,
                seed=seed,
            )
        )
    metrics.update(
        sample_quality(model, train, test, num_samples=cfg.evaluate.num_samples, seed=seed)
    )
    return {
        "model": meta["model_spec"],
        "protocol": {
            "split": "test",
            "test_samples": len(test),
            "generated_samples": cfg.evaluate.num_samples,
            "seed": seed,
            "features": "pca32(train pixels)",
            "iw_samples": cfg.evaluate.iw_samples,
            "precision": "fp32",
        },
        "metrics": metrics,
    }


def report_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation: {report['model']['name']}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.6g} |" for k, v in sorted(report["metrics"].items())]
    lines += ["", "Protocol: " + ", ".join(f"{k}={v}" for k, v in report["protocol"].items())]
    return "\n".join(lines) + "\n"
