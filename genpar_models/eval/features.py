"""The feature space of the sample-quality metrics: a small network genpar trains per dataset.

FID, KID and the k-NN metrics are only as meaningful as the features they compare. ImageNet's
Inception knows nothing about 8x8 digits and its weights would have to be downloaded, so genpar
trains its own extractor once per dataset (shard-set key): a small classifier when the data has
labels (its logits also give the inception-score analogue, Salimans et al. 2016,
https://arxiv.org/abs/1606.03498), else an autoencoder whose bottleneck is the feature vector.
GroupNorm keeps every feature independent of the batch it was computed in, so scores do not
depend on the evaluation batch size. The trained weights are exported like a model
(safetensors + JSON); their sha256 is the extractor's fingerprint, part of every protocol.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genpar_models.errors import ConfigError
from genpar_models.models.export import META_FILE, export_model, load_exported
from genpar_models.models.layers import down_path, level_channels, plan_levels, up_path
from genpar_models.util.cache import ProcessCache

Kind = Literal["classifier", "autoencoder"]
ARCH_VERSION = 1  # bump when FeatureNet changes: cached extractors are then retrained
_LOADED: ProcessCache[tuple[nn.Module, dict[str, Any]]] = ProcessCache(size=1)


class FeatureNet(nn.Module):
    """Images in [0, 1] (N, C, S, S) -> features (N, feature_dim), plus a training head."""

    def __init__(
        self,
        *,
        kind: Kind,
        image_shape: tuple[int, int, int] | list[int],
        feature_dim: int,
        num_classes: int = 0,
        base_channels: int = 16,
    ) -> None:
        super().__init__()
        if kind == "classifier" and num_classes < 2:
            raise ValueError(f"a classifier needs >= 2 classes, got {num_classes}")
        self.kind = kind
        c, side, _ = (int(d) for d in image_shape)
        n_down, base_side = plan_levels(side)
        widths = level_channels(base_channels, n_down)
        flat = widths[-1] * base_side**2
        self.body = down_path(c, widths, norm="group", activation=nn.SiLU)
        self.embed = nn.Linear(flat, feature_dim)
        if kind == "classifier":
            self.head: nn.Module = nn.Sequential(nn.SiLU(), nn.Linear(feature_dim, num_classes))
        else:
            self.head = nn.Sequential(
                nn.Linear(feature_dim, flat),
                nn.SiLU(),
                nn.Unflatten(1, (widths[-1], base_side, base_side)),
                up_path(widths, norm="group", activation=nn.SiLU),
                nn.Conv2d(widths[0], c, 3, padding=1),
            )

    def features(self, x01: Tensor) -> Tensor:
        h = self.body(2.0 * x01 - 1.0).flatten(1)  # (N, C, S, S) -> (N, C_top*s*s)
        return self.embed(h)  # (N, feature_dim)

    def forward(self, x01: Tensor) -> tuple[Tensor, Tensor]:
        """(features, head output): class logits (N, K) or reconstruction logits (N, C, S, S)."""
        f = self.features(x01)
        return f, self.head(f)


def choose_kind(requested: str, labels: np.ndarray) -> Kind:
    """auto -> classifier when every training image has a label and there are >= 2 classes."""
    labelled = len(labels) > 0 and bool((labels >= 0).all()) and len(np.unique(labels)) >= 2
    if requested == "auto":
        return "classifier" if labelled else "autoencoder"
    if requested == "classifier" and not labelled:
        raise ConfigError(
            "evaluate.extractor=classifier needs a labelled dataset with at least two classes; "
            "this one is unlabelled: use auto or autoencoder"
        )
    return requested  # type: ignore[return-value]


def _loss(net: FeatureNet, x01: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
    _, out = net(x01)
    if net.kind == "classifier":
        return F.cross_entropy(out, y), (out.argmax(1) == y).float().mean()
    return F.binary_cross_entropy_with_logits(out, x01), None


def _to01(images_u8: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_u8)).float().div_(255.0)


def train_extractor(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    spec: dict[str, Any],
    *,
    steps: int,
    seed: int,
    batch_size: int = 64,
) -> tuple[FeatureNet, dict[str, float]]:
    """Train a FeatureNet on uint8 images (and labels); return it with its loss and accuracy."""
    torch.manual_seed(seed)
    net = FeatureNet(**spec)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    rng = np.random.default_rng(seed)
    images, labels = train
    t0, losses = time.perf_counter(), []
    net.train()
    for _ in range(steps):
        idx = rng.integers(0, len(images), size=min(batch_size, len(images)))
        loss, _ = _loss(net, _to01(images[idx]), torch.from_numpy(labels[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval()
    summary = {"train_loss": float(np.mean(losses[-50:])), "seconds": time.perf_counter() - t0}
    summary.update(score_extractor(net, *val))
    return net, summary


@torch.no_grad()
def score_extractor(net: FeatureNet, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Held-out loss (and accuracy for a classifier), averaged over images."""
    if len(images) == 0:
        return {}
    totals = {"loss": 0.0, "accuracy": 0.0}
    for i in range(0, len(images), 256):
        x, y = _to01(images[i : i + 256]), torch.from_numpy(labels[i : i + 256])
        loss, acc = _loss(net, x, y)
        totals["loss"] += loss.item() * len(x)
        totals["accuracy"] += (acc.item() if acc is not None else 0.0) * len(x)
    out = {"val_loss": totals["loss"] / len(images)}
    if net.kind == "classifier":
        out["val_accuracy"] = totals["accuracy"] / len(images)
    return out


def save_extractor(directory: Path, net: FeatureNet, spec: dict[str, Any], meta: dict) -> str:
    """Export the extractor (safetensors + model.json); return its fingerprint (sha256)."""
    export_model(directory, module=net, spec=spec, meta=meta)
    return load_exported(directory)[1]["sha256"]


def load_extractor(directory: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A saved extractor in eval mode, and its model.json; cached per process (Dask workers)."""
    return _LOADED.get(str(directory), lambda: _load_extractor(Path(directory)))


def _load_extractor(directory: Path) -> tuple[nn.Module, dict[str, Any]]:
    meta = json.loads((directory / META_FILE).read_text())
    spec = dict(meta["model_spec"])
    if spec["kind"] == "inception":
        net: nn.Module = load_inception()
    else:
        state, meta = load_exported(directory)  # verifies the weights' sha256
        net = FeatureNet(**spec)
        net.load_state_dict(state, strict=True)
    return net.eval(), meta


@torch.no_grad()
def extract(
    net: nn.Module, images_u8: np.ndarray, *, batch_size: int, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (N, D) float32 and, for a classifier, class logits (N, K) of uint8 images."""
    net = net.to(device)
    feats, logits = [], []
    for i in range(0, len(images_u8), batch_size):
        x = _to01(images_u8[i : i + batch_size]).to(device)
        f, head = net(x)
        feats.append(f.float().cpu().numpy())
        if getattr(net, "kind", None) in ("classifier", "inception"):
            logits.append(head.float().cpu().numpy())
    d = getattr(getattr(net, "embed", None), "out_features", 0)
    out = np.concatenate(feats) if feats else np.zeros((0, d), np.float32)
    return out, (np.concatenate(logits) if logits else None)


# Torch-fidelity's Inception (the TF-FID port). Selected only when both the package and its
# weights are already on this machine: genpar never downloads weights.
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


def inception_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


def load_inception() -> nn.Module:
    """torch-fidelity's InceptionV3 (pool3 features + logits), from local weights only.

    Raises:
        ConfigError: torch-fidelity is not installed or its weights file is not present.
    """
    path = inception_weights_path()
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise ConfigError(
            "evaluate.extractor=inception needs the torch-fidelity package; install it or use auto"
        ) from None
    if not path.is_file():
        raise ConfigError(
            f"evaluate.extractor=inception: weights not found at {path}; genpar never downloads "
            "weights, so copy them there or use evaluate.extractor=auto"
        )

    class _Inception(nn.Module):
        kind = "inception"

        def __init__(self) -> None:
            super().__init__()
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], str(path)
            )

        def forward(self, x01: Tensor) -> tuple[Tensor, Tensor]:
            x = (x01 * 255).round().to(torch.uint8)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # grey -> RGB
            pool, logits = self.net(x)
            return pool, logits

    return _Inception().eval()
