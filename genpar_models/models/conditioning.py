"""Class-conditional models (`model.conditional: true`): the number of classes a network is
built for, the labels a sample set is drawn with, and the checks of both.

A conditional network (the VAE and DCGAN families) has a `num_classes` attribute above zero and
takes `labels` (int64 (N,)) in `sample`, its forward passes and its likelihood; an
unconditional one has none (or 0). The number of classes comes from the shard manifest, so it
never has to be configured twice. Sample sets are drawn with *balanced* labels by default:
sample number i (counted over the whole set, not per chunk) is of class i mod K, so a chunk's
labels depend only on where it starts, like its seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from genpar_models.errors import ConfigError


def num_classes_of(model: Any) -> int:
    """Classes a network is conditioned on (0: unconditional); a model_spec dict works too."""
    if isinstance(model, Mapping):
        return int(model.get("num_classes", 0) or 0) if model.get("conditional") else 0
    return int(getattr(model, "num_classes", 0) or 0)


def classes_for_training(
    model_cfg: Any, num_classes: int, labels: np.ndarray, where: str
) -> int | None:
    """The number of classes to build a `model.conditional` network for (None: unconditional).

    Raises:
        ConfigError: naming model.conditional, when the data (`where`) has no labels, unlabelled
        rows (-1) or fewer than two classes.
    """
    if not getattr(model_cfg, "conditional", False):
        return None
    k = max(int(num_classes), int(labels.max()) + 1 if len(labels) else 0)
    if len(labels) == 0 or bool((labels < 0).any()) or k < 2:
        unlabelled = int((labels < 0).sum()) if len(labels) else 0
        raise ConfigError(
            f"model.conditional: true needs labelled data with at least two classes, but {where} "
            f"has {k} class(es) and {unlabelled} unlabelled of {len(labels)} training rows; use "
            "a labelled source (digits, mnist5k, a folder with class subfolders, an array or "
            "table with labels) or set model.conditional: false"
        )
    return k


def build_kwargs(num_classes: int | None) -> dict[str, Any]:
    """What `Family.build` is given beside (config, shape): nothing for an unconditional model,
    so families without conditioning (and plugins) keep their two-argument build."""
    return {} if not num_classes else {"num_classes": int(num_classes)}


def sample_labels(num_classes: int, start: int, n: int, label: int | None = None) -> np.ndarray:
    """Labels of samples start .. start+n-1 of a set: all `label`, or balanced (i mod K)."""
    if label is not None:
        return np.full(n, int(label), dtype=np.int64)
    return (np.arange(start, start + n, dtype=np.int64) % max(num_classes, 1)).astype(np.int64)


def check_label(num_classes: int, label: int | None, option: str = "--label") -> None:
    """Raises ConfigError naming `option` for a label on an unconditional model or one out of
    range [0, num_classes)."""
    if label is None:
        return
    if num_classes <= 0:
        raise ConfigError(
            f"{option} {label}: this model is not conditional (model.conditional: false), so it "
            "samples no class; leave out the label"
        )
    if not 0 <= int(label) < num_classes:
        raise ConfigError(
            f"{option} {label}: out of range; this model's classes are 0..{num_classes - 1}"
        )


def check_conditioning(conditional: bool, num_classes: int) -> None:
    """A network's constructor arguments: conditional with >= 2 classes, or neither.

    Raises:
        ValueError: naming both arguments.
    """
    if bool(conditional) != (int(num_classes or 0) > 0) or (conditional and num_classes < 2):
        raise ValueError(
            "conditional=True needs num_classes >= 2 and num_classes needs conditional=True; "
            f"got conditional={conditional!r}, num_classes={num_classes!r}"
        )


def config_classes(model_cfg: Any, num_classes: int | None) -> int:
    """`num_classes` for a network built from a config section.

    Raises:
        ConfigError: model.conditional without a number of classes (no labelled data given).
    """
    if not getattr(model_cfg, "conditional", False):
        return 0
    if not num_classes:
        raise ConfigError(
            "model.conditional: true needs the number of classes of labelled data (the shard "
            "manifest's num_classes); none was given"
        )
    return int(num_classes)


def sampling_labels(num_classes: int, n: int, labels: Any, device: Any) -> Any:
    """The int64 tensor (n,) of labels a conditional network samples with (balanced when
    `labels` is None); None for an unconditional network, which refuses labels.

    Raises:
        ValueError: labels for an unconditional network, of another length, or out of range.
    """
    import torch

    if not num_classes:
        if labels is not None:
            raise ValueError("labels given to an unconditional model")
        return None
    if labels is None:
        labels = sample_labels(num_classes, 0, n)
    if isinstance(labels, torch.Tensor):
        y = labels.to(dtype=torch.long, device="cpu")
    else:
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if y.shape != (n,) or (n and (int(y.min()) < 0 or int(y.max()) >= num_classes)):
        raise ValueError(
            f"labels must be {n} ints in [0, {num_classes}), got shape {tuple(y.shape)}"
        )
    return y.to(device)
