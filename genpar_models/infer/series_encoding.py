"""Series in and out of a served sequence model (data.modality sequences), as JSON.

An answer holds each series only up to its length, so no NaN padding crosses the wire
(JSON has no NaN): `{"series": [[[v, ...] per channel] per step] per series, "lengths":
[...], "shape": [n, T, C], "dtype": "float32"}`, in the source's units, the values
`genpar generate` writes into its `samples-NNNNN.npy` (float32, exact through JSON). A
request's `series` cell is one series the same way: a nested list (L, C) with 1 <= L <= T,
or a flat list (L,) for a univariate model, in the source's units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from genpar_models.infer.encoding import EncodingError


def encode_series(values: np.ndarray, lengths: np.ndarray) -> dict[str, Any]:
    """float32 (N, T, C) NaN-padded series and their lengths (N,) as one JSON answer."""
    n, t, c = (int(d) for d in values.shape)
    return {
        "series": [values[i, : int(k)].tolist() for i, k in enumerate(lengths)],
        "lengths": [int(k) for k in lengths],
        "shape": [n, t, c],
        "dtype": "float32",
    }


def decode_series(value: Any, shape: Sequence[int], field: str) -> np.ndarray:
    """A `series` cell as float32 (T, C) of the model's shape, NaN after its length.

    Raises:
        EncodingError: naming `field`, what came and what the model takes.
    """
    t, c = (int(d) for d in shape)
    takes = f"a nested list (steps <= {t}, {c} channels) of finite numbers"
    if not isinstance(value, list | tuple | np.ndarray) or len(value) == 0:
        got = "an empty list" if isinstance(value, list | tuple) else type(value).__name__
        raise EncodingError(f"{field}: expected {takes}, got {got}")
    rows = [r if isinstance(r, list | tuple | np.ndarray) else [r] for r in value]
    if c != 1 and any(len(r) != c for r in rows):
        bad = next(i for i, r in enumerate(rows) if len(r) != c)
        raise EncodingError(
            f"{field}: step {bad} has {len(rows[bad])} channel(s); the model takes {c}"
        )
    if len(rows) > t:
        raise EncodingError(f"{field}: {len(rows)} steps; the model takes at most {t}")
    try:
        arr = np.asarray(rows, dtype=np.float64).reshape(len(rows), c)
    except (TypeError, ValueError) as e:
        raise EncodingError(f"{field}: expected {takes}: {e}") from None
    if not np.isfinite(arr).all():
        step = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise EncodingError(f"{field}: step {step} is not finite (NaN or infinity)")
    out = np.full((t, c), math.nan, np.float32)
    out[: len(arr)] = arr
    return out
