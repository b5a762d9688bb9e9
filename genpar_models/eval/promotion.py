"""The promotion rule of the nightly retrain: does a challenger take the `champion` alias?

A pure function of two scores and the `retrain` config, so the rule is tested on its own and
the decision (with its reason, in words) is what gets logged to MLflow and to the Prefect
artifact. The first run with no champion promotes; otherwise the challenger must beat the
champion on `retrain.primary_metric` by *more than* `retrain.min_improvement`, in the
direction `retrain.higher_is_better` says. A challenger whose score is missing or not finite
never promotes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from genpar_models.config import PipelineConfig, RetrainConfig


@dataclass(frozen=True)
class Decision:
    """What the nightly retrain decided, with both scores and why."""

    promote: bool
    reason: str
    metric: str
    challenger: float | None
    champion: float | None
    improvement: float | None  # > 0 means the challenger is better, in the metric's units
    min_improvement: float

    @property
    def action(self) -> str:
        return "promoted" if self.promote else "kept champion"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "action": self.action}


def improvement(challenger: float, champion: float, higher_is_better: bool) -> float:
    """How much better the challenger is (positive = better), whatever the metric's direction."""
    return challenger - champion if higher_is_better else champion - challenger


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def decide(challenger: float | None, champion: float | None, rule: RetrainConfig) -> Decision:
    """Apply the promotion rule; `champion` is None when no version holds the alias yet."""
    metric, margin = rule.primary_metric, rule.min_improvement
    better = "higher" if rule.higher_is_better else "lower"
    base = {"metric": metric, "challenger": challenger, "champion": champion}
    base["min_improvement"] = margin
    if not _finite(challenger):
        reason = f"challenger's {metric} is {challenger}: not a finite score, never promoted"
        return Decision(False, reason, improvement=None, **base)
    if champion is None:
        reason = f"no champion yet: the first challenger ({metric}={challenger:.6g}) promotes"
        return Decision(True, reason, improvement=None, **base)
    if not _finite(champion):
        reason = f"champion's {metric} is {champion}: any finite challenger score beats it"
        return Decision(True, reason, improvement=None, **base)
    gain = improvement(challenger, champion, rule.higher_is_better)
    versus = f"{metric} {challenger:.6g} vs champion {champion:.6g} ({better} is better)"
    if gain > margin:
        reason = f"{versus}: improvement {gain:.6g} > min_improvement {margin:g}"
        return Decision(True, reason, improvement=gain, **base)
    reason = f"{versus}: improvement {gain:.6g} is not more than min_improvement {margin:g}"
    return Decision(False, reason, improvement=gain, **base)


def challenger_config(config: PipelineConfig, champion_ref: str | None) -> PipelineConfig:
    """The config the challenger trains with: warm-started from the champion when asked."""
    if not config.retrain.warm_start or champion_ref is None:
        return config
    return config.model_copy(
        update={"train": config.train.model_copy(update={"init_from": champion_ref})}
    )
