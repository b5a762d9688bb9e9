"""The training data feed: this rank's batches of uint8 images, addressable by global step.

Data order comes from a DistributedSampler seeded by (seed, epoch), so batch `step` is the
same whether the run started at step 0 or resumed at a checkpoint: exact resume needs no
iterator state. The family maps the
uint8 pixels into its input range (`Family.to_input`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from genpar_models.errors import ConfigError
from genpar_models.train.dist import DistContext


class BatchFeed:
    """Batches of train images for this rank, addressable by global step (for exact resume)."""

    def __init__(
        self,
        images: np.ndarray,
        batch: int,
        ctx: DistContext,
        seed: int,
        labels: np.ndarray | None = None,
    ) -> None:
        n = len(images)
        self.sampler = DistributedSampler(
            range(n),
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.batch = batch
        self.steps_per_epoch = len(self.sampler) // batch
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"train.batch_size_per_rank={batch} x {ctx.world_size} rank(s) is larger than the "
                f"train split ({n} samples); lower the batch size or the process count (a step "
                "takes batch_size_per_rank x train.grad_accum_steps x, for a GAN, "
                "train.n_critic rows per rank)"
            )
        on_gpu = ctx.device.type == "cuda" and images.nbytes < 4 << 30  # resident on the GPU
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.images = self.images.to(ctx.device) if on_gpu else self.images
        self.device = ctx.device
        # A conditional model's labels (int64 (N,)), fed beside the images of the same rows.
        self.labels = None if labels is None else torch.from_numpy(np.asarray(labels, np.int64))
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _rows(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._order, self._epoch = torch.tensor(list(self.sampler), dtype=torch.long), epoch
        return self._order[i * self.batch : (i + 1) * self.batch]

    def __call__(self, step: int) -> torch.Tensor:
        """uint8 (B, C, H, W) batch number `step` on the training device."""
        idx = self._rows(step)
        return self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)

    def labels_of(self, step: int) -> torch.Tensor | None:
        """The int64 (B,) labels of batch number `step` (None without labels)."""
        if self.labels is None:
            return None
        return self.labels[self._rows(step)].to(self.device, non_blocking=True)
