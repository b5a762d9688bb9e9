"""Shard sets: the deterministic split, atomic shard writing, the manifest, and verified reading.

A shard set is a directory of `.npy` files (per shard a uint8 image array (N, C, H, W) and an
int64 label array (N,), -1 = unlabelled) plus `manifest.json`, which lists every shard with its
count and sha256, the image shape, normalisation and the source fingerprint. The manifest is
the only way to read shards: `open_shard_set` verifies names, counts, shapes and hashes and
fails naming the file. A set is built in a staging directory and committed by renaming the
whole directory, so a reader never sees a partial set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genpar_models import atomic
from genpar_models.config import DataConfig, stable_hash
from genpar_models.errors import ShardError

SPLITS = ("train", "val", "test")
FORMAT = "genpar-shards/1"
MANIFEST = "manifest.json"
STAGING_PREFIX = "_staging-"
_SHARD_NAME = re.compile(r"^(train|val|test)-\d{5}\.(images|labels)\.npy$")
MAX_LISTED_BAD = 100


# --------------------------------------------------------------------------- the split


def split_fraction(sample_id: str) -> float:
    """Map a sample id to [0, 1) by its sha256: stable across runs, machines and workers."""
    digest = hashlib.sha256(sample_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(sample_id: str, *, val_fraction: float, test_fraction: float) -> str:
    """test if u < test_fraction, val if u < test+val, else train (u = split_fraction(id))."""
    u = split_fraction(sample_id)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


# --------------------------------------------------------------------------- the manifest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShardEntry(_Strict):
    images: str = Field(pattern=_SHARD_NAME.pattern)
    labels: str = Field(pattern=_SHARD_NAME.pattern)
    count: int = Field(ge=1)
    sha256_images: str = Field(pattern=r"^[0-9a-f]{64}$")
    sha256_labels: str = Field(pattern=r"^[0-9a-f]{64}$")


class SplitEntry(_Strict):
    count: int = Field(ge=0)
    shards: list[ShardEntry]


class Manifest(_Strict):
    format: Literal["genpar-shards/1"]
    key: str
    created_at: str
    source: dict[str, Any]
    preprocess: dict[str, Any]
    image_shape: tuple[int, int, int]
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

    `data.path` is left out on purpose: moving an unchanged folder keeps its shards.
    """
    prep = data_cfg.model_dump(mode="json", exclude={"path"})
    return stable_hash({"format": FORMAT, "source": source_fingerprint, "prep": prep})[:20]


# --------------------------------------------------------------------------- writing


def write_partition_shards(
    *,
    index: int,
    ids: list[str],
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: Path,
    val_fraction: float,
    test_fraction: float,
) -> dict[str, Any]:
    """Split one decoded partition by id hash and write its shards atomically.

    Returns a small JSON-able summary (shard entries per split, pixel sums of the train part)
    that the committing step turns into the manifest.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(ids) != len(labels):
        raise ShardError(f"partition {index}: expected uint8 (N,C,H,W) with N ids and labels")
    which = np.array(
        [split_of(i, val_fraction=val_fraction, test_fraction=test_fraction) for i in ids]
    )
    summary: dict[str, Any] = {"index": index, "shards": {}, "max_label": -1}
    for split in SPLITS:
        mask = which == split
        n = int(mask.sum())
        if n == 0:
            continue
        stem = f"{split}-{index:05d}"
        img, lab = images[mask], labels[mask].astype(np.int64)
        entry = ShardEntry(
            images=f"{stem}.images.npy",
            labels=f"{stem}.labels.npy",
            count=n,
            sha256_images=atomic.write_npy(out_dir / f"{stem}.images.npy", img),
            sha256_labels=atomic.write_npy(out_dir / f"{stem}.labels.npy", lab),
        )
        summary["shards"][split] = entry.model_dump()
        if split == "train":
            x = img.astype(np.float64) / 255.0  # (n, C, H, W)
            summary["sum"] = x.sum(axis=(0, 2, 3)).tolist()
            summary["sumsq"] = (x * x).sum(axis=(0, 2, 3)).tolist()
            summary["pixels"] = int(n * img.shape[2] * img.shape[3])
    if len(labels):
        summary["max_label"] = int(labels.max())
    return summary


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
) -> Manifest:
    """Assemble the manifest from the partition summaries (in partition order)."""
    parts = sorted(parts, key=lambda p: p["index"])
    splits = {}
    for split in SPLITS:
        entries = [ShardEntry(**p["shards"][split]) for p in parts if split in p["shards"]]
        splits[split] = SplitEntry(count=sum(e.count for e in entries), shards=entries)
    max_label = max((p["max_label"] for p in parts), default=-1)
    num_classes = len(class_names) or data_cfg.num_classes or (max_label + 1)
    c, s = data_cfg.channels, data_cfg.image_size
    return Manifest(
        format=FORMAT,
        key=key,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source=source,
        preprocess=data_cfg.model_dump(mode="json"),
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


def commit_shard_set(staging: Path, final: Path, manifest: Manifest) -> Path:
    """Write the manifest into `staging` and rename the directory to `final`.

    If another run committed the same key first, ours is discarded and theirs is used
    (same key = same input and config, so the content is the same).
    """
    atomic.write_json(staging / MANIFEST, manifest.model_dump(mode="json"))
    try:
        os.rename(staging, final)
    except OSError:
        if not (final / MANIFEST).is_file():
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return final


def remove_dead_staging(root: Path) -> list[Path]:
    """Remove staging dirs left by processes that no longer run (`_staging-<key>-<pid>-...`)."""
    removed = []
    if not root.is_dir():
        return removed
    for p in root.glob(f"{STAGING_PREFIX}*"):
        m = re.match(rf"^{STAGING_PREFIX}[0-9a-f]+-(\d+)-", p.name)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- reading


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


@dataclass
class ShardSet:
    """A verified, committed shard set."""

    directory: Path
    manifest: Manifest
    _cache: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.manifest.image_shape

    def count(self, split: str) -> int:
        return self.manifest.splits[split].count

    def shard_arrays(self, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Memory-mapped (images, labels) per shard of `split` (no copy)."""
        out = []
        for e in self.manifest.splits[split].shards:
            img = np.load(self.directory / e.images, mmap_mode="r", allow_pickle=False)
            lab = np.load(self.directory / e.labels, mmap_mode="r", allow_pickle=False)
            out.append((img, lab))
        return out

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole split in memory: uint8 (N, C, H, W) and int64 (N,)."""
        if split not in self._cache:
            arrays = self.shard_arrays(split)
            c, h, w = self.image_shape
            if not arrays:
                self._cache[split] = (np.zeros((0, c, h, w), np.uint8), np.zeros(0, np.int64))
            else:
                self._cache[split] = (
                    np.concatenate([a for a, _ in arrays]),
                    np.concatenate([b for _, b in arrays]).astype(np.int64),
                )
        return self._cache[split]


def _verify_entry(directory: Path, e: ShardEntry, shape: tuple[int, int, int]) -> None:
    for name, digest, dtype, tail in (
        (e.images, e.sha256_images, np.uint8, shape),
        (e.labels, e.sha256_labels, np.int64, ()),
    ):
        path = directory / name
        if not path.is_file():
            raise ShardError(f"{path}: listed in the manifest but missing")
        actual = atomic.sha256_file(path)
        if actual != digest:
            raise ShardError(
                f"{path}: sha256 mismatch (manifest {digest[:12]}…, file {actual[:12]}…); "
                "the shard was modified or corrupted"
            )
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            raise ShardError(f"{path}: not a plain .npy array: {err}") from None
        if arr.dtype != dtype or arr.shape != (e.count, *tail):
            raise ShardError(
                f"{path}: expected {np.dtype(dtype).name} {(e.count, *tail)}, "
                f"found {arr.dtype.name} {arr.shape}"
            )


def open_shard_set(directory: str | Path, *, verify: bool = True) -> ShardSet:
    """Open a committed shard set, verifying every file against the manifest.

    Raises:
        ShardError: naming the manifest or shard file that is missing, malformed or altered.
    """
    directory = Path(directory).resolve()
    manifest = read_manifest(directory)
    for split, entry in manifest.splits.items():
        if entry.count != sum(s.count for s in entry.shards):
            raise ShardError(
                f"{directory / MANIFEST}: splits.{split}.count={entry.count} but its shards "
                f"hold {sum(s.count for s in entry.shards)}"
            )
        if verify:
            for e in entry.shards:
                _verify_entry(directory, e, tuple(manifest.image_shape))
    return ShardSet(directory=directory, manifest=manifest)
