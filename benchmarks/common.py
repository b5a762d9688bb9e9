"""Shared benchmark machinery: interleaved repeats, medians, machine facts, result records.

Every comparison is a ratio of two measurements taken side by side in the same run, repeated
in alternation (A B A B …) and reduced to medians, so load from the rest of a shared machine
hits both sides alike.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

# A Result whose target is on the value itself (no baseline): its "ratio" is the value.
ABSOLUTE = "target (absolute)"
# --quick (CI's smoke test): a VAE's likelihood with 4 importance samples over 100 test images.
# At a config's own iw_samples (64) over the whole test split it took 45 of the GAN section's 54 s.
QUICK_LIKELIHOOD = ["evaluate.iw_samples=4", "evaluate.max_test_samples=100"]


@dataclass
class Result:
    """One benchmark figure, optionally with a target ratio against a named baseline."""

    section: str
    name: str
    value: float
    unit: str
    baseline: str | None = None
    ratio: float | None = None  # against the baseline; with baseline ABSOLUTE, the value itself
    target: float | None = None  # ratio >= target passes (or <= for max targets)
    target_kind: str = "min"  # "min": ratio must be at least target; "max": at most
    note: str = ""
    samples: list[float] = field(default_factory=list)
    # A floor measured in the same run that bounds what any implementation reaches on this
    # machine (e.g. the plain script split over 2 processes): (its ratio on the same baseline,
    # what it is). A missed target below a floor that itself misses it says so, never "met".
    floor: tuple[float, str] | None = None

    def _passes(self, ratio: float) -> bool:
        assert self.target is not None
        return ratio >= self.target if self.target_kind == "min" else ratio <= self.target

    @property
    def status(self) -> str:
        if self.target is None or self.ratio is None:
            return ""
        if self._passes(self.ratio):
            return "met"
        if self.floor is not None and not self._passes(self.floor[0]):
            return f"MISSED; the floor ({self.floor[1]}: {self.floor[0]:.2f}x) misses it too"
        return "MISSED"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def interleaved(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each fn `repeats` times in alternation; return every measurement by name."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name].append(float(fn()))
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


@contextlib.contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - t0


def machine() -> dict[str, Any]:
    import torch

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info
