"""The scorecard of a conditional model (model.conditional): intra-class FID and the
classification accuracy score.

Intra-class FID (Miyato & Koyama 2018, section 5): for every class k, the FID between the real
reference images of class k and the generated samples of class k, in the same extractor's
feature space and from the same samples as `eval/fid` (the evaluation draws a conditional
model's samples balanced, sample i of class i mod K); `eval/intra_fid/<k>` and their mean
`eval/intra_fid_mean`. A class with fewer than two rows on either side has no FID and is left
out of the mean (its count is in the protocol).

CAS, the classification accuracy score (Ravuri & Vinyals 2019, https://arxiv.org/abs/1905.10887):
a classifier trained on n generated labelled samples and tested on the real test split
(`eval/cas`), beside the accuracy of the same classifier, same recipe, steps and seed,
trained on n real train images (`eval/cas_real_reference`); their ratio is
`eval/cas_ratio`. A model whose samples carry their class as the data does scores near 1x.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from genpar_models.data.shards import ShardSet
from genpar_models.eval import features, metrics
from genpar_models.eval.reference import BASE_CHANNELS, Reference, _pick
from genpar_models.eval.samples import Generated
from genpar_models.infer.sampling import sample_uint8
from genpar_models.models.conditioning import num_classes_of, sample_labels
from genpar_models.util import seeding

# The CAS classifier's training: the feature extractor's recipe (features.FeatureNet), a fixed
# seed of its own and a seed stream of its own for the generated training set.
CAS_SEED = 14
_CAS_STREAM = 1_000_003  # chunk index of the generated training set's seed (far from blocks)


def intra_fid(
    real: np.ndarray,
    real_labels: np.ndarray,
    fake: np.ndarray,
    fake_labels: np.ndarray,
    num_classes: int,
) -> dict[int, float]:
    """{class: FID of the real rows of that class against the generated rows of it}, for the
    classes with at least two rows on both sides."""
    out = {}
    for k in range(num_classes):
        r, f = real[real_labels == k], fake[fake_labels == k]
        if len(r) >= 2 and len(f) >= 2:
            out[k] = metrics.fid(r, f)
    return out


def classifier_accuracy(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    spec: dict[str, Any],
    *,
    steps: int,
    seed: int = CAS_SEED,
) -> float:
    """Test accuracy of a FeatureNet classifier (`spec`) trained `steps` steps on `train`
    (uint8 images, int labels): the one measurement behind both CAS and its reference."""
    _, summary = features.train_extractor(train, test, spec, steps=steps, seed=seed)
    return float(summary["val_accuracy"])


def classifier_spec(shardset: ShardSet, feature_dim: int, num_classes: int) -> dict[str, Any]:
    return {
        "kind": "classifier",
        "image_shape": list(shardset.image_shape),
        "feature_dim": feature_dim,
        "base_channels": BASE_CHANNELS,
        "num_classes": num_classes,
    }


def conditional_scorecard(
    model: torch.nn.Module,
    shardset: ShardSet,
    ref: Reference,
    gen: Generated,
    cfg: Any,
    seed: int,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Intra-class FID and CAS of a conditional model, and their protocol.

    `ref` and `gen` are the sample-quality scorecard's real reference and generated features
    (gen.labels: the generated samples' classes); `cfg` is the evaluate section.
    """
    k = num_classes_of(model)
    ref_labels = _pick(shardset.load(cfg.reference_split)[1], cfg.max_real_samples, cfg.seed)
    assert gen.labels is not None and len(ref_labels) == len(ref.features)
    per_class = intra_fid(ref.features, ref_labels, gen.features, gen.labels, k)
    out: dict[str, float] = {f"eval/intra_fid/{c}": v for c, v in per_class.items()}
    if per_class:
        out["eval/intra_fid_mean"] = float(np.mean(list(per_class.values())))
    # CAS: n generated (balanced) vs n real train images, the same classifier tested on test.
    train_x, train_y = shardset.load("train")
    test = shardset.load("test") if shardset.count("test") else shardset.load("val")
    n = min(len(train_x), cfg.num_samples)
    pick = np.sort(np.random.default_rng(seeding.floor_subset(seed)).permutation(len(train_x))[:n])
    labels = sample_labels(k, 0, n)
    with torch.no_grad():
        fake_x = sample_uint8(model, n, seeding.chunk(seed, _CAS_STREAM), labels=labels)
    spec = classifier_spec(shardset, cfg.feature_dim, k)
    steps = cfg.extractor_steps
    out["eval/cas"] = classifier_accuracy((fake_x, labels), test, spec, steps=steps)
    real = classifier_accuracy((train_x[pick], train_y[pick]), test, spec, steps=steps)
    out["eval/cas_real_reference"] = real
    out["eval/cas_ratio"] = out["eval/cas"] / real if real > 0 else float("nan")
    protocol = {
        "dataset": shardset.manifest.key,
        "num_classes": k,
        "labels": "balanced: sample i of class i mod num_classes",
        "intra_fid": f"per class, the quality protocol's extractor, reference split "
        f"{cfg.reference_split} and generated samples",
        "intra_fid_classes": len(per_class),
        "cas_classifier": f"FeatureNet classifier (arch {features.ARCH_VERSION}), "
        f"{steps} Adam steps, batch 64, seed {CAS_SEED}",
        "cas_train_samples": int(n),
        "cas_test_split": "test" if shardset.count("test") else "val",
        "cas_test_samples": int(len(test[0])),
        "seed": cfg.seed,
    }
    return out, protocol
