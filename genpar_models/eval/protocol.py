"""Evaluation protocols: what a metric value was measured under, and whether two compare.

A FID of 12 means nothing without its feature extractor, sample counts, split and seed: users of
other tools routinely compare numbers that silently moved with those. Every evaluation records
two protocols, one for the sample-quality metrics and one for the likelihood metrics, each a
small JSON dict with a short id (hash). Runs are ranked on a metric only when they share the
protocol that metric belongs to; otherwise `check_comparable` raises and names the fields that
differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from genpar_models.config import stable_hash
from genpar_models.errors import GenparError

QUALITY = "quality"
LIKELIHOOD = "likelihood"
CONDITIONAL = "conditional"  # a conditional model's intra-class FID and CAS (conditional.py)
KINDS = (QUALITY, LIKELIHOOD, CONDITIONAL)
CONDITIONAL_PREFIXES = ("eval/intra_fid", "eval/cas")
TAG_PREFIX = "genpar.protocol."  # tags: genpar.protocol.quality = id, ….quality.json = JSON

QUALITY_METRICS = frozenset(
    f"eval/{m}"
    for m in (
        "fid",
        "fid_ci_low",
        "fid_ci_high",
        "fid_floor",
        "fid_raw",  # the raw generator of a model exported with its moving average
        "kid",
        "kid_raw",
        "kid_std",
        "kid_ci_low",
        "kid_ci_high",
        "precision",
        "recall",
        "density",
        "coverage",
        "inception_score",
        "inception_score_std",
        # sequences (sequence_scorecard.py)
        "discriminative_score",
        "discriminative_score_ci_low",
        "discriminative_score_ci_high",
        "predictive_mae",
        "predictive_mae_ci_low",
        "predictive_mae_ci_high",
        "predictive_mae_real",
        "predictive_mae_ratio",
    )
)
LIKELIHOOD_METRICS = frozenset(
    f"eval/{m}"
    for m in (
        "recon",
        "kl",
        "elbo",
        "bits_per_dim",
        "recon_bits_per_dim",
        "kl_bits_per_dim",
        "iw_bound",
        "iw_bits_per_dim",
        "train_elbo",
        "elbo_gap",
        "bits_per_dim_gap",
        # sequences: nats per step beside nats per series
        "elbo_per_step",
        "recon_per_step",
        "kl_per_step",
        "iw_bound_per_step",
        "train_elbo_per_step",
        "elbo_per_step_gap",
    )
)


class ProtocolMismatch(GenparError):
    """Runs were to be ranked on a metric measured under different protocols."""


def protocol_kind(metric: str) -> str | None:
    """Which protocol a metric belongs to (None: it needs none, e.g. a parameter count)."""
    if metric in QUALITY_METRICS or metric.startswith("compress/"):
        return QUALITY
    if metric in LIKELIHOOD_METRICS:
        return LIKELIHOOD
    if metric.startswith(CONDITIONAL_PREFIXES):
        return CONDITIONAL
    return None


def protocol_id(protocol: Mapping[str, Any]) -> str:
    return stable_hash(dict(protocol))[:12]


def difference(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> list[str]:
    """Human-readable field differences between two protocols (None = not recorded)."""
    if a is None or b is None:
        return ["one run has no recorded protocol (evaluated before protocols were logged)"]
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k, '—')} vs {b.get(k, '—')}" for k in keys if a.get(k) != b.get(k)]


def check_comparable(
    metric: str, protocols: Mapping[str, Mapping[str, Any] | None], *, hint: str = ""
) -> str | None:
    """Raise ProtocolMismatch unless every run's protocol for `metric` is the same.

    Args:
        metric: the metric runs are to be ranked on.
        protocols: run name -> its protocol of the metric's kind (None if not recorded).
        hint: how the caller can narrow the selection (appended to the error).

    Returns:
        The shared protocol id (None when the metric needs no protocol or no run has it).
    """
    kind = protocol_kind(metric)
    if kind is None or not protocols:
        return None
    ids = {run: (protocol_id(p) if p is not None else None) for run, p in protocols.items()}
    distinct = sorted(set(ids.values()), key=str)
    if len(distinct) == 1:
        return distinct[0]
    first = next(iter(protocols))
    other = next(run for run, pid in ids.items() if pid != ids[first])
    diffs = "; ".join(difference(protocols[first], protocols[other]))
    groups = ", ".join(
        f"{pid or 'none'} ({sum(v == pid for v in ids.values())} runs)" for pid in distinct
    )
    raise ProtocolMismatch(
        f"refusing to rank runs by {metric}: they were evaluated under {len(distinct)} "
        f"different {kind} protocols [{groups}]; e.g. run {first} vs {other} differ in "
        f"{diffs}. {hint}".strip()
    )
