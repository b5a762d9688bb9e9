"""Shard sets: atomic shard writing per partition, and verified reading through the manifest.

A shard set is a directory of `.npy` files (per shard a uint8 image array (N, C, H, W) and an
int64 label array (N,), -1 = unlabelled) plus `manifest.json` (manifest.py). The manifest is
the only way to read shards: `open_shard_set` verifies names, counts, shapes and hashes and
fails naming the file. A set is built in a staging directory and committed by renaming the
whole directory (genpar_models/util/atomic.py), so a reader never sees a partial set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genpar_models.data.manifest import (
    MANIFEST,
    SPLITS,
    Manifest,
    ShardEntry,
    read_manifest,
)
from genpar_models.data.split import split_of
from genpar_models.errors import ShardError
from genpar_models.util import atomic


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
    files: list[tuple[Path, np.ndarray]] = []
    counts: dict[str, int] = {}
    for split in SPLITS:
        mask = which == split
        n = int(mask.sum())
        if n == 0:
            continue
        stem = f"{split}-{index:05d}"
        img, lab = images[mask], labels[mask].astype(np.int64)
        files += [(out_dir / f"{stem}.images.npy", img), (out_dir / f"{stem}.labels.npy", lab)]
        counts[split] = n
        if split == "train":
            x = img.astype(np.float64)  # (n, C, H, W)
            x /= 255.0
            summary["sum"] = x.sum(axis=(0, 2, 3)).tolist()
            summary["sumsq"] = np.multiply(x, x, out=x).sum(axis=(0, 2, 3)).tolist()
            summary["pixels"] = int(n * img.shape[2] * img.shape[3])
    digests = iter(atomic.write_npys(files))  # one durable batch: see write_npys
    for split, n in counts.items():
        stem = f"{split}-{index:05d}"
        entry = ShardEntry(
            images=f"{stem}.images.npy",
            labels=f"{stem}.labels.npy",
            count=n,
            sha256_images=next(digests),
            sha256_labels=next(digests),
        )
        summary["shards"][split] = entry.model_dump()
    if len(labels):
        summary["max_label"] = int(labels.max())
    return summary


def write_sequence_shards(
    *,
    index: int,
    ids: list[str],
    values: np.ndarray,
    lengths: np.ndarray,
    labels: np.ndarray,
    out_dir: Path,
    val_fraction: float,
    test_fraction: float,
) -> dict[str, Any]:
    """Split one partition of series by id hash and write values, lengths and labels per split.

    Returns the summary the manifest is built from: shard entries, and the per-channel sums of
    the train split's steps within their lengths (for the normalisation)."""
    if (
        values.dtype != np.float32
        or values.ndim != 3
        or not len(values) == len(ids) == len(lengths)
    ):
        raise ShardError(f"partition {index}: expected float32 (N,T,C) with N ids and lengths")
    which = np.array(
        [split_of(i, val_fraction=val_fraction, test_fraction=test_fraction) for i in ids]
    )
    summary: dict[str, Any] = {"index": index, "shards": {}, "max_label": -1}
    files: list[tuple[Path, np.ndarray]] = []
    counts: dict[str, int] = {}
    for split in SPLITS:
        mask = which == split
        if not mask.any():
            continue
        stem = f"{split}-{index:05d}"
        val, lab, ln = values[mask], labels[mask].astype(np.int64), lengths[mask].astype(np.int64)
        files += [
            (out_dir / f"{stem}.values.npy", val),
            (out_dir / f"{stem}.labels.npy", lab),
            (out_dir / f"{stem}.lengths.npy", ln),
        ]
        counts[split] = int(mask.sum())
        if split == "train":
            x = val.astype(np.float64)
            inside = np.arange(x.shape[1])[None, :] < ln[:, None]  # (n, T)
            x = np.where(inside[:, :, None], x, 0.0)
            summary["sum"] = x.sum(axis=(0, 1)).tolist()
            summary["sumsq"] = (x * x).sum(axis=(0, 1)).tolist()
            summary["pixels"] = int(ln.sum())  # steps: the count behind the per-channel sums
    digests = iter(atomic.write_npys(files))  # one durable batch: see write_npys
    for split, n in counts.items():
        stem = f"{split}-{index:05d}"
        entry = ShardEntry(
            images=f"{stem}.values.npy",
            labels=f"{stem}.labels.npy",
            lengths=f"{stem}.lengths.npy",
            count=n,
            sha256_images=next(digests),
            sha256_labels=next(digests),
            sha256_lengths=next(digests),
        )
        summary["shards"][split] = entry.model_dump()
    if len(labels):
        summary["max_label"] = int(labels.max())
    return summary


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write manifest.json into a (staging) shard directory: the last file of a shard set."""
    path = directory / MANIFEST
    atomic.write_json(path, manifest.model_dump(mode="json"))
    return path


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

    @property
    def is_sequences(self) -> bool:
        return self.manifest.modality == "sequences"

    def lengths(self, split: str) -> np.ndarray:
        """sequences: int64 (N,) steps of each series of `split`, in load() order."""
        entries = self.manifest.splits[split].shards
        if not entries:
            return np.zeros(0, np.int64)
        return np.concatenate([np.load(self.directory / e.lengths) for e in entries])

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole split in memory: uint8 (N, C, H, W) and int64 (N,); sequences: float32
        (N, T, C) standardised as the manifest's normalisation says, NaN after each length."""
        if split not in self._cache and self.is_sequences:
            arrays = self.shard_arrays(split)
            t, c = self.image_shape
            norm = self.manifest.normalisation
            mean = np.asarray(norm["mean"], np.float32)
            std = np.asarray(norm["std"], np.float32)
            values = (
                np.concatenate([a for a, _ in arrays])
                if arrays
                else np.zeros((0, t, c), np.float32)
            )
            labels = (
                np.concatenate([b for _, b in arrays]).astype(np.int64)
                if arrays
                else np.zeros(0, np.int64)
            )
            self._cache[split] = (((values - mean) / std).astype(np.float32), labels)
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


def _verify_entry(directory: Path, e: ShardEntry, shape: tuple[int, ...], seq: bool) -> None:
    files = [
        (e.images, e.sha256_images, np.float32 if seq else np.uint8, shape),
        (e.labels, e.sha256_labels, np.int64, ()),
    ]
    if seq:
        if e.lengths is None or e.sha256_lengths is None:
            raise ShardError(f"{directory / MANIFEST}: sequence shard {e.images} lists no lengths")
        files.append((e.lengths, e.sha256_lengths, np.int64, ()))
    for name, digest, dtype, tail in files:
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
                _verify_entry(
                    directory, e, tuple(manifest.image_shape), manifest.modality == "sequences"
                )
    return ShardSet(directory=directory, manifest=manifest)
