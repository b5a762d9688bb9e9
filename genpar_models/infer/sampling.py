"""Sample generation in chunks: each chunk seeded from (seed, chunk index), so the same seed gives
bit-identical samples however the chunks are spread over workers.

`generate_chunk` is the function Dask workers run; it loads the model once per process (a
cache keyed by the model directory and its model.json) and runs torch with one thread,
because the thread count can change floating-point reduction order and therefore the bits.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from genpar_models.models.conditioning import num_classes_of, sample_labels
from genpar_models.models.export import META_FILE, count_parameters, load_model
from genpar_models.util import atomic, seeding
from genpar_models.util.cache import ProcessCache
from genpar_models.util.threads import torch_threads

_MODELS: ProcessCache[torch.nn.Module] = ProcessCache(size=1)  # one model per worker at a time


def chunk_plan(num_samples: int, chunk_size: int) -> list[tuple[int, int]]:
    """[(chunk index, samples in chunk)] covering num_samples."""
    n_chunks = math.ceil(num_samples / chunk_size)
    return [(i, min(chunk_size, num_samples - i * chunk_size)) for i in range(n_chunks)]


def cached_model(model_dir: str) -> torch.nn.Module:
    """The exported model in `model_dir`, loaded once per process (reloaded if rewritten)."""
    meta = (Path(model_dir) / META_FILE).read_text()
    return _MODELS.get((str(model_dir), meta), lambda: load_model(model_dir)[0])


def warm_model(model_dir: str) -> int:
    """Load the model into this worker's cache (run once per worker before timing)."""
    return count_parameters(cached_model(model_dir))


def to_uint8(images01: torch.Tensor) -> np.ndarray:
    return (images01.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


# Samples per forward pass. Measured on this project's 2-core CPU machine, one thread, all four
# default models: 128 was fastest or tied (mnist-vae 2,437 samples/s, digits-dcgan 26,191),
# 256 was 1.6-1.9x slower (its 28x28x32 activations, 26 MB at 256, fall out of cache). The
# latent stream does not depend on it: a sample is the same whatever the batch.
SAMPLE_BATCH = 128


@torch.no_grad()
def sample_uint8(
    model: torch.nn.Module,
    n: int,
    seed: int,
    batch: int = SAMPLE_BATCH,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """n samples as uint8 (n, C, H, W) from one seeded generator, in fixed-size batches; a
    conditional model's of `labels` (n,) (balanced, i mod K, when None)."""
    gen = torch.Generator().manual_seed(seed)
    k = num_classes_of(model)
    if k and labels is None:
        labels = sample_labels(k, 0, n)
    out = []
    for i in range(0, n, batch):
        kw = {} if not k else {"labels": labels[i : i + batch]}
        out.append(to_uint8(model.sample(min(batch, n - i), generator=gen, **kw)))
    return np.concatenate(out) if out else np.zeros((0,), np.uint8)


@torch.no_grad()
def sample_series(
    model: torch.nn.Module, n: int, seed: int, batch: int = SAMPLE_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """A sequence model's n series in the source's units, float32 (n, T, C) with NaN after
    each length, and the lengths int64 (n,), from one seeded generator in fixed-size batches."""
    gen = torch.Generator().manual_seed(seed)
    out = [
        model.denormalise(model.sample(min(batch, n - i), generator=gen)).float().cpu().numpy()
        for i in range(0, n, batch)
    ]
    t, c = model.sequence_shape
    values = np.concatenate(out) if out else np.zeros((0, t, c), np.float32)
    return values, (~np.isnan(values[..., 0])).sum(axis=1).astype(np.int64)


def is_sequence_model(model: torch.nn.Module) -> bool:
    """Whether the network's family models sequences (asked of the family, by its spec)."""
    from genpar_models.models.registry import get_family

    return get_family(model.model_spec()["name"]).modality == "sequences"


def generate_chunk(
    index: int,
    size: int,
    *,
    model_dir: str,
    seed: int,
    out_dir: str,
    class_label: int | None = None,
    chunk_size: int = 0,
) -> dict[str, Any]:
    """Generate chunk `index` and write it as `samples-<index>.npy` (a sequence model: its
    series in source units, NaN after each length, and `samples-<index>.lengths.npy`; a
    conditional model: its labels in `samples-<index>.labels.npy`, all `class_label` or balanced
    over the set, chunk `index` starting at sample index * chunk_size); return a summary."""
    t0 = time.perf_counter()
    model = cached_model(model_dir)
    name = f"samples-{index:05d}.npy"
    if is_sequence_model(model):  # float32 (n, T, C) in source units, and the lengths
        with torch_threads(1):
            values, lengths = sample_series(model, size, seeding.chunk(seed, index))
        lengths_name = f"samples-{index:05d}.lengths.npy"
        return {
            "index": index,
            "count": size,
            "file": name,
            "sha256": atomic.write_npy(Path(out_dir) / name, values),
            "lengths_file": lengths_name,
            "lengths_sha256": atomic.write_npy(Path(out_dir) / lengths_name, lengths),
            "seconds": time.perf_counter() - t0,
        }
    k = num_classes_of(model)
    labels = sample_labels(k, index * chunk_size, size, class_label) if k else None
    with torch_threads(1):
        images = sample_uint8(model, size, seeding.chunk(seed, index), labels=labels)
    digest = atomic.write_npy(Path(out_dir) / name, images)
    out = {"index": index, "count": size, "file": name, "sha256": digest}
    if labels is not None:
        labels_name = f"samples-{index:05d}.labels.npy"
        out["labels_file"] = labels_name
        out["labels_sha256"] = atomic.write_npy(Path(out_dir) / labels_name, labels)
    return {**out, "seconds": time.perf_counter() - t0}


def class_rows(model: torch.nn.Module, cols: int, seed: int) -> np.ndarray:
    """A conditional model's grid samples: `cols` of class 0, then of class 1, ... (uint8
    (K * cols, C, H, W)), one row per class, from one seeded generator."""
    k = num_classes_of(model)
    with torch_threads(1):
        return sample_uint8(model, k * cols, seed, labels=np.repeat(np.arange(k), cols))


# Grids are upscaled (nearest-neighbour, whole multiples) to at least this width, so an 8x8 or
# 28x28 sample is legible at a glance.
GRID_MIN_WIDTH_PX = 512


def make_grid(
    images: np.ndarray, rows: int, min_width_px: int = GRID_MIN_WIDTH_PX, cols: int | None = None
) -> Image.Image:
    """A rows x cols (default rows x rows) PNG grid of uint8 (N, C, H, W) images, filled row
    by row, upscaled (nearest) to at least `min_width_px` wide."""
    n, c, h, w = images.shape
    cols = cols or rows
    k = min(rows * cols, n)
    r = math.ceil(k / cols)
    pad = 1
    grid = np.zeros((c, r * (h + pad) + pad, cols * (w + pad) + pad), np.uint8)
    for i in range(k):
        y, x = divmod(i, cols)
        grid[
            :,
            pad + y * (h + pad) : pad + y * (h + pad) + h,
            pad + x * (w + pad) : pad + x * (w + pad) + w,
        ] = images[i]
    img = Image.fromarray(grid[0] if c == 1 else grid.transpose(1, 2, 0))
    scale = max(1, math.ceil(min_width_px / img.width))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
