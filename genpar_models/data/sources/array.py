"""The array source: images in a ``.npy`` (memory-mapped) or a ``.npz``, labels alongside.

Accepted layouts are (N, H, W), (N, H, W, C) and (N, C, H, W) with C in 1, 3, 4; an array is
read channels-first only when shape[1] is a channel count and shape[-1] is not. Files are always
opened with ``allow_pickle=False``: object arrays are refused, never unpickled. Structural
problems (layout, dtype, labels) raise `DataError`; bad values in one sample (NaN, infinity,
outside [0, pixel_max]) only make that sample bad. A ``.npz`` member cannot be memory-mapped,
so the last one read is cached per process instead of being re-read for every partition.
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import numpy as np

from genpar_models.config import DataConfig
from genpar_models.data.images import arrays_to_uint8
from genpar_models.data.sources.types import (
    Partition,
    PartitionSpec,
    SourceInfo,
    build_partition,
    capped,
    check_labels,
    numbered_classes,
    resolve_path,
    sha256_files,
)
from genpar_models.errors import DataError

ACCEPTED_SHAPES = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4"
IMAGE_KEYS = ("images", "x", "X", "data")
LABEL_KEYS = ("labels", "y", "Y")
_CHANNELS = (1, 3, 4)


def _refuse(where: str, e: Exception) -> DataError:
    text = str(e)
    # NumPy's words for an object array under allow_pickle=False (with and without mmap)
    if any(w in text for w in ("pickle", "Object arrays", "Python objects")):
        return DataError(
            f"{where}: holds an object (pickled) array; these are refused, never "
            "unpickled; save plain numeric arrays instead"
        )
    return DataError(f"{where}: cannot be read as a NumPy array ({text})")


def read_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise DataError(f"{path}: not a .npy file (no NumPy header)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise _refuse(str(path), e) from e


def _npz_key(
    path: Path, keys: list[str], chosen: str | None, defaults: tuple[str, ...], field: str
) -> str | None:
    if chosen is not None and chosen not in keys:
        raise DataError(f"{path}: no array named {chosen!r} (data.{field}); the file has {keys}")
    return chosen or next((k for k in defaults if k in keys), None)


@functools.lru_cache(maxsize=1)
def read_npz(
    path: Path, images_key: str | None, labels_key: str | None, stamp: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels or None) from an .npz; `stamp` (size, mtime_ns) keys the cache."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz file (not a zip archive)")
    with np.load(path, allow_pickle=False) as npz:
        keys = list(npz.files)
        ikey = _npz_key(path, keys, images_key, IMAGE_KEYS, "images_key")
        if ikey is None:
            raise DataError(
                f"{path}: no images array (looked for {list(IMAGE_KEYS)}); the file "
                f"has {keys}; set data.images_key"
            )
        lkey = _npz_key(path, keys, labels_key, LABEL_KEYS, "labels_key")
        try:
            images = npz[ikey]
            labels = npz[lkey] if lkey is not None else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise _refuse(f"{path} (key {ikey!r} or {lkey!r})", e) from e
    for array in (images, labels):
        if array is not None:
            array.setflags(write=False)  # shared by every call through the cache
    return images, labels


def open_arrays(cfg: DataConfig) -> tuple[Path, np.ndarray, np.ndarray | None, list[Path]]:
    """(images file, images, labels or None, files that identify the data)."""
    path = resolve_path(cfg)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if cfg.labels_path:
            raise DataError(f"{path}: data.labels_path is for .npy images; use data.labels_key")
        st = path.stat()
        images, labels = read_npz(
            path, cfg.images_key, cfg.labels_key, (st.st_size, st.st_mtime_ns)
        )
        return path, images, labels, [path]
    if suffix != ".npy":
        raise DataError(f"data.path {path}: the array source expects a .npy or .npz file")
    if cfg.images_key or cfg.labels_key:
        raise DataError(f"{path}: data.images_key/labels_key apply to .npz files only")
    if not cfg.labels_path:
        return path, read_npy(path), None, [path]
    labels_path = Path(cfg.labels_path).expanduser().resolve()
    if not labels_path.is_file():
        raise DataError(f"data.labels_path {cfg.labels_path!r} does not exist")
    return path, read_npy(path), read_npy(labels_path), [path, labels_path]


def array_layout(shape: tuple[int, ...], where: str) -> str:
    """ "NHW", "NHWC" or "NCHW"; DataError naming the file, the shape and what is accepted."""
    layout = None
    if len(shape) == 3:
        layout = "NHW"
    elif len(shape) == 4 and shape[-1] in _CHANNELS:
        layout = "NHWC"
    elif len(shape) == 4 and shape[1] in _CHANNELS:
        layout = "NCHW"
    if layout is None or 0 in shape[1:]:
        raise DataError(f"{where}: images have shape {shape}; accepted: {ACCEPTED_SHAPES}")
    if shape[0] == 0:
        raise DataError(f"{where}: holds no images (shape {shape})")
    return layout


def check_arrays(
    images: np.ndarray, labels: np.ndarray | None, cfg: DataConfig, where: str
) -> None:
    array_layout(images.shape, where)
    if images.dtype.kind not in "biuf":
        raise DataError(
            f"{where}: images have dtype {images.dtype}; expected integer, float or "
            "bool pixels (complex, string and object arrays are refused)"
        )
    if labels is None:
        return
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{where}: labels have shape {labels.shape}; expected ({len(images)},), "
            "one integer per image"
        )
    if labels.dtype.kind not in "iu":
        raise DataError(
            f"{where}: labels have dtype {labels.dtype}; expected integers "
            "(convert with labels.astype(np.int64))"
        )
    check_labels(np.asarray(labels), cfg, f"{where} labels")


def survey_array(cfg: DataConfig) -> tuple[SourceInfo, tuple[str, ...]]:
    path, images, labels, identity = open_arrays(cfg)
    check_arrays(images, labels, cfg, str(path))
    default_max = 1.0 if images.dtype.kind in "fb" else 255.0
    info = SourceInfo(
        kind="array",
        uri=str(path),
        fingerprint=sha256_files(identity, prefix="array\n"),
        num_items=capped(len(images), cfg),
        class_names=numbered_classes(np.asarray(labels), cfg) if labels is not None else (),
        pixel_max=cfg.pixel_max or default_max,
    )
    return info, ()


def load_array(spec: PartitionSpec, cfg: DataConfig) -> Partition:
    """Rows [start, stop): values checked and scaled per sample, then normalised."""
    path, images, labels, _ = open_arrays(cfg)
    layout = array_layout(images.shape, str(path))
    if len(images) < spec.stop:
        raise DataError(f"{path}: has {len(images)} images, fewer than when it was planned")
    chunk = np.asarray(images[spec.start : spec.stop])
    if layout == "NCHW":
        chunk = chunk.transpose(0, 2, 3, 1)  # (n, C, H, W) -> (n, H, W, C)
    ids = [f"{path.name}[{row}]" for row in range(spec.start, spec.stop)]
    pixels, ok, bad = arrays_to_uint8(chunk, pixel_max=spec.pixel_max or 255.0, ids=ids)
    if labels is None:
        kept_labels = np.full(int(ok.sum()), -1, dtype=np.int64)
    else:
        kept_labels = np.asarray(labels[spec.start : spec.stop])[ok]
    kept_ids = [ids[i] for i in np.flatnonzero(ok)]
    return build_partition(spec, cfg, ids=kept_ids, pixels=pixels, labels=kept_labels, bad=bad)
