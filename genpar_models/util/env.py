"""Settings read from environment variables, failing by the variable's name.

A mistyped `GENPAR_..._S=2m` must stop with an error that names the variable and what it
holds, not a bare `ValueError: could not convert string to float` from deep inside a run.
"""

from __future__ import annotations

import math
import os

from genpar_models.errors import ConfigError


def env_seconds(name: str, default: float, *, minimum: float = 0.0) -> float:
    """Seconds from environment variable `name` (unset or blank: `default`).

    Raises:
        ConfigError: not a number, not finite, or below `minimum`; names the variable.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name}={raw!r}: must be a number of seconds >= {minimum:g}")
    return value
