"""The evaluation scorecard of a trained model: sample quality for every model, likelihood for VAEs.

Sample quality (genpar_models/metrics.py) is measured in the feature space of an extractor
trained once per dataset (genpar_models/features.py, cached by genpar_models/reference.py):
FID with a bootstrap interval, KID (mean and std over subsets, plus an interval), precision,
recall, density, coverage and a classifier inception score; `eval/fid_train_test` scores
training images as if they were samples, the floor a model could reach. Samples are drawn in
fixed blocks of SAMPLE_BLOCK, each seeded by (evaluation seed, block index), so the same seed
gives the same samples whether blocks run here, on a GPU or on Dask workers.

VAE likelihood (https://arxiv.org/abs/1312.6114, https://arxiv.org/abs/1509.00519): per-image
reconstruction NLL, KL and ELBO in nats and bits/dim, the K-sample importance-weighted bound on
the test split, and the train-vs-test ELBO gap on equally many training images.

Every report carries its protocols (genpar_models/protocol.py) and which cached parts were
reused; results are plain dicts, written as JSON and Markdown by the caller.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genpar_models import features, metrics, uncertainty
from genpar_models.config import EvaluateConfig, PipelineConfig
from genpar_models.loading import load_model
from genpar_models.models import count_parameters
from genpar_models.protocol import LIKELIHOOD, QUALITY, protocol_id
from genpar_models.reference import (
    Extractor,
    Reference,
    cache_root,
    ensure_extractor,
    ensure_reference,
)
from genpar_models.sampling import (
    cached_model,
    chunk_plan,
    chunk_seed,
    derive_eval_seed,
    one_thread,
    sample_uint8,
    torch_threads,
)
from genpar_models.shards import ShardSet, open_shard_set

SAMPLE_BLOCK = 250


@dataclass(frozen=True)
class Generated:
    features: np.ndarray  # (N, D)
    logits: np.ndarray | None  # (N, K) for classifier extractors
    seconds: float  # sampling + featurising, summed over blocks


def block_plan(num_samples: int) -> list[tuple[int, int]]:
    return chunk_plan(num_samples, SAMPLE_BLOCK)


def _block(model, net, index: int, size: int, seed: int, batch_size: int, device) -> tuple:
    t0 = time.perf_counter()
    images = sample_uint8(model, size, chunk_seed(seed, index))  # (size, C, H, W) uint8
    f, lg = features.extract(net, images, batch_size=batch_size, device=device)
    return f, lg, time.perf_counter() - t0


def generated_block(
    index: int, size: int, *, model_dir: str, extractor_dir: str, seed: int, feature_batch: int
) -> dict[str, Any]:
    """One sample block on a Dask worker (model and extractor loaded once per process).

    `feature_batch`, not `batch_size`: Client.map takes a batch_size of its own.
    """
    with torch_threads(1):
        net, _ = features.load_extractor(extractor_dir)
        model = cached_model(model_dir)
        f, lg, seconds = _block(model, net, index, size, seed, feature_batch, "cpu")
    return {"index": index, "features": f, "logits": lg, "seconds": seconds}


def collect(blocks: list[dict[str, Any]]) -> Generated:
    """Blocks (any order) -> one Generated, in block order."""
    blocks = sorted(blocks, key=lambda b: b["index"])
    logits = [b["logits"] for b in blocks]
    return Generated(
        features=np.concatenate([b["features"] for b in blocks]),
        logits=None if any(lg is None for lg in logits) else np.concatenate(logits),
        seconds=sum(b["seconds"] for b in blocks),
    )


def generate_features(
    model: torch.nn.Module, extractor: Extractor, n: int, *, seed: int, batch_size: int, device
) -> Generated:
    """All blocks in this process, batched on `device`."""
    net, _ = features.load_extractor(extractor.directory)
    model = model.to(device)
    blocks = []
    for index, size in block_plan(n):
        f, lg, s = _block(model, net, index, size, seed, batch_size, device)
        blocks.append({"index": index, "features": f, "logits": lg, "seconds": s})
    return collect(blocks)


def score_quality(ref: Reference, gen: Generated, cfg: EvaluateConfig, seed: int) -> dict:
    """Sample-quality metrics of generated features against the real reference."""
    fid = metrics.fid(ref.features, gen.features)
    kid, kid_std, m = metrics.kid(
        ref.features,
        gen.features,
        subsets=cfg.kid_subsets,
        subset_size=cfg.kid_subset_size,
        seed=seed,
    )
    out = {"eval/fid": fid, "eval/kid_mean": kid, "eval/kid_std": kid_std, "kid_subset_size": m}
    prdc = metrics.prdc(ref.features, gen.features, nearest_k=cfg.nearest_k)
    out.update({f"eval/{k}": v for k, v in prdc.items()})
    out["eval/fid_train_test"] = metrics.fid(ref.features, ref.train_features)
    if gen.logits is not None:
        out["eval/inception_score"], out["eval/inception_score_std"] = metrics.inception_score(
            gen.logits, seed=seed
        )
    if cfg.bootstrap > 0:
        kw = {"resamples": cfg.bootstrap, "confidence": cfg.confidence, "seed": seed}
        lo, hi = uncertainty.fid_interval(ref.features, gen.features, fid, **kw)
        out["eval/fid_ci_low"], out["eval/fid_ci_high"] = lo, hi
        lo, hi = uncertainty.kid_interval(ref.features, gen.features, kid, **kw)
        out["eval/kid_ci_low"], out["eval/kid_ci_high"] = lo, hi
    return out


@torch.no_grad()
def vae_likelihood(
    model: torch.nn.Module, images_u8: np.ndarray, *, iw_samples: int, seed: int
) -> dict[str, float]:
    """Mean per-image ELBO terms (nats and bits/dim) and the IWAE bound over images_u8.

    Images go through in fixed blocks of SAMPLE_BLOCK, each with its own seeded noise, so the
    figures do not depend on any batch size (the bound decodes in small chunks inside).
    """
    device = next(model.parameters()).device
    dims = int(np.prod(images_u8.shape[1:]))
    sums = {"recon": 0.0, "kl": 0.0, "elbo": 0.0, "iw_bound": 0.0}
    for index, size in block_plan(len(images_u8)):
        lo = index * SAMPLE_BLOCK
        x = torch.from_numpy(np.ascontiguousarray(images_u8[lo : lo + size])).float() / 255.0
        x = x.to(device)
        gen = torch.Generator().manual_seed(chunk_seed(seed, index))  # CPU: same on any device
        out = model(x, generator=gen)
        for k in ("recon", "kl", "elbo"):
            sums[k] += out[k].double().sum().item()
        if iw_samples > 0:
            bound = model.importance_weighted_bound(x, iw_samples, generator=gen)
            sums["iw_bound"] += bound.double().sum().item()
    n, per_dim = len(images_u8), dims * math.log(2)
    res = {f"eval/{k}": sums[k] / n for k in ("recon", "kl", "elbo")}
    res["eval/bits_per_dim"] = -res["eval/elbo"] / per_dim
    res["eval/recon_bits_per_dim"] = res["eval/recon"] / per_dim
    res["eval/kl_bits_per_dim"] = res["eval/kl"] / per_dim
    if iw_samples > 0:
        res["eval/iw_bound"] = sums["iw_bound"] / n
        res["eval/iw_bits_per_dim"] = -res["eval/iw_bound"] / per_dim
    return res


def likelihood_scorecard(
    model: torch.nn.Module, shardset: ShardSet, cfg: EvaluateConfig, seed: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """Test-split likelihood, the train-vs-test ELBO gap, and their protocol."""
    test = shardset.load("test")[0] if shardset.count("test") else shardset.load("val")[0]
    test = test if cfg.max_test_samples is None else test[: cfg.max_test_samples]
    out = vae_likelihood(model, test, iw_samples=cfg.iw_samples, seed=seed)
    train = shardset.load("train")[0]
    pick = np.sort(np.random.default_rng(seed).permutation(len(train))[: len(test)])
    on_train = vae_likelihood(model, train[pick], iw_samples=0, seed=seed)
    out["eval/train_elbo"] = on_train["eval/elbo"]
    out["eval/elbo_gap"] = on_train["eval/elbo"] - out["eval/elbo"]  # > 0: better on train
    out["eval/bits_per_dim_gap"] = out["eval/bits_per_dim"] - on_train["eval/bits_per_dim"]
    protocol = {
        "dataset": shardset.manifest.key,
        "split": "test" if shardset.count("test") else "val",
        "test_samples": int(len(test)),
        "train_gap_samples": int(len(pick)),
        "iw_samples": cfg.iw_samples,
        "seed": cfg.seed,
        "precision": "fp32",
    }
    return out, protocol


def quality_protocol(ref: Reference, cfg: EvaluateConfig, n: int, m: int) -> dict:
    return {
        **ref.protocol,
        "generated_samples": n,
        "sample_block": SAMPLE_BLOCK,
        "seed": cfg.seed,
        "precision": "fp32",
        "kid_subsets": cfg.kid_subsets,
        "kid_subset_size": m,
        "nearest_k": cfg.nearest_k,
        "bootstrap": cfg.bootstrap,
        "confidence": cfg.confidence,
    }


def prepare(
    shards_dir: str | Path, cfg: EvaluateConfig, *, root: Path | None = None, device="cpu"
) -> tuple[Extractor, Reference]:
    """The dataset's extractor and real reference statistics (cached; see reference.py)."""
    shardset = open_shard_set(shards_dir)
    root = root or cache_root()
    extractor = ensure_extractor(shardset, cfg, root)
    ref = ensure_reference(
        shardset, extractor, cfg, root, floor_samples=cfg.num_samples, device=device
    )
    return extractor, ref


def evaluate_model(
    model_dir: str | Path,
    shards_dir: str | Path,
    cfg: PipelineConfig,
    *,
    prepared: tuple[Extractor, Reference] | None = None,
    generated: Generated | None = None,
    device: str | torch.device = "cpu",
    root: Path | None = None,
) -> dict[str, Any]:
    """The evaluation report of one exported model: metrics, protocols, cache use, timings.

    `prepared` and `generated` let a caller that ran those steps elsewhere (Dask) pass them in;
    whatever is missing is computed here, on `device`.
    """
    with one_thread(device):
        return _evaluate(model_dir, shards_dir, cfg, prepared, generated, device, root)


def _evaluate(model_dir, shards_dir, cfg, prepared, generated, device, root) -> dict[str, Any]:
    t0, ecfg = time.perf_counter(), cfg.evaluate
    model, meta = load_model(model_dir, device)
    shardset = open_shard_set(shards_dir)
    extractor, ref = prepared or prepare(shards_dir, ecfg, root=root, device=device)
    seed = derive_eval_seed(ecfg.seed)
    t1 = time.perf_counter()
    gen = generated or generate_features(
        model, extractor, ecfg.num_samples, seed=seed, batch_size=ecfg.batch_size, device=device
    )
    scores = score_quality(ref, gen, ecfg, seed)
    m = scores.pop("kid_subset_size")
    protocols = {QUALITY: quality_protocol(ref, ecfg, len(gen.features), m)}
    metrics_ = {
        "eval/num_parameters": float(count_parameters(model)),
        "eval/checkpoint_bytes": float(meta["size_bytes"]),
        "eval/sample_ms_per_image": 1000.0 * gen.seconds / max(len(gen.features), 1),
        **scores,
    }
    if "val_accuracy" in extractor.summary:
        metrics_["eval/extractor_accuracy"] = extractor.summary["val_accuracy"]
    if meta["model_spec"]["name"] == "vae":
        scores, protocols[LIKELIHOOD] = likelihood_scorecard(model, shardset, ecfg, seed)
        metrics_.update(scores)
    metrics_["eval/seconds"] = time.perf_counter() - t0
    timings = {"prepare_s": t1 - t0, "generate_s": gen.seconds, "total_s": metrics_["eval/seconds"]}
    return _report(meta, protocols, metrics_, extractor, ref, timings)


def _report(meta, protocols, metrics_, extractor: Extractor, ref: Reference, timings) -> dict:
    return {
        "model": meta["model_spec"],
        "protocols": protocols,
        "protocol_ids": {k: protocol_id(p) for k, p in protocols.items()},
        "metrics": metrics_,
        "extractor": {
            "kind": extractor.kind,
            "fingerprint": extractor.fingerprint,
            "directory": str(extractor.directory),
            "summary": extractor.summary,
        },
        "cache": {
            "extractor": "trained" if extractor.trained else "cached",
            "reference": "computed" if ref.computed else "cached",
        },
        "reference_dir": str(ref.directory),
        "timings": timings,
    }


def report_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation: {report['model']['name']}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.6g} |" for k, v in sorted(report["metrics"].items())]
    for kind, protocol in report["protocols"].items():
        pid = report["protocol_ids"][kind]
        lines += ["", f"{kind.capitalize()} protocol `{pid}`: "]
        lines[-1] += ", ".join(f"{k}={v}" for k, v in protocol.items())
    cache = report["cache"]
    lines += ["", f"Extractor: {cache['extractor']}; reference statistics: {cache['reference']}."]
    return "\n".join(lines) + "\n"
