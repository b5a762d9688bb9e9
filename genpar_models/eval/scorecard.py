"""The evaluation scorecard of a trained model: sample quality for every family, likelihood for
the families that have one.

Sample quality (metrics.py) is measured in the feature space of an extractor trained once per
dataset (features.py, cached by reference.py): FID with a bootstrap interval, KID (the
unbiased MMD^2 of the full sets, with a bootstrap interval and standard error of that same
statistic), precision, recall, density, coverage and a classifier inception score;
`eval/fid_floor` scores held-out real images the extractor never saw as if they were samples,
the floor a model could reach at that sample size. Samples are drawn in seeded blocks
(samples.py). A family with a likelihood (`Family.likelihood`) adds the likelihood scorecard
(likelihood.py); a conditional model (model.conditional) adds intra-class FID and CAS
(conditional.py).

Every report carries its protocols (protocol.py) and which cached parts were reused; results
are plain dicts, written as JSON and Markdown by the caller.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from genpar_models.config import EvaluateConfig, PipelineConfig
from genpar_models.data.shards import open_shard_set
from genpar_models.eval import metrics, uncertainty
from genpar_models.eval.likelihood import likelihood_scorecard
from genpar_models.eval.protocol import CONDITIONAL, LIKELIHOOD, QUALITY, protocol_id
from genpar_models.eval.reference import (
    Extractor,
    Reference,
    cache_root,
    ensure_extractor,
    ensure_reference,
)
from genpar_models.eval.samples import SAMPLE_BLOCK, Generated, generate_features
from genpar_models.models.conditioning import num_classes_of
from genpar_models.models.export import count_parameters, load_model, variants_of
from genpar_models.models.registry import get_family
from genpar_models.util import seeding
from genpar_models.util.threads import one_thread


def score_quality(ref: Reference, gen: Generated, cfg: EvaluateConfig, seed: int) -> dict:
    """Sample-quality metrics of generated features against the real reference."""
    fid = metrics.fid(ref.features, gen.features)
    kid = metrics.kid(ref.features, gen.features)
    out = {"eval/fid": fid, "eval/kid": kid}
    prdc = metrics.prdc(ref.features, gen.features, nearest_k=cfg.nearest_k)
    out.update({f"eval/{k}": v for k, v in prdc.items()})
    if len(ref.floor_features) >= 2:
        out["eval/fid_floor"] = metrics.fid(ref.features, ref.floor_features)
    if gen.logits is not None:
        out["eval/inception_score"], out["eval/inception_score_std"] = metrics.inception_score(
            gen.logits, seed=seed
        )
    if cfg.bootstrap > 0:
        kw = {"resamples": cfg.bootstrap, "confidence": cfg.confidence, "seed": seed}
        lo, hi = uncertainty.fid_interval(ref.features, gen.features, fid, **kw)
        out["eval/fid_ci_low"], out["eval/fid_ci_high"] = lo, hi
        lo, hi, std = uncertainty.kid_bootstrap(ref.features, gen.features, kid, **kw)
        out["eval/kid_ci_low"], out["eval/kid_ci_high"], out["eval/kid_std"] = lo, hi, std
    return out


def score_variants(
    model_dir,
    meta: dict,
    extractor: Extractor,
    ref: Reference,
    cfg: EvaluateConfig,
    seed: int,
    device,
) -> dict[str, float]:
    """FID and KID of every other set of weights exported with the model (`eval/fid_<name>`),
    from the same latents: with a moving average, "raw" shows what the average gained."""
    out: dict[str, float] = {}
    for name in variants_of(meta):
        alt, _ = load_model(model_dir, device, variant=name)
        gen = generate_features(
            alt, extractor, cfg.num_samples, seed=seed, batch_size=cfg.batch_size, device=device
        )
        out[f"eval/fid_{name}"] = metrics.fid(ref.features, gen.features)
        out[f"eval/kid_{name}"] = metrics.kid(ref.features, gen.features)
    return out


def quality_protocol(ref: Reference, cfg: EvaluateConfig, n: int) -> dict:
    return {
        **ref.protocol,
        "generated_samples": n,
        "sample_block": SAMPLE_BLOCK,
        "seed": cfg.seed,
        "precision": "fp32",
        "kid": "unbiased MMD2 of the full sets of any sizes, cubic kernel",
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
    if shardset.is_sequences:
        from genpar_models.eval.sequence_scorecard import prepare_sequences

        return prepare_sequences(shardset, cfg, root)
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
    plots_dir: Path | None = None,
) -> dict[str, Any]:
    """The evaluation report of one exported model: metrics, protocols, cache use, timings.

    `prepared` and `generated` let a caller that ran those steps elsewhere (Dask) pass them in;
    whatever is missing is computed here, on `device`. A sequence model writes its plots into
    `plots_dir` when given (sequence_scorecard.py).
    """
    with one_thread(device):
        if open_shard_set(shards_dir, verify=False).is_sequences:
            return _evaluate_sequences(
                model_dir, shards_dir, cfg, prepared, root, plots_dir, generated
            )
        return _evaluate(model_dir, shards_dir, cfg, prepared, generated, device, root)


def _evaluate_sequences(
    model_dir, shards_dir, cfg, prepared, root, plots_dir, generated
) -> dict[str, Any]:
    from genpar_models.eval.sequence_scorecard import evaluate_sequences

    t0 = time.perf_counter()
    model, meta = load_model(model_dir, "cpu")
    shardset = open_shard_set(shards_dir)
    extractor, ref = prepared or prepare(shards_dir, cfg.evaluate, root=root)
    t1 = time.perf_counter()
    scores, protocols, gen = evaluate_sequences(
        model, meta, shardset, cfg, (extractor, ref), plots_dir, generated
    )
    metrics_ = {
        "eval/num_parameters": float(count_parameters(model)),
        "eval/checkpoint_bytes": float(meta["size_bytes"]),
        "eval/sample_ms_per_series": 1000.0 * gen.seconds / max(len(gen.features), 1),
        **scores,
    }
    metrics_["eval/seconds"] = time.perf_counter() - t0
    timings = {"prepare_s": t1 - t0, "generate_s": gen.seconds, "total_s": metrics_["eval/seconds"]}
    return _report(meta, protocols, metrics_, extractor, ref, timings)


def _evaluate(model_dir, shards_dir, cfg, prepared, generated, device, root) -> dict[str, Any]:
    t0, ecfg = time.perf_counter(), cfg.evaluate
    model, meta = load_model(model_dir, device)
    shardset = open_shard_set(shards_dir)
    extractor, ref = prepared or prepare(shards_dir, ecfg, root=root, device=device)
    seed = seeding.evaluation(ecfg.seed)
    t1 = time.perf_counter()
    gen = generated or generate_features(
        model, extractor, ecfg.num_samples, seed=seed, batch_size=ecfg.batch_size, device=device
    )
    scores = score_quality(ref, gen, ecfg, seed)
    scores.update(score_variants(model_dir, meta, extractor, ref, ecfg, seed, device))
    protocols = {QUALITY: quality_protocol(ref, ecfg, len(gen.features))}
    metrics_ = {
        "eval/num_parameters": float(count_parameters(model)),
        "eval/checkpoint_bytes": float(meta["size_bytes"]),
        "eval/sample_ms_per_image": 1000.0 * gen.seconds / max(len(gen.features), 1),
        **scores,
    }
    if "val_accuracy" in extractor.summary:
        metrics_["eval/extractor_accuracy"] = extractor.summary["val_accuracy"]
    family = get_family(meta["model_spec"]["name"])
    if family.likelihood is not None:
        scores, protocols[LIKELIHOOD] = likelihood_scorecard(
            model, family, shardset, ecfg, seed, cfg.data.binarize
        )
        metrics_.update(scores)
    if num_classes_of(model):  # intra-class FID and CAS (conditional.py)
        from genpar_models.eval.conditional import conditional_scorecard

        scores, protocols[CONDITIONAL] = conditional_scorecard(
            model, shardset, ref, gen, ecfg, seed
        )
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
