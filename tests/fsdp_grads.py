"""One rank of a real torchrun job for the FSDP gradient test: the tiny VAE, sharded as training
shards it, takes one SGD step through its family's steps on this rank's half of a fixed global
batch; rank 0 saves the gradients gathered whole, and both ranks' shards of the weights.

python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.fsdp_grads OUT

The test computes the same gradients in one process on the whole batch (`reference`).
"""

from __future__ import annotations

import sys

import torch

from genpar_models.config import PipelineConfig, load_config
from genpar_models.models import get_family
from genpar_models.train.dist import barrier, cleanup_distributed, setup_distributed
from genpar_models.train.trainer import make_steps
from genpar_models.util.leave import exit_now
from tests.conftest import TINY

ROWS, SIDE = 8, 8


def config() -> PipelineConfig:
    return load_config(TINY, ["compute.strategy=fsdp", "train.optimizer=sgd", "train.lr=0.1"])


def global_batch() -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (ROWS, 1, SIDE, SIDE), generator=gen, dtype=torch.uint8)


def build(cfg: PipelineConfig):
    family = get_family(cfg.model.name)
    torch.manual_seed(cfg.seed)
    return family, family.build(cfg.model, (1, SIDE, SIDE))


def reference() -> dict[str, torch.Tensor]:
    """One process, whole batch: the mean of the two halves' losses, each half with the noise
    generator its rank uses (the loss is a batch mean, so this is the global batch's)."""
    cfg = config()
    family, model = build(cfg)
    x = family.to_input(global_batch())
    loss = 0.0
    for rank, half in enumerate(x.tensor_split(2)):
        out = model(half, generator=torch.Generator().manual_seed(100 + rank))
        loss = loss + model.loss(out, cfg.train.kl_weight) / 2
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def main(out: str) -> None:
    ctx = setup_distributed("cpu")
    try:
        cfg = config()
        family, model = build(cfg)
        steps = make_steps(model, family, cfg, ctx)
        steps.wrap()
        x = family.to_input(global_batch()).tensor_split(ctx.world_size)[ctx.rank]
        steps.step(x, torch.Generator().manual_seed(100 + ctx.rank))
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
        local = {n: p.to_local().clone() for n, p in model.named_parameters()}
        torch.save(local, f"{out}.shards{ctx.rank}")
        if ctx.is_main:
            torch.save(grads, f"{out}.grads")
        barrier(ctx)  # no rank tears its process group down while the other still works
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
    # Leave as the trainer's ranks do (genpar_models/train/__main__.py), without the
    # interpreter's teardown: in 1 of 12 runs it aborted a rank ("terminate called without an
    # active exception") after both had saved their files and destroyed the process group.
    exit_now(0)
