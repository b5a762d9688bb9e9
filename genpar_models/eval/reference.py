"""The evaluation's cached per-dataset state: the feature extractor and the real data's statistics.

Both are pure functions of their inputs, so both are computed once and reused:

    <root>/extractors/<dataset key>/<kind>-<recipe hash>/     model.safetensors + model.json
    <root>/reference/<dataset key>/<extractor fp>/<hash>/     reference.npz + reference.json

The dataset key is the shard set's key (source fingerprint + preprocessing), the recipe hash
covers the extractor's architecture, width and training steps, and the reference hash covers
(split, sample count, seed). A nightly evaluation on unchanged data therefore neither retrains
the extractor nor re-featurises the real images. Each entry is built in a staging directory
and renamed into place (genpar_models/util/atomic.py), so a reader sees a whole entry or none;
two concurrent builders both finish and the first rename wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genpar_models.config import EvaluateConfig, stable_hash
from genpar_models.data.shards import ShardSet
from genpar_models.eval import features
from genpar_models.eval.splits import check_split_sizes  # its old home: still importable here
from genpar_models.util import atomic, seeding
from genpar_models.util.paths import genpar_home
from genpar_models.util.threads import torch_threads

BASE_CHANNELS = 16


def cache_root() -> Path:
    return genpar_home() / "cache" / "eval"


@dataclass(frozen=True)
class Extractor:
    directory: Path
    kind: str
    fingerprint: str  # sha256 of the weights
    summary: dict[str, Any]  # training loss/accuracy, steps, seconds
    trained: bool  # True: trained by this call; False: found in the cache


@dataclass(frozen=True)
class Reference:
    directory: Path
    protocol: dict[str, Any]  # dataset, extractor_fp, split, real_samples, seed
    features: np.ndarray  # (N, D) real reference features
    logits: np.ndarray | None  # (N, K) class logits (classifier extractors)
    floor_features: np.ndarray  # (M, D) held-out real images the extractor never saw: the floor
    computed: bool  # True: computed by this call; False: found in the cache


def extractor_recipe(shardset: ShardSet, cfg: EvaluateConfig) -> dict[str, Any]:
    """What decides the extractor's weights: architecture, data shape, classes, steps, seed."""
    labels = shardset.load("train")[1]
    kind = cfg.extractor
    if kind != "inception":
        kind = features.choose_kind(cfg.extractor, labels)
    spec: dict[str, Any] = {"kind": kind, "image_shape": list(shardset.image_shape)}
    if kind != "inception":
        spec.update(feature_dim=cfg.feature_dim, base_channels=BASE_CHANNELS)
        if kind == "classifier":
            spec["num_classes"] = int(max(shardset.manifest.num_classes, labels.max() + 1))
    return {"arch": features.ARCH_VERSION, "spec": spec, "steps": cfg.extractor_steps}


def _read(directory: Path, trained: bool) -> Extractor:
    meta = json.loads((directory / "model.json").read_text())
    kind = meta["model_spec"]["kind"]
    return Extractor(directory, kind, meta["sha256"], meta["summary"], trained)


def ensure_extractor(shardset: ShardSet, cfg: EvaluateConfig, root: Path) -> Extractor:
    """The dataset's feature extractor: from the cache, or trained now (train split) and cached."""
    recipe = extractor_recipe(shardset, cfg)
    spec = recipe["spec"]
    name = f"{spec['kind']}-{stable_hash(recipe)[:12]}"
    final = root / "extractors" / shardset.manifest.key / name
    if (final / "model.json").is_file():
        return _read(final, trained=False)
    if spec["kind"] == "inception":
        return _inception_entry(final)
    val = shardset.load("val") if shardset.count("val") else shardset.load("test")
    # One thread: the same weights (so the same fingerprint and protocol) on any core count,
    # and no oversubscription beside other work (measured 7x slower with 2 threads on a
    # loaded 2-core machine).
    with torch_threads(1):
        net, summary = features.train_extractor(
            shardset.load("train"),
            val,
            spec,
            steps=cfg.extractor_steps,
            seed=seeding.EXTRACTOR_SEED,  # fixed: no seed may move the feature space
        )
    meta = {"summary": {**summary, "steps": cfg.extractor_steps}, "dataset": shardset.manifest.key}
    with atomic.staged_directory(final) as staging:
        features.save_extractor(staging, net, spec, meta)
    return _read(final, trained=True)


def _inception_entry(final: Path) -> Extractor:
    features.load_inception()  # raises unless the package and its weights are present
    weights = features.inception_weights_path()
    with atomic.staged_directory(final) as staging:
        atomic.write_json(
            staging / "model.json",
            {
                "model_spec": {"kind": "inception"},
                "sha256": atomic.sha256_file(weights),
                "summary": {"weights": str(weights)},
            },
        )
    return _read(final, trained=False)


def _pick(images: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most `limit` images, a seeded subset in original order (all of them if fewer)."""
    if limit is None or len(images) <= limit:
        return images
    keep = np.sort(np.random.default_rng(seed).choice(len(images), limit, replace=False))
    return images[keep]


def ensure_reference(
    shardset: ShardSet,
    extractor: Extractor,
    cfg: EvaluateConfig,
    root: Path,
    *,
    floor_samples: int,
    device: str | torch.device = "cpu",
) -> Reference:
    """Real reference features and the floor set: from the cache, or computed.

    The floor set is real images of another held-out split (val, or test when the reference is
    val), which the extractor never trained on: FID(reference, floor) is what a model that
    sampled the real distribution would score at that sample size.
    """
    floor_split = "test" if cfg.reference_split == "val" else "val"
    check_split_sizes(shardset, cfg)
    images = _pick(shardset.load(cfg.reference_split)[0], cfg.max_real_samples, cfg.seed)
    held_out = _pick(shardset.load(floor_split)[0], floor_samples, seeding.floor_subset(cfg.seed))
    protocol = {
        "dataset": shardset.manifest.key,
        "extractor": extractor.kind,
        "extractor_fp": extractor.fingerprint[:16],
        "split": cfg.reference_split,
        "real_samples": int(len(images)),
        "seed": cfg.seed,
        "floor_split": floor_split,
        "floor_samples": int(len(held_out)),
    }
    key = stable_hash(protocol)[:12]
    final = root / "reference" / shardset.manifest.key / extractor.fingerprint[:16] / key
    if not (final / "reference.npz").is_file():
        net, _ = features.load_extractor(extractor.directory)
        feats, logits = features.extract(net, images, batch_size=cfg.batch_size, device=device)
        floor, _ = features.extract(net, held_out, batch_size=cfg.batch_size, device=device)
        arrays = {"features": feats, "floor_features": floor}
        mu, sigma = (np.mean(feats, 0, dtype=np.float64), np.cov(feats.astype(np.float64).T))
        arrays.update(mu=mu, sigma=sigma, **({"logits": logits} if logits is not None else {}))
        with atomic.staged_directory(final) as staging:
            with atomic.atomic_path(staging / "reference.npz") as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
            atomic.write_json(staging / "reference.json", protocol)
        computed = True
    else:
        computed = False
    with np.load(final / "reference.npz", allow_pickle=False) as z:
        logits = z["logits"] if "logits" in z.files else None
        feats, floor = z["features"], z["floor_features"]
    return Reference(final, protocol, feats, logits, floor, computed)
