"""Measuring compression variants: speed, size and quality change on identical seeds.

For every variant in `compress.variants` (genpar_models/infer/compress.py): batch-1 latency p50/p95
and samples/s at batch 1 and 256 (all variants timed in interleaved rounds, medians), the
sampling network's size (safetensors, and gzip, which shows what pruning's zeros would save),
and the quality change against fp32 on the same latent seeds and under the evaluation
protocol: ΔFID, ΔKID and, for families with a likelihood, ΔELBO on the test split. The best
variant within `compress.max_fid_increase` is the fastest at batch 256.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from genpar_models.config import PipelineConfig
from genpar_models.data.shards import open_shard_set
from genpar_models.eval import metrics
from genpar_models.eval.likelihood import likelihood_terms
from genpar_models.eval.reference import Extractor, Reference
from genpar_models.eval.samples import generate_features
from genpar_models.eval.scorecard import quality_protocol, score_quality
from genpar_models.infer import compress
from genpar_models.models.conditioning import num_classes_of
from genpar_models.models.export import load_model
from genpar_models.models.registry import get_family
from genpar_models.util import atomic, seeding
from genpar_models.util.threads import one_thread

COLUMNS = [
    "variant",
    "samples_per_s_b1",
    "samples_per_s_b256",
    "latency_ms_p50",
    "latency_ms_p95",
    "size_bytes",
    "size_gzip_bytes",
    "fid",
    "delta_fid",
    "kid",
    "delta_kid",
    "delta_elbo",
    "build_s",
    "warmup_s",
]


def _variant(model, name, cfg, train_u8, device) -> nn.Module:
    sparsity = compress.sparsity_of(name)
    if sparsity is not None:
        steps = cfg.compress.finetune_steps
        return compress.pruned_model(model, sparsity, cfg, train_u8, steps).to(device)
    return compress.build_variant(model, name, device)


def measure_one(model, name, cfg: PipelineConfig, data: dict, device) -> tuple[dict, nn.Module]:
    """One variant's row (size, quality; timed later, with the others) and the variant."""
    t0 = time.perf_counter()
    variant = _variant(model, name, cfg, data["train"], device)
    row: dict[str, Any] = {"variant": name, "build_s": time.perf_counter() - t0}
    net = getattr(variant, compress.sampling_net_name(variant))
    row["size_bytes"], row["size_gzip_bytes"] = compress.size_bytes(net)
    with one_thread(device):  # quality only: the timing (later) uses the machine as it is
        _score(row, variant, cfg, data, device)
    return row, variant


def _score_series(variant: nn.Module, cfg: PipelineConfig, data: dict) -> dict[str, float]:
    """FID and KID of a sequence model's variant in the recurrent encoder's feature space."""
    from genpar_models.eval.sequence_scorecard import load_encoder, sample_blocks

    extractor, ref = data["prepared"]
    series, _ = sample_blocks(variant, cfg.evaluate.num_samples, data["seed"])
    feats = load_encoder(extractor.directory).features(series)
    return {
        "eval/fid": metrics.fid(ref.features, feats),
        "eval/kid": metrics.kid(ref.features, feats),
    }


def _score(row: dict, variant: nn.Module, cfg: PipelineConfig, data: dict, device) -> None:
    extractor, ref = data["prepared"]
    if extractor.kind == "sequence-encoder":
        scores = _score_series(variant, cfg, data)
        row.update(fid=scores["eval/fid"], kid=scores["eval/kid"])
        lik = likelihood_terms(
            variant, data["family"], data["test"], iw_samples=0, seed=data["seed"]
        )
        row["elbo"] = lik["eval/elbo"]
        return
    gen = generate_features(
        variant,
        extractor,
        cfg.evaluate.num_samples,
        seed=data["seed"],
        batch_size=cfg.evaluate.batch_size,
        device=device,
    )
    scores = score_quality(ref, gen, data["ecfg"], data["seed"])
    row.update(fid=scores["eval/fid"], kid=scores["eval/kid"])
    if data["test"] is not None:
        family = data["family"]
        lik = likelihood_terms(
            variant,
            family,
            data["test"],
            iw_samples=0,
            seed=data["seed"],
            binarize=cfg.data.binarize,
            labels=data.get("test_labels"),
        )
        row["elbo"] = lik["eval/elbo"]


def measure_variants(
    model_dir: str | Path,
    shards_dir: str | Path,
    cfg: PipelineConfig,
    *,
    prepared: tuple[Extractor, Reference],
    device: str = "cpu",
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Rows for every variant, deltas against fp32, the best within budget (saved to out_dir)."""
    model, meta = load_model(model_dir)
    shardset = open_shard_set(shards_dir)
    family = get_family(meta["model_spec"]["name"])
    test, test_y = shardset.load("test") if family.likelihood is not None else (None, None)
    seed = seeding.evaluation(cfg.evaluate.seed)
    data = {
        "family": family,
        "train": shardset.load("train")[0],
        "test": test,
        # a conditional VAE's likelihood is log p(x | y), given the test images' labels
        "test_labels": test_y if num_classes_of(model) else None,
        "seed": seed,
        "prepared": prepared,
        "ecfg": cfg.evaluate.model_copy(update={"bootstrap": 0}),  # deltas, not intervals
    }
    rows, variants, skipped = [], {}, {}
    for name in cfg.compress.variants:
        if name == "fp16" and device != "cuda":
            skipped[name] = "fp16 needs CUDA (CPU half-precision convolutions are emulated)"
            continue
        row, variants[name] = measure_one(model, name, cfg, data, device)
        rows.append(row)
    c = cfg.compress
    timings = compress.time_sampling(
        variants,
        latency_repeats=c.latency_repeats,
        throughput_batches=c.throughput_batches,
        seed=seed,
    )
    for row in rows:
        row.update(timings[row["variant"]])
    _deltas(rows)
    best = compress.choose_best(rows, cfg.compress.max_fid_increase)
    if out_dir is not None:
        compress.save_variant(
            out_dir / best["variant"], model, variants[best["variant"]], best["variant"], best
        )
    protocol = quality_protocol(prepared[1], data["ecfg"], cfg.evaluate.num_samples)
    return {
        "rows": rows,
        "best": best["variant"],
        "budget": cfg.compress.max_fid_increase,
        "skipped": skipped,
        "protocol": protocol,
    }


def _deltas(rows: list[dict[str, Any]]) -> None:
    base = rows[0]  # fp32, always first (config validator)
    for r in rows:
        r["delta_fid"] = r["fid"] - base["fid"]
        r["delta_kid"] = r["kid"] - base["kid"]
        if "elbo" in r:
            r["delta_elbo"] = r["elbo"] - base["elbo"]


def table_markdown(result: dict[str, Any]) -> str:
    cols = [c for c in COLUMNS if any(c in r for r in result["rows"])]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        cells = [r["variant"] + (" **best**" if r["variant"] == result["best"] else "")]
        cells += [_fmt(r.get(c)) for c in cols[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Quality budget: ΔFID ≤ {result['budget']:g}."]
    lines += [f"Skipped {k}: {v}." for k, v in result["skipped"].items()]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plot_quality_vs_speed(result: dict[str, Any], path: Path) -> Path:
    """ΔFID against batch-256 samples/s, one labelled point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in result["rows"]:
        ax.scatter(r["samples_per_s_b256"], r["delta_fid"], color="C0")
        ax.annotate(r["variant"], (r["samples_per_s_b256"], r["delta_fid"]), fontsize=8)
    ax.axhline(result["budget"], color="C3", linestyle="--", linewidth=1, label="quality budget")
    ax.set_xlabel("samples/s at batch 256")
    ax.set_ylabel("ΔFID vs fp32 (lower is better)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def rows_as_metrics(result: dict[str, Any]) -> dict[str, float]:
    """compress/<variant>/<column> metrics for MLflow."""
    out = {}
    for r in result["rows"]:
        for k, v in r.items():
            if k != "variant" and isinstance(v, int | float) and np.isfinite(v):
                out[f"compress/{r['variant']}/{k}"] = float(v)
    return out
