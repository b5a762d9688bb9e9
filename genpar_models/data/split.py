"""The deterministic train/val/test split: by a hash of each sample's id, never by position.

The same sample lands in the same split on every run, machine and Dask worker, and adding
samples to a source never moves the old ones between splits.
"""

from __future__ import annotations

import hashlib


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
