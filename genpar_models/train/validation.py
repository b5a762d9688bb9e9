"""Validation during training: the family's validation sums over the val split, all-reduced.

Each rank scores its stride of the val split (a conditional model's with the rows' labels);
the sums and the sample count are all-reduced once, so the figures are the same on any number
of ranks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from genpar_models.models.family import Family
from genpar_models.train.dist import DistContext, all_reduce_sum
from genpar_models.train.runspec import RunSpec
from genpar_models.util import seeding


def run_validation(
    steps: Any,
    family: Family,
    images: np.ndarray,
    spec: RunSpec,
    ctx: DistContext,
    bits: bool,
    labels: np.ndarray | None = None,
) -> dict:
    """Validation metrics over this rank's stride of the val split, all-reduced.

    A rank whose stride is empty (fewer validation samples than ranks) still joins the
    all-reduce with the same keys: it scores one sample and adds it with weight zero. Without
    `bits` (the likelihood is no code length of the data as seen), bits/dim is left out.
    """
    if len(images) == 0:
        return {}
    mine = images[ctx.rank :: ctx.world_size]
    mine_y = None if labels is None else labels[ctx.rank :: ctx.world_size]
    weight = 1.0 if len(mine) else 0.0
    noise = torch.Generator().manual_seed(seeding.validation_noise(spec.config.seed))
    sums: dict[str, torch.Tensor] = {}
    bs = spec.config.evaluate.batch_size
    scored = mine if len(mine) else images[:1]
    scored_y = None if labels is None else (mine_y if len(mine) else labels[:1])
    for i in range(0, len(scored), bs):
        batch = torch.from_numpy(np.ascontiguousarray(scored[i : i + bs])).to(ctx.device)
        x = family.to_input(batch, spec.config.data.binarize, noise)
        if scored_y is None:
            out = steps.validate(x, noise)
        else:
            y = torch.from_numpy(np.asarray(scored_y[i : i + bs], np.int64)).to(ctx.device)
            out = steps.validate(x, noise, labels=y)
        for k, v in out.items():
            if bits or "bits_per_dim" not in k:
                sums[k] = sums.get(k, 0) + v * weight
    keys = sorted(sums)
    count = torch.tensor(float(len(mine)), dtype=torch.float64, device=ctx.device)
    packed = all_reduce_sum(torch.stack([sums[k].to(ctx.device) for k in keys] + [count]), ctx)
    return {k: (packed[i] / packed[-1]).item() for i, k in enumerate(keys)}
