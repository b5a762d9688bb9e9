"""The shard set's manifest: what it holds, where it came from, and the hash of every file.

`manifest.json` lists every shard with its count and sha256, the image shape, normalisation,
the train split's pixel statistics and the source fingerprint; its key (`shard_set_key`) is the
address of the set, a hash of the source fingerprint and the preprocessing config.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genpar_models.config import DataConfig, stable_hash
from genpar_models.config.data import SEQUENCE_FIELDS
from genpar_models.errors import ShardError

SPLITS = ("train", "val", "test")
FORMAT = "genpar-shards/1"
MANIFEST = "manifest.json"
SHARD_NAME = re.compile(r"^(train|val|test)-\d{5}\.(images|labels|values|lengths)\.npy$")
MAX_LISTED_BAD = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShardEntry(_Strict):
    images: str = Field(pattern=SHARD_NAME.pattern)
    labels: str = Field(pattern=SHARD_NAME.pattern)
    count: int = Field(ge=1)
    sha256_images: str = Field(pattern=r"^[0-9a-f]{64}$")
    sha256_labels: str = Field(pattern=r"^[0-9a-f]{64}$")
    # sequences: the int64 (count,) steps of each series; `images` then names the float32
    # (count, T, C) values, NaN after each length
    lengths: str | None = Field(None, pattern=SHARD_NAME.pattern)
    sha256_lengths: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class SplitEntry(_Strict):
    count: int = Field(ge=0)
    shards: list[ShardEntry]


class Manifest(_Strict):
    format: Literal["genpar-shards/1"]
    key: str
    created_at: str
    source: dict[str, Any]
    preprocess: dict[str, Any]
    modality: Literal["images", "sequences"] = "images"
    image_shape: tuple[int, ...]  # a sample's shape: (C, H, W), or sequences' (T, C)
    num_classes: int = Field(ge=0)
    class_names: list[str]
    normalisation: dict[str, Any]
    splits: dict[Literal["train", "val", "test"], SplitEntry]
    skipped: dict[str, Any]
    stats: dict[str, Any]

    @property
    def total(self) -> int:
        return sum(s.count for s in self.splits.values())


def shard_set_key(source_fingerprint: str, data_cfg: DataConfig) -> str:
    """Address of a shard set: hash of (source fingerprint, preprocessing config, format).

    `data.path` is left out on purpose: moving an unchanged folder keeps its shards; so is
    `data.binarize`, which changes what the model sees, not what the shards hold, and
    `data.parallel`, where the partitions were decoded. An image set leaves out the fields
    only sequences read, so its key is what it was before they existed.
    """
    skip = {"path", "binarize", "parallel"}
    if data_cfg.modality == "images":  # image sets keep the keys they had before sequences
        skip |= set(SEQUENCE_FIELDS)
    prep = data_cfg.model_dump(mode="json", exclude=skip)
    return stable_hash({"format": FORMAT, "source": source_fingerprint, "prep": prep})[:20]


def _train_stats(parts: list[dict[str, Any]], channels: int) -> dict[str, Any]:
    total = sum(p.get("pixels", 0) for p in parts)
    if total == 0:
        return {"mean": [0.0] * channels, "std": [0.0] * channels}
    s = np.sum([p["sum"] for p in parts if "sum" in p], axis=0)
    ss = np.sum([p["sumsq"] for p in parts if "sumsq" in p], axis=0)
    mean = s / total
    std = np.sqrt(np.maximum(ss / total - mean**2, 0.0))
    return {"mean": mean.round(6).tolist(), "std": std.round(6).tolist()}


def build_manifest(
    *,
    key: str,
    source: dict[str, Any],
    data_cfg: DataConfig,
    class_names: list[str],
    parts: list[dict[str, Any]],
    bad: list[tuple[str, str]],
    sequence_shape: tuple[int, int] | None = None,
) -> Manifest:
    """Assemble the manifest from the partition summaries (in partition order)."""
    parts = sorted(parts, key=lambda p: p["index"])
    splits = {}
    for split in SPLITS:
        entries = [ShardEntry(**p["shards"][split]) for p in parts if split in p["shards"]]
        splits[split] = SplitEntry(count=sum(e.count for e in entries), shards=entries)
    max_label = max((p["max_label"] for p in parts), default=-1)
    num_classes = len(class_names) or data_cfg.num_classes or (max_label + 1)
    if data_cfg.modality == "sequences":
        assert sequence_shape is not None, "a sequence shard set needs its sequence_shape"
        stats = _train_stats(parts, sequence_shape[1])
        return Manifest(
            format=FORMAT,
            key=key,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            source=source,
            preprocess=data_cfg.model_dump(mode="json", exclude={"binarize", "parallel"}),
            modality="sequences",
            image_shape=tuple(sequence_shape),
            num_classes=max(num_classes, 0),
            class_names=class_names,
            normalisation=sequence_normalisation(stats),
            splits=splits,
            skipped={
                "count": len(bad),
                "samples": [{"id": i, "reason": r} for i, r in bad[:MAX_LISTED_BAD]],
            },
            stats=stats,
        )
    c, s = data_cfg.channels, data_cfg.image_size
    return Manifest(
        format=FORMAT,
        key=key,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source=source,
        preprocess=data_cfg.model_dump(mode="json", exclude={"binarize", "parallel"}),
        image_shape=(c, s, s),
        num_classes=max(num_classes, 0),
        class_names=class_names,
        normalisation={
            "stored": "uint8 (N, C, H, W), 0 = black, 255 = white",
            "model_input": "x / 255 in [0, 1] (VAE) or 2 * x / 255 - 1 in [-1, 1] (GAN)",
            "channels": c,
            "image_size": s,
            "resize": data_cfg.resize,
        },
        splits=splits,
        skipped={
            "count": len(bad),
            "samples": [{"id": i, "reason": r} for i, r in bad[:MAX_LISTED_BAD]],
        },
        stats=_train_stats(parts, c),
    )


def sequence_normalisation(stats: dict[str, Any]) -> dict[str, Any]:
    """Per-channel standardisation from the train split (a constant channel keeps scale 1)."""
    std = [s if s > 1e-8 else 1.0 for s in stats["std"]]
    return {
        "stored": "float32 (N, T, C) in source units, NaN after each series' length",
        "model_input": "(x - mean) / std per channel, NaN padding kept; inverted at generation",
        "mean": stats["mean"],
        "std": std,
    }


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardError(f"{path}: no manifest; this is not a committed shard set") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: manifest is not valid JSON: {e}") from None
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ShardError(f"{path}: invalid manifest field {loc}: {first['msg']}") from None
