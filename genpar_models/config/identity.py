"""What identifies a config: stable hashes, the training job's key, and redaction for logging.

`train_key` decides which checkpoints a run may resume: two configs with the same key train
the same weights from the same shards, so a re-run continues the interrupted one.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of obj."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def train_key(config: Any, shards_key: str) -> str:
    """Identity of a training job (of a `PipelineConfig`): what decides the weights, not
    evaluation, generation or compute."""
    payload = config.model_dump(mode="json", include={"name", "seed", "model", "train"})
    payload["retrain"] = {"warm_start": config.retrain.warm_start}
    payload["train"].pop("resume", None)
    payload["train"].pop("max_restarts", None)
    payload["shards"] = shards_key
    return stable_hash(payload)[:16]


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
