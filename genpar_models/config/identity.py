"""What identifies a config: stable hashes, the training job's key, the run's identity, and
redaction for logging.

`train_key` decides which checkpoints a run may resume: two configs with the same key train
the same weights from the same shards, so a re-run continues the interrupted one.
`run_identity` is wider: everything that decides what a pipeline run produces and measures,
compute included (a different number of ranks or threads, another device or precision gives
other numbers). The nightly retrain compares it, beside the data fingerprint and the lineage,
with the champion's to find nights where nothing changed.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of obj."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# Fields added with a default that keeps the earlier behaviour: at that default they stay out
# of both hashes, so upgrading genpar neither orphans an interrupted run's checkpoints (its
# train_key) nor makes the nightly retrain see a changed config on an unchanged night.
_NEUTRAL_DEFAULTS = {
    ("model", "arch"): "dcgan",
    ("model", "conditional"): False,
    ("model", "options"): {},
    ("generate", "label"): None,
    ("generate", "balanced_labels"): False,
}


def _drop_neutral(payload: dict[str, Any]) -> dict[str, Any]:
    for (section, key), default in _NEUTRAL_DEFAULTS.items():
        if section in payload and payload[section].get(key, default) == default:
            payload[section].pop(key, None)
    return payload


def train_key(config: Any, shards_key: str) -> str:
    """Identity of a training job (of a `PipelineConfig`): what decides the weights, not
    evaluation, generation or compute."""
    payload = config.model_dump(mode="json", include={"name", "seed", "model", "train"})
    payload["retrain"] = {"warm_start": config.retrain.warm_start}
    payload["train"].pop("resume", None)
    payload["train"].pop("max_restarts", None)
    payload["train"].pop("allow_reshard", None)  # may a resume reshard: not which weights
    payload["shards"] = shards_key
    return stable_hash(_drop_neutral(payload))[:16]


# Where things run, not how: an address changes no number (results do not depend on which
# Dask cluster or rendezvous host served them), so a restarted cluster is not a new run.
_ADDRESSES = {"dask_address", "rdzv_endpoint", "rdzv_id", "join_timeout_s"}


def run_identity(config: Any) -> str:
    """Identity of a pipeline run (of a `PipelineConfig`): data, model, training, evaluation,
    generation and compute settings, the seed and the name. Left out: where it is tracked,
    the retrain rule (it decides promotion, not the run; warm start is part of `train`),
    compression (another command), the schema version, `train.resume`, compute addresses,
    where preprocessing and generation run (`data.parallel`, `generate.parallel`: the
    shards and samples are the same) and the serving limit
    (`generate.max_samples_per_request`).
    """
    payload = config.model_dump(
        mode="json",
        include={"name", "seed", "data", "model", "train", "evaluate", "generate", "compute"},
    )
    payload["retrain"] = {"warm_start": config.retrain.warm_start}
    payload["train"].pop("resume", None)
    payload["train"].pop("allow_reshard", None)
    payload["generate"].pop("max_samples_per_request", None)  # a serving limit, not the run's
    for key in _ADDRESSES:
        payload["compute"].pop(key, None)
    payload["generate"].pop("parallel", None)  # where chunks are sampled, not what they hold
    payload["data"].pop("parallel", None)  # likewise for the partitions decoded
    return stable_hash(_drop_neutral(payload))[:16]


def redact_webhook(url: str) -> str:
    """A webhook URL safe to show: scheme and host only (tokens live in paths and queries);
    an `env:NAME` reference is shown as is."""
    if url.startswith("env:"):
        return url
    m = re.match(r"^(?P<scheme>[a-zA-Z][\w+.-]*://)(?:[^/@\s]*@)?(?P<host>[^/?#\s]*)", url)
    return f"{m['scheme']}{m['host']}/***" if m else "***"


def redact_uri(uri: str) -> str:
    """Hide credentials in a URI (scheme://user:password@host -> scheme://***@host)."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", uri)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the dotted form of params and overrides."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out
