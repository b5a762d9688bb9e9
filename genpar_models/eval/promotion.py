"""The promotion rule of the nightly retrain: does a challenger take the `champion` alias?

Pure functions of the scores, their protocols and the `retrain` config, so the rule is tested
on its own and the decision (with its reason, in words) is what gets logged to MLflow, to the
Prefect artifact and to the webhook.

- The first run with no champion promotes.
- Scores are compared only under one protocol (eval/protocol.py): the champion is scored again
  under today's protocol every night, and `decide` checks that the two protocols of the
  primary metric's kind are the same; if they are not, the challenger is not promoted and the
  reason names the fields that differ.
- `rule: margin`: the challenger's score must beat the champion's by *more than*
  `min_improvement`, in the direction `higher_is_better` says.
- `rule: interval`: the challenger's whole bootstrap interval (`<metric>_ci_low` ..
  `<metric>_ci_high`; for `eval/kid_mean`, `eval/kid_ci_low` ..) must lie on the better side
  of the champion's score, by more than `min_improvement`. A metric without an interval never
  promotes under this rule (the reason says so): there is no noise estimate to clear.
- A challenger whose score is missing or not finite never promotes.

`changes` says what differs between the champion's run and tonight's (data, config, code); a
night where nothing does trains nothing, and `unchanged` is its decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from genpar_models.config import PipelineConfig, RetrainConfig
from genpar_models.eval.protocol import ProtocolMismatch, check_comparable, protocol_kind


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
    rule: str = "margin"
    challenger_ci_low: float | None = None
    challenger_ci_high: float | None = None
    protocol: str | None = None  # the id both scores were measured under
    skipped: bool = False  # nothing changed since the champion: nothing was trained

    @property
    def action(self) -> str:
        return "skipped" if self.skipped else "promoted" if self.promote else "kept champion"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "action": self.action}


def improvement(challenger: float, champion: float, higher_is_better: bool) -> float:
    """How much better the challenger is (positive = better), whatever the metric's direction."""
    return challenger - champion if higher_is_better else champion - challenger


def interval_keys(metric: str) -> list[tuple[str, str]]:
    """Where a metric's bootstrap interval may be recorded, in order of preference."""
    keys = [(f"{metric}_ci_low", f"{metric}_ci_high")]
    if metric.endswith("_mean"):  # eval/kid_mean's interval is eval/kid_ci_low/high
        stem = metric.removesuffix("_mean")
        keys.append((f"{stem}_ci_low", f"{stem}_ci_high"))
    return keys


def find_interval(metrics: Mapping[str, float], metric: str) -> tuple[float, float] | None:
    """The (low, high) bootstrap interval of `metric` among a scorecard's metrics, or None."""
    for low, high in interval_keys(metric):
        if low in metrics and high in metrics:
            return float(metrics[low]), float(metrics[high])
    return None


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _margin_verdict(gain: float, versus: str, margin: float) -> tuple[bool, str]:
    if gain > margin:
        return True, f"{versus}: improvement {gain:.6g} > min_improvement {margin:g}"
    return False, f"{versus}: improvement {gain:.6g} is not more than min_improvement {margin:g}"


def _interval_verdict(
    ci: tuple[float, float] | None, champion: float, rule: RetrainConfig, versus: str
) -> tuple[bool, str]:
    if ci is None:
        wanted = " or ".join(f"{lo}/{hi}" for lo, hi in interval_keys(rule.primary_metric))
        return False, (
            f"{versus}: rule interval needs the challenger's bootstrap interval ({wanted}), "
            "which its scorecard does not have: not promoted (use rule: margin for this metric)"
        )
    low, high = ci
    worst = low if rule.higher_is_better else high  # the interval's end nearest the champion
    gain, margin = improvement(worst, champion, rule.higher_is_better), rule.min_improvement
    side = "above" if rule.higher_is_better else "below"
    span = f"interval [{low:.6g}, {high:.6g}]"
    if gain > margin:
        return True, f"{versus}: {span} lies entirely {side} it (by {gain:.6g} > {margin:g})"
    return False, f"{versus}: {span} does not lie entirely {side} it by more than {margin:g}"


def _protocol_check(
    metric: str, protocols: tuple[Mapping[str, Any] | None, Mapping[str, Any] | None] | None
) -> tuple[str | None, str | None]:
    """(shared protocol id, None) or (None, why they cannot be compared)."""
    if protocols is None:
        return None, None
    try:
        shared = check_comparable(metric, {"challenger": protocols[0], "champion": protocols[1]})
    except ProtocolMismatch as e:
        return None, str(e)
    if shared is None and protocol_kind(metric) is not None:  # same only in being unknown
        return None, f"neither score's {protocol_kind(metric)} protocol was recorded"
    return shared, None


def decide(
    challenger: float | None,
    champion: float | None,
    rule: RetrainConfig,
    *,
    interval: tuple[float, float] | None = None,
    protocols: tuple[Mapping[str, Any] | None, Mapping[str, Any] | None] | None = None,
) -> Decision:
    """Apply the promotion rule; `champion` is None when no version holds the alias yet.

    Args:
        interval: the challenger's bootstrap interval of the metric (rule interval).
        protocols: the challenger's and the champion's protocols of the metric's kind.
    """
    metric, margin = rule.primary_metric, rule.min_improvement
    shared, mismatch = _protocol_check(metric, protocols) if champion is not None else (None, None)
    low, high = interval or (None, None)
    base = {"metric": metric, "challenger": challenger, "champion": champion, "rule": rule.rule}
    base |= {"min_improvement": margin, "challenger_ci_low": low, "challenger_ci_high": high}
    base["protocol"] = shared
    if not _finite(challenger):
        reason = f"challenger's {metric} is {challenger}: not a finite score, never promoted"
        return Decision(False, reason, improvement=None, **base)
    if champion is None:
        reason = f"no champion yet: the first challenger ({metric}={challenger:.6g}) promotes"
        return Decision(True, reason, improvement=None, **base)
    if mismatch:
        return Decision(False, f"not promoted: {mismatch}", improvement=None, **base)
    if not _finite(champion):
        reason = f"champion's {metric} is {champion}: any finite challenger score beats it"
        return Decision(True, reason, improvement=None, **base)
    gain = improvement(challenger, champion, rule.higher_is_better)
    better = "higher" if rule.higher_is_better else "lower"
    versus = f"{metric} {challenger:.6g} vs champion {champion:.6g} ({better} is better)"
    if rule.rule == "interval":
        promote, reason = _interval_verdict(interval, champion, rule, versus)
    else:
        promote, reason = _margin_verdict(gain, versus, margin)
    return Decision(promote, reason, improvement=gain, **base)


def changes(recorded: Mapping[str, Any], today: Mapping[str, Any]) -> list[str]:
    """What differs between the champion's run and tonight's, in words ([] = nothing).

    Both are {"fingerprint": source fingerprint, "identity": run identity, "lineage": {field:
    value}}; a field the champion's run did not record counts as changed.
    """
    out = []
    if recorded.get("fingerprint") != today["fingerprint"]:
        was = (recorded.get("fingerprint") or "not recorded")[:12]
        out.append(f"data: source fingerprint {was} -> {today['fingerprint'][:12]}")
    if recorded.get("identity") != today["identity"]:
        was = recorded.get("identity") or "not recorded"
        out.append(f"config: run identity {was} -> {today['identity']}")
    old, new = recorded.get("lineage") or {}, today["lineage"]
    if not old:
        out.append("code: the champion's lineage was not recorded")
    else:
        out += [
            f"code: {k} {old.get(k, '-')} -> {new.get(k, '-')}"
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
        ]
    return out


def unchanged(version: str, data_fingerprint: str, identity: str, rule: RetrainConfig) -> Decision:
    """The decision of a night with nothing to do: the champion stays, nothing was trained."""
    reason = (
        f"unchanged since the champion, version {version}: same data (fingerprint "
        f"{data_fingerprint[:12]}), same run identity ({identity}) and same lineage; nothing "
        "trained (retrain.force: true trains anyway)"
    )
    return Decision(
        False,
        reason,
        metric=rule.primary_metric,
        challenger=None,
        champion=None,
        improvement=None,
        min_improvement=rule.min_improvement,
        rule=rule.rule,
        skipped=True,
    )


def challenger_config(config: PipelineConfig, champion_ref: str | None) -> PipelineConfig:
    """The config the challenger trains with: warm-started from the champion when asked."""
    if not config.retrain.warm_start or champion_ref is None:
        return config
    return config.model_copy(
        update={"train": config.train.model_copy(update={"init_from": champion_ref})}
    )
