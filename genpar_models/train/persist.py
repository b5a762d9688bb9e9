"""Which checkpoints a run writes and resumes: whole-model safetensors written by rank 0
(compute.strategy=ddp, train/checkpoint.py) or sharded ones written by every rank
(compute.strategy=fsdp, train/sharded.py). The training loop asks here, not the strategy.
"""

from __future__ import annotations

import logging

from genpar_models.train import checkpoint, sharded
from genpar_models.train.dist import DistContext
from genpar_models.train.runspec import RunSpec
from genpar_models.train.tools import load_scaler_state, scaler_state

log = logging.getLogger(__name__)


def restore(spec: RunSpec, trainer, expect: dict, layout: dict) -> checkpoint.Resumed | None:
    """The newest valid checkpoint restored into the trainer's modules and optimizers."""
    kwargs = {"modules": trainer.modules, "optimizers": trainer.steps.optimizers}
    if spec.config.compute.strategy == "fsdp":
        resumed = sharded.restore_latest_sharded(
            spec.checkpoint_dir,
            **kwargs,
            expect=expect,
            layout=layout,
            allow_reshard=spec.config.train.allow_reshard,
        )
    else:
        resumed = checkpoint.restore_latest(
            spec.checkpoint_dir, **kwargs, expect=expect, layout=layout
        )
    if resumed is not None:
        warning = load_scaler_state(
            trainer.grad_scaler, resumed.meta.get("grad_scaler"), str(resumed.path)
        )
        if warning:
            log.warning(warning)
    return resumed


def save(trainer, spec: RunSpec, ctx: DistContext, step: int, meta: dict, sink) -> str:
    """Checkpoint after `step`: rank 0 alone (ddp), or every rank its shards (fsdp); rank 0
    then commits the buffered metrics (a crash before that is healed by replay on resume)."""
    cfg = spec.config.train
    args = {
        "step": step,
        "modules": trainer.modules,
        "optimizers": trainer.steps.optimizers,
        "keep": cfg.keep_checkpoints,
        "meta": {
            **meta,
            "pending_metrics": sink.pending(),
            "grad_scaler": scaler_state(trainer.grad_scaler),
        },
    }
    if spec.config.compute.strategy == "fsdp":
        path = sharded.save_sharded(spec.checkpoint_dir, **args, ctx=ctx)
    elif ctx.is_main:
        path = checkpoint.save_checkpoint(spec.checkpoint_dir, **args)
    else:
        return str(checkpoint.checkpoint_path(spec.checkpoint_dir, step))
    if ctx.is_main:
        sink.commit()
    return str(path)
