"""Schema versions of the config, and how a tree written under an older one is brought up to date.

Each step of `MIGRATIONS` takes a plain tree of version N to N + 1 and says in one line what it
changed; `migrate` applies them in order. A config file without `version` predates versioning:
it is version 1. Add a step here (and bump CONFIG_VERSION) whenever a field is renamed, moved
or changes meaning, so config files, stored run specs and deployment parameters keep loading.

Versions:
    1  genpar 0.1 up to the layout of one home per concern (no `version` key)
    2  `version` recorded in every config; fields unchanged
    3  KID is the unbiased MMD^2 of the full sets: evaluate.kid_subsets and
       evaluate.kid_subset_size are gone. New defaults (a VAE likelihood that is a code length
       of 8-bit pixels; a DCGAN without batch statistics): older files that relied on the old
       defaults get them written in (model.likelihood: bernoulli; model.norm: batch and
       model.spectral_norm: false), so they keep training the model they trained before.
    4  GAN recipes and the training loop: model.gan_loss (a new DCGAN defaults to hinge),
       model.ema_decay, train.n_critic, train.gp_weight, train.r1_gamma, train.lr_schedule,
       train.warmup_steps, train.grad_accum_steps and fp16. Older DCGAN files get
       model.gan_loss: bce written in; every other new field's default is the old maths
       (no EMA, one critic step, no penalty, a constant rate, no accumulation).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from genpar_models.errors import ConfigError

CONFIG_VERSION = 4

Tree = dict[str, Any]


def _v1_to_v2(tree: Tree) -> str:
    return "fields unchanged; the version is now recorded"


def _v2_to_v3(tree: Tree) -> str:
    notes = ["KID is now the unbiased MMD^2 of the full sets (no subsets)"]
    evaluate = tree.get("evaluate")
    if isinstance(evaluate, dict):
        gone = [k for k in ("kid_subsets", "kid_subset_size") if evaluate.pop(k, None) is not None]
        notes += [f"dropped evaluate.{k}" for k in gone]
    model = tree.setdefault("model", {})
    if isinstance(model, dict):
        old_defaults = {"vae": {"likelihood": "bernoulli"}}
        old_defaults["dcgan"] = {"norm": "batch", "spectral_norm": False}
        for key, value in old_defaults.get(model.get("name", "vae"), {}).items():
            if key not in model:
                model[key] = value
                notes.append(f"kept the old default model.{key}={json.dumps(value)}")
        # A full dump of a 0.1 DCGAN config names the VAE's likelihood, which it never read.
        for key in {"dcgan": ("likelihood",)}.get(model.get("name", "vae"), ()):
            model.pop(key, None)
    return "; ".join(notes)


def _v3_to_v4(tree: Tree) -> str:
    notes = ["GAN losses, EMA, critic steps, penalties, lr schedule, accumulation added"]
    model = tree.setdefault("model", {})
    if isinstance(model, dict):
        old_defaults = {"dcgan": {"gan_loss": "bce"}}
        for key, value in old_defaults.get(model.get("name", "vae"), {}).items():
            if key not in model:
                model[key] = value
                notes.append(f"kept the old default model.{key}={json.dumps(value)}")
    return "; ".join(notes)


# MIGRATIONS[n] takes a version-n tree to version n + 1 in place and describes the change.
MIGRATIONS: dict[int, Callable[[Tree], str]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}


def migrate(tree: Tree) -> tuple[Tree, list[str]]:
    """Bring a config tree (with `version`) up to CONFIG_VERSION.

    Returns:
        (the migrated copy, one note per step taken, e.g. "1 -> 2: ...").

    Raises:
        ConfigError: the version is newer than this genpar, or not a version at all.
    """
    version = tree.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"version: expected a positive integer, got {version!r}")
    if version > CONFIG_VERSION:
        raise ConfigError(
            f"version: {version} is newer than this genpar understands ({CONFIG_VERSION}); "
            "upgrade genpar to read this config"
        )
    out, notes = copy.deepcopy(tree), []
    while out["version"] < CONFIG_VERSION:
        step = out["version"]
        notes.append(f"{step} -> {step + 1}: {MIGRATIONS[step](out)}")
        out["version"] = step + 1
    return out, notes
