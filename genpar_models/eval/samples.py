"""The evaluation's generated samples: drawn in fixed seeded blocks, featurised as they come.

Samples are drawn in blocks of SAMPLE_BLOCK, each seeded by (evaluation seed, block index), so
the same seed gives bit-identical samples whether the blocks run here or on any number of Dask
workers, in any order, on one device type; a GPU draws the same latents, and its samples are
close to the CPU's but not bit-identical (other kernels; TF32 is off, so both are fp32).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from genpar_models.eval import features
from genpar_models.eval.reference import Extractor
from genpar_models.infer.sampling import cached_model, chunk_plan, sample_uint8
from genpar_models.models.conditioning import num_classes_of, sample_labels
from genpar_models.util import seeding
from genpar_models.util.threads import torch_threads

SAMPLE_BLOCK = 250


@dataclass(frozen=True)
class Generated:
    features: np.ndarray  # (N, D)
    logits: np.ndarray | None  # (N, K) for classifier extractors
    seconds: float  # sampling + featurising, summed over blocks
    labels: np.ndarray | None = None  # (N,) a conditional model's classes (balanced), else None


def block_plan(num_samples: int) -> list[tuple[int, int]]:
    return chunk_plan(num_samples, SAMPLE_BLOCK)


def block_labels(model, index: int, size: int) -> np.ndarray | None:
    """A conditional model's labels of block `index`: balanced over the whole sample set
    (sample i of class i mod K), so per-class scores do not depend on the block layout."""
    k = num_classes_of(model)
    return sample_labels(k, index * SAMPLE_BLOCK, size) if k else None


def _block(model, net, index: int, size: int, seed: int, batch_size: int, device) -> tuple:
    t0 = time.perf_counter()
    labels = block_labels(model, index, size)
    # (size, C, H, W) uint8
    images = sample_uint8(model, size, seeding.chunk(seed, index), labels=labels)
    f, lg = features.extract(net, images, batch_size=batch_size, device=device)
    return f, lg, time.perf_counter() - t0, labels


def generated_block(
    index: int, size: int, *, model_dir: str, extractor_dir: str, seed: int, feature_batch: int
) -> dict[str, Any]:
    """One sample block on a Dask worker (model and extractor loaded once per process).

    `feature_batch`, not `batch_size`: Client.map takes a batch_size of its own.
    """
    with torch_threads(1):
        net, _ = features.load_extractor(extractor_dir)
        model = cached_model(model_dir)
        f, lg, seconds, labels = _block(model, net, index, size, seed, feature_batch, "cpu")
    return {"index": index, "features": f, "logits": lg, "seconds": seconds, "labels": labels}


def collect(blocks: list[dict[str, Any]]) -> Generated:
    """Blocks (any order) -> one Generated, in block order."""
    blocks = sorted(blocks, key=lambda b: b["index"])
    logits = [b["logits"] for b in blocks]
    labels = [b.get("labels") for b in blocks]
    return Generated(
        features=np.concatenate([b["features"] for b in blocks]),
        logits=None if any(lg is None for lg in logits) else np.concatenate(logits),
        seconds=sum(b["seconds"] for b in blocks),
        labels=None if any(y is None for y in labels) else np.concatenate(labels),
    )


def generate_features(
    model: torch.nn.Module, extractor: Extractor, n: int, *, seed: int, batch_size: int, device
) -> Generated:
    """All blocks in this process, batched on `device`."""
    net, _ = features.load_extractor(extractor.directory)
    model = model.to(device)
    blocks = []
    for index, size in block_plan(n):
        f, lg, s, labels = _block(model, net, index, size, seed, batch_size, device)
        blocks.append({"index": index, "features": f, "logits": lg, "seconds": s, "labels": labels})
    return collect(blocks)
