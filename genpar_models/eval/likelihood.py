"""The likelihood scorecard of a family that has one: ELBO terms, bits/dim, the IWAE bound.

Per-image reconstruction NLL, KL and ELBO in nats and bits/dim, the K-sample importance-weighted
bound (Burda et al. 2016, https://arxiv.org/abs/1509.00519) on the test split, and the
train-vs-test ELBO gap on equally many training images. The family supplies the per-sample
terms (`Family.likelihood`); images go through in fixed blocks with their own seeded noise,
so the figures do not depend on any batch size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from genpar_models.config import EvaluateConfig
from genpar_models.data.shards import ShardSet
from genpar_models.eval.samples import SAMPLE_BLOCK, block_plan
from genpar_models.models.conditioning import num_classes_of
from genpar_models.models.family import Family
from genpar_models.util import seeding


@torch.no_grad()
def likelihood_terms(
    model: torch.nn.Module,
    family: Family,
    images_u8: np.ndarray,
    *,
    iw_samples: int,
    seed: int,
    binarize: str = "none",
    labels: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean per-image ELBO terms and the IWAE bound over images_u8, in nats, and in bits/dim
    when the family's likelihood is a code length of the data as seen under `binarize`; a
    conditional model's of log p(x | y), given the images' `labels`.

    Images go through in fixed blocks of SAMPLE_BLOCK, each with its own seeded noise (and,
    for dynamic binarisation, its own seeded draw), so the figures do not depend on any batch
    size (the bound decodes in small chunks inside).
    """
    assert family.likelihood is not None, f"the {family.name} family has no likelihood"
    device = next(model.parameters()).device
    dims = int(np.prod(images_u8.shape[1:]))
    sums = {"recon": 0.0, "kl": 0.0, "elbo": 0.0, "iw_bound": 0.0}
    seen_iw = False  # a family may offer no importance-weighted bound
    for index, size in block_plan(len(images_u8)):
        lo = index * SAMPLE_BLOCK
        # A CPU generator: the same noise whichever device the model is on.
        gen = torch.Generator().manual_seed(seeding.chunk(seed, index))
        batch = torch.from_numpy(np.ascontiguousarray(images_u8[lo : lo + size]))
        x = family.to_input(batch, binarize, gen)
        if labels is None:
            out = family.likelihood(model, x.to(device), gen, iw_samples)
        else:
            y = torch.from_numpy(np.asarray(labels[lo : lo + size], np.int64)).to(device)
            out = family.likelihood(model, x.to(device), gen, iw_samples, y)
        for k in sums:
            if k in out:
                sums[k] += out[k].double().sum().item()
        seen_iw = "iw_bound" in out
    n, per_dim = len(images_u8), dims * math.log(2)
    res = {f"eval/{k}": sums[k] / n for k in ("recon", "kl", "elbo")}
    if iw_samples > 0 and seen_iw:
        res["eval/iw_bound"] = sums["iw_bound"] / n
    if family.reports_bits_per_dim(model.model_spec(), binarize):
        res["eval/bits_per_dim"] = -res["eval/elbo"] / per_dim
        res["eval/recon_bits_per_dim"] = res["eval/recon"] / per_dim
        res["eval/kl_bits_per_dim"] = res["eval/kl"] / per_dim
        if "eval/iw_bound" in res:
            res["eval/iw_bits_per_dim"] = -res["eval/iw_bound"] / per_dim
    return res


def likelihood_scorecard(
    model: torch.nn.Module,
    family: Family,
    shardset: ShardSet,
    cfg: EvaluateConfig,
    seed: int,
    binarize: str = "none",
) -> tuple[dict[str, float], dict[str, Any]]:
    """Test-split likelihood, the train-vs-test ELBO gap, and their protocol, which records
    the likelihood and the binarisation: runs of other likelihoods are never ranked together."""
    test, test_y = shardset.load("test") if shardset.count("test") else shardset.load("val")
    test = test if cfg.max_test_samples is None else test[: cfg.max_test_samples]
    conditional = num_classes_of(model) > 0  # a CVAE: log p(x | y), given the true labels
    kw = {"seed": seed, "binarize": binarize}
    out = likelihood_terms(
        model,
        family,
        test,
        iw_samples=cfg.iw_samples,
        labels=test_y[: len(test)] if conditional else None,
        **kw,
    )
    train, train_y = shardset.load("train")
    pick = np.sort(np.random.default_rng(seed).permutation(len(train))[: len(test)])
    on_train = likelihood_terms(
        model,
        family,
        train[pick],
        iw_samples=0,
        labels=train_y[pick] if conditional else None,
        **kw,
    )
    out["eval/train_elbo"] = on_train["eval/elbo"]
    out["eval/elbo_gap"] = on_train["eval/elbo"] - out["eval/elbo"]  # > 0: better on train
    if "eval/bits_per_dim" in out:
        out["eval/bits_per_dim_gap"] = out["eval/bits_per_dim"] - on_train["eval/bits_per_dim"]
    spec = model.model_spec()
    protocol = {
        "likelihood": spec.get("likelihood", family.name),
        **(
            {"mixture_components": spec["mixture_components"]}
            if "mixture_components" in spec
            else {}
        ),
        "binarize": binarize,
        **({"conditional": "log p(x | y), true labels"} if conditional else {}),
        "code_length": "eval/bits_per_dim" in out,
        "dataset": shardset.manifest.key,
        "split": "test" if shardset.count("test") else "val",
        "test_samples": int(len(test)),
        "train_gap_samples": int(len(pick)),
        "iw_samples": cfg.iw_samples,
        "seed": cfg.seed,
        "precision": "fp32",
    }
    return out, protocol
