"""Tensor files that are verified on read: safetensors written atomically, checked by sha256.

Checkpoints and exported models both store tensors this way, with the digest in a JSON file
beside them, so a truncated or flipped file is refused naming the file, and nothing is ever
unpickled.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from genpar_models.errors import CheckpointError
from genpar_models.util import atomic

FORMAT = "genpar-ckpt/1"  # of checkpoint sidecars and exported models' model.json


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> tuple[str, int]:
    """Write `tensors` (detached, on the CPU, contiguous) atomically; return (sha256, bytes)."""
    blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    return atomic.write_bytes(path, blob), len(blob)


def read_tensors(path: Path, sha256: object, *, listed_in: str) -> dict[str, torch.Tensor]:
    """Read a tensor file whose digest `listed_in` (a file name, for the message) records.

    Raises:
        CheckpointError: the file is missing, its sha256 differs, or it is not safetensors.
    """
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise CheckpointError(
            f"{path}: sha256 mismatch ({listed_in} {str(sha256)[:12]}…, file {digest[:12]}…, "
            f"{len(blob)} bytes); truncated or corrupted"
        )
    try:
        return st_load(blob)
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors file: {e}") from None
