"""Every random stream genpar draws, derived from the user's seeds in one place.

The same seed must give the same weights, data order, noise and samples on any machine and
whatever the number of ranks or Dask workers, and a resumed run must continue its streams
exactly. Each stream below therefore has its own seed, a pure function of the config's seed
and the stream's coordinates (rank, step, chunk index):

    stream                 seed                                        drawn by
    initial weights        seed (torch.manual_seed; the same on all ranks)  the trainer
    data order             seed, reshuffled per epoch (DistributedSampler)  the trainer's feed
    training noise         training_noise(seed, rank, step)            each training step
    validation noise       validation_noise(seed)                      each validation pass
    generation chunk i     chunk(generate.seed or seed, i)             sampling
    evaluation             evaluation(evaluate.seed), then chunk(., block)  the scorecard
    real reference subset  evaluate.seed                               the eval cache
    train-split floor set  floor_subset(evaluate.seed)                 the eval cache
    feature extractor      EXTRACTOR_SEED: fixed, no seed moves the feature space

Two mixers: `training_noise` and `validation_noise` use a 64-bit FNV-1a style fold (kept
because every checkpoint written so far resumes on it); everything else uses NumPy's
SeedSequence, which spreads (seed, index) pairs into independent streams.
"""

from __future__ import annotations

import numpy as np

EXTRACTOR_SEED = 0
_FNV_OFFSET = 1469598103934665603
_FNV_PRIME = 1099511628211
_VALIDATION = 7  # the validation stream's coordinate beside (rank, step) pairs
_EVALUATION = (0xE7A1, 0)  # the evaluation stream's coordinates beside chunk indices


def _fold(*parts: int) -> int:
    """A 63-bit seed from integers: (seed, rank, step) tuples never collide in practice."""
    h = _FNV_OFFSET
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * _FNV_PRIME) & 0x7FFFFFFFFFFFFFFF
    return h


def _spread(*parts: int) -> int:
    """A 63-bit seed from integers through SeedSequence (independent, well-spread streams)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def training_noise(seed: int, rank: int, step: int) -> int:
    """Noise of training step `step` (1-based) on rank `rank`."""
    return _fold(seed, rank, step)


def validation_noise(seed: int) -> int:
    """Noise of every validation pass (the same each time, so val metrics compare)."""
    return _fold(seed, _VALIDATION)


def chunk(seed: int, index: int) -> int:
    """Chunk (or sample block) `index` of a stream seeded by `seed`."""
    return _spread(seed, index)


def evaluation(seed: int) -> int:
    """The evaluation's own stream, distinct from every generation chunk's."""
    return _spread(seed, *_EVALUATION)


def floor_subset(seed: int) -> int:
    """The training images scored as the real-vs-real floor, picked apart from the reference."""
    return seed + 1
