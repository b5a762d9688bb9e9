"""The scorecard of a sequence model (data.modality sequences): likelihood, TimeGAN's post-hoc
scores, FID in a recurrent feature space, bootstrap intervals and the two plots.

    likelihood   eval/elbo and eval/iw_bound in nats per series, eval/*_per_step in nats per
                 step, eval/train_elbo_per_step and eval/elbo_per_step_gap (train - test)
    quality      eval/discriminative_score, eval/predictive_mae beside eval/predictive_mae_real
                 (the real-on-real reference) and their ratio, eval/fid and eval/fid_floor in
                 the recurrent encoder's feature space (sequence_metrics.py), each with a
                 bootstrap interval (eval/*_ci_low, eval/*_ci_high)

The encoder is trained once per shard set and cached like the image extractor
(<cache>/extractors/<dataset key>/sequence-encoder-<recipe hash>/), so the nightly's default
primary metric, eval/fid, works unchanged. Generated series are drawn in seeded blocks of
SAMPLE_BLOCK (the same for any batch size) and compared with the real reference split in the
source's units (post-hoc scores) and in model units (the encoder's features).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genpar_models.config import EvaluateConfig, PipelineConfig, stable_hash
from genpar_models.data.shards import ShardSet
from genpar_models.eval import metrics, sequence_metrics, uncertainty
from genpar_models.eval.likelihood import likelihood_terms
from genpar_models.eval.reference import Extractor, Reference
from genpar_models.eval.samples import SAMPLE_BLOCK, Generated, block_plan
from genpar_models.models.export import export_model, load_exported
from genpar_models.models.family import Family
from genpar_models.util import atomic, seeding
from genpar_models.util.threads import torch_threads

ENCODER_ARCH = "gru-next-step/1"


def _pick(values: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or len(values) <= limit:
        return values
    return values[np.sort(np.random.default_rng(seed).choice(len(values), limit, replace=False))]


def load_encoder(directory: Path) -> sequence_metrics.SequenceEncoder:
    state, meta = load_exported(directory)
    spec = meta["model_spec"]
    enc = sequence_metrics.SequenceEncoder(channels=spec["channels"], hidden=spec["hidden"])
    enc.load_state_dict(state, strict=True)
    return enc.eval()


def ensure_encoder(shardset: ShardSet, cfg: EvaluateConfig, root: Path) -> Extractor:
    """The dataset's recurrent encoder: from the cache, or trained now on the train split."""
    channels = shardset.image_shape[1]
    hidden = max(cfg.feature_dim // 2, 2)
    recipe = {
        "arch": ENCODER_ARCH,
        "channels": channels,
        "hidden": hidden,
        "steps": cfg.extractor_steps,
    }
    final = (
        root / "extractors" / shardset.manifest.key / f"sequence-encoder-{stable_hash(recipe)[:12]}"
    )
    trained = False
    if not (final / "model.json").is_file():
        with torch_threads(1):  # the same weights on any core count
            enc, summary = sequence_metrics.train_sequence_encoder(
                shardset.load("train")[0],
                hidden=hidden,
                steps=cfg.extractor_steps,
                seed=seeding.EXTRACTOR_SEED,
            )
        with atomic.staged_directory(final) as staging:
            export_model(
                staging,
                module=enc,
                spec=enc.spec(),
                meta={"summary": summary, "dataset": shardset.manifest.key},
            )
        trained = True
    meta = json.loads((final / "model.json").read_text())
    return Extractor(final, "sequence-encoder", meta["sha256"], meta["summary"], trained)


def prepare_sequences(
    shardset: ShardSet, cfg: EvaluateConfig, root: Path
) -> tuple[Extractor, Reference]:
    """The encoder and the real reference: features of the reference split and of the floor
    split (real series the encoder never trained on)."""
    extractor = ensure_encoder(shardset, cfg, root)
    enc = load_encoder(extractor.directory)
    real = _pick(shardset.load(cfg.reference_split)[0], cfg.max_real_samples, cfg.seed)
    floor_split = "test" if cfg.reference_split == "val" else "val"
    held_out = _pick(shardset.load(floor_split)[0], cfg.num_samples, seeding.floor_subset(cfg.seed))
    protocol = {
        "dataset": shardset.manifest.key,
        "extractor": extractor.kind,
        "extractor_fp": extractor.fingerprint[:16],
        "split": cfg.reference_split,
        "real_samples": int(len(real)),
        "seed": cfg.seed,
        "floor_split": floor_split,
        "floor_samples": int(len(held_out)),
    }
    with torch_threads(1):
        feats, floor = enc.features(real), enc.features(held_out)
    return extractor, Reference(extractor.directory, protocol, feats, None, floor, True)


@dataclass(frozen=True)
class GeneratedSeries:
    """The evaluation's generated series in model units (N, T, C), NaN-padded, and the seconds
    their blocks took (summed), drawn here or on Dask workers (`series_block`)."""

    series: np.ndarray
    seconds: float


@torch.no_grad()
def _draw(model: torch.nn.Module, index: int, size: int, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seeding.chunk(seed, index))
    return model.sample(size, generator=gen).float().cpu().numpy()


def sample_blocks(model: torch.nn.Module, n: int, seed: int) -> tuple[np.ndarray, float]:
    """n generated series in model units (N, T, C), NaN-padded: seeded blocks of SAMPLE_BLOCK."""
    t0 = time.perf_counter()
    out = [_draw(model, index, size, seed) for index, size in block_plan(n)]
    return np.concatenate(out), time.perf_counter() - t0


def series_block(index: int, size: int, *, model_dir: str, seed: int) -> dict[str, Any]:
    """Block `index` of the evaluation's generated series, drawn in this process (a Dask
    worker) on one thread: the same values `sample_blocks` draws for it."""
    from genpar_models.infer.sampling import cached_model

    t0 = time.perf_counter()
    with torch_threads(1):
        series = _draw(cached_model(model_dir), index, size, seed)
    return {"index": index, "series": series, "seconds": time.perf_counter() - t0}


def collect_series(blocks: list[dict[str, Any]]) -> GeneratedSeries:
    """Blocks (any order) -> the generated set, in block order."""
    blocks = sorted(blocks, key=lambda b: b["index"])
    return GeneratedSeries(
        np.concatenate([b["series"] for b in blocks]), sum(b["seconds"] for b in blocks)
    )


def _source_units(x: np.ndarray, shardset: ShardSet) -> np.ndarray:
    norm = shardset.manifest.normalisation
    return x * np.asarray(norm["std"], np.float32) + np.asarray(norm["mean"], np.float32)


def _steps_of(x: np.ndarray) -> int:
    return int((~np.isnan(x[..., 0])).sum())


def sequence_likelihood(
    model, family: Family, shardset: ShardSet, cfg: EvaluateConfig, seed: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-series and per-step ELBO and IWAE bound on the test split; the train-vs-test gap."""
    split = "test" if shardset.count("test") else "val"
    test = shardset.load(split)[0]
    test = test if cfg.max_test_samples is None else test[: cfg.max_test_samples]
    out = likelihood_terms(model, family, test, iw_samples=cfg.iw_samples, seed=seed)
    train = shardset.load("train")[0]
    pick = np.sort(np.random.default_rng(seed).permutation(len(train))[: len(test)])
    on_train = likelihood_terms(model, family, train[pick], iw_samples=0, seed=seed)
    per_test, per_train = len(test) / _steps_of(test), len(pick) / _steps_of(train[pick])
    for key in ("elbo", "recon", "kl", "iw_bound"):
        if f"eval/{key}" in out:
            out[f"eval/{key}_per_step"] = out[f"eval/{key}"] * per_test
    out["eval/train_elbo"] = on_train["eval/elbo"]
    out["eval/elbo_gap"] = on_train["eval/elbo"] - out["eval/elbo"]  # > 0: better on train
    out["eval/train_elbo_per_step"] = on_train["eval/elbo"] * per_train
    out["eval/elbo_per_step_gap"] = out["eval/train_elbo_per_step"] - out["eval/elbo_per_step"]
    protocol = {
        "likelihood": "gaussian, learned scale, standardised units",
        "dataset": shardset.manifest.key,
        "split": split,
        "test_samples": int(len(test)),
        "train_gap_samples": int(len(pick)),
        "iw_samples": cfg.iw_samples,
        "seed": cfg.seed,
        "precision": "fp32",
    }
    return out, protocol


def sequence_quality(
    real_std: np.ndarray,
    gen_std: np.ndarray,
    train_std: np.ndarray,
    ref: Reference,
    extractor: Extractor,
    shardset: ShardSet,
    cfg: EvaluateConfig,
    seed: int,
) -> dict[str, float]:
    """FID, the discriminative score and the predictive MAE (with its real reference)."""
    enc = load_encoder(extractor.directory)
    with torch_threads(1):
        gen_feats = enc.features(gen_std)
        out = {"eval/fid": metrics.fid(ref.features, gen_feats)}
        if len(ref.floor_features) >= 2:
            out["eval/fid_floor"] = metrics.fid(ref.features, ref.floor_features)
        real, gen = _source_units(real_std, shardset), _source_units(gen_std, shardset)
        n = min(len(real), len(gen))
        steps = cfg.posthoc_steps
        disc = sequence_metrics.discriminative_score(real[:n], gen[:n], steps=steps, seed=seed)
        tstr = sequence_metrics.predictive_mae(gen, real, steps=steps, seed=seed)
        train = _pick(_source_units(train_std, shardset), len(gen), seed)
        trtr = sequence_metrics.predictive_mae(train, real, steps=steps, seed=seed)
    out.update(
        {
            "eval/discriminative_score": disc.value,
            "eval/predictive_mae": tstr.value,
            "eval/predictive_mae_real": trtr.value,
            "eval/predictive_mae_ratio": tstr.value / max(trtr.value, 1e-12),
        }
    )
    if cfg.bootstrap > 0:
        kw = {"resamples": cfg.bootstrap, "confidence": cfg.confidence, "seed": seed}
        lo, hi = uncertainty.fid_interval(ref.features, gen_feats, out["eval/fid"], **kw)
        out["eval/fid_ci_low"], out["eval/fid_ci_high"] = lo, hi
        lo, hi = sequence_metrics.mean_interval(disc, transform=lambda a: abs(a - 0.5), **kw)
        out["eval/discriminative_score_ci_low"], out["eval/discriminative_score_ci_high"] = lo, hi
        lo, hi = sequence_metrics.mean_interval(tstr, **kw)
        out["eval/predictive_mae_ci_low"], out["eval/predictive_mae_ci_high"] = lo, hi
    return out


def evaluate_sequences(
    model,
    meta: dict,
    shardset: ShardSet,
    cfg: PipelineConfig,
    prepared: tuple[Extractor, Reference],
    plots_dir: Path | None,
    generated: GeneratedSeries | None = None,
) -> tuple[dict[str, float], dict[str, dict], Generated]:
    """(metrics, protocols by kind, the generated set's record) of one sequence model;
    `generated` (drawn on Dask by the caller) or drawn here, the same series either way."""
    from genpar_models.eval.protocol import LIKELIHOOD, QUALITY
    from genpar_models.models.registry import get_family

    ecfg, (extractor, ref) = cfg.evaluate, prepared
    seed = seeding.evaluation(ecfg.seed)
    if generated is None:
        generated = GeneratedSeries(*sample_blocks(model, ecfg.num_samples, seed))
    gen_std, seconds = generated.series, generated.seconds
    real_std = _pick(shardset.load(ecfg.reference_split)[0], ecfg.max_real_samples, ecfg.seed)
    scores = sequence_quality(
        real_std, gen_std, shardset.load("train")[0], ref, extractor, shardset, ecfg, seed
    )
    family = get_family(meta["model_spec"]["name"])
    likelihood, lprotocol = sequence_likelihood(model, family, shardset, ecfg, seed)
    scores.update(likelihood)
    protocols = {
        QUALITY: {
            **ref.protocol,
            "generated_samples": int(len(gen_std)),
            "sample_block": SAMPLE_BLOCK,
            "posthoc_steps": ecfg.posthoc_steps,
            "posthoc": "TimeGAN GRU classifier/predictor, hidden C//2, source units",
            "bootstrap": ecfg.bootstrap,
            "confidence": ecfg.confidence,
            "precision": "fp32",
        },
        LIKELIHOOD: lprotocol,
    }
    if plots_dir is not None:
        from genpar_models.eval.plots import plot_series_embedding, plot_series_pairs

        real, gen = _source_units(real_std, shardset), _source_units(gen_std, shardset)
        plot_series_pairs(real, gen, plots_dir / "real_vs_generated.png")
        plot_series_embedding(real, gen, plots_dir / "pca.png", seed=ecfg.seed)
    record = Generated(features=np.zeros((len(gen_std), 0)), logits=None, seconds=seconds)
    return scores, protocols, record
