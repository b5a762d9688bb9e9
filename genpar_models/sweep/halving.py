"""Synchronous successive halving (Jamieson & Talwalkar 2016, https://arxiv.org/abs/1502.07943):
every live trial trains to the same rung, then the best `keep` fraction trains on.

The decision is a pure function of the rung's scores, with the trial id breaking ties, so the
same trials give the same survivors whatever order or concurrency they trained in. A failed
trial (score None or not finite) ranks last.
"""

from __future__ import annotations

import math

from genpar_models.errors import ConfigError


def rung_steps(max_steps: int, rungs: list[float]) -> list[int]:
    """The rungs as step counts (rounded), strictly increasing and below max_steps.

    Raises:
        ConfigError: rungs that round to the same step, to 0 or to max_steps.
    """
    steps = [round(r * max_steps) for r in rungs]
    if steps[0] < 1 or steps[-1] >= max_steps or len(set(steps)) != len(steps):
        raise ConfigError(
            f"early_stopping.rungs={rungs}: with train.max_steps={max_steps} they are steps "
            f"{steps}, which must be distinct and between 1 and {max_steps - 1}; use fewer "
            "rungs or more steps"
        )
    return steps


def kept(n: int, keep: float) -> int:
    """How many of n trials go on: floor(n x keep), at least 1 (1e-9 absorbs 9 x 1/3)."""
    return max(1, math.floor(n * keep + 1e-9))


def _rank_key(score: float | None, direction: str) -> float:
    if score is None or not math.isfinite(score):
        return math.inf
    return score if direction == "minimize" else -score


def ranked(scores: dict[str, float | None], direction: str) -> list[str]:
    """Trial ids best first; ties (and failures, last) ordered by id."""
    return sorted(scores, key=lambda t: (_rank_key(scores[t], direction), t))


def survivors(scores: dict[str, float | None], keep: float, direction: str) -> list[str]:
    """The ids that go on from a rung, best first (failed trials never go on)."""
    alive = {t: s for t, s in scores.items() if s is not None and math.isfinite(s)}
    return ranked(alive, direction)[: kept(len(scores), keep)] if alive else []
