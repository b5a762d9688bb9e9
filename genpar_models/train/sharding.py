"""FSDP2 for `compute.strategy: fsdp`: shard the model's blocks, gather it whole for export,
and count what each rank holds.

`fully_shard` (https://docs.pytorch.org/docs/stable/distributed.fsdp.fully_shard.html) turns
every parameter into a `DTensor` sharded on dim 0 across the ranks, so a rank holds
1/world_size of the parameters, of their gradients and of the optimizer state built on them.
It shards in place and swaps the parameter objects, so an optimizer made before it would step
stale tensors: the trainer shards the modules its family's steps name (what checkpoints hold,
what `StepTools.wrap` would wrap), then makes the steps again (train/trainer.py). A family
never sees any of this.

The device mesh follows the device: a gloo group whose weights are moved to CUDA is a known
crash (pytorch #132471). On CUDA with bf16, parameters are gathered in bf16 and gradients
reduced in fp32 (`MixedPrecisionPolicy`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from genpar_models.train.dist import DistContext
from genpar_models.train.tools import resolved_precision


def mixed_precision(ctx: DistContext, precision: str):
    """bf16 parameters with fp32 reduction on CUDA when train.precision resolves to bf16."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if ctx.device.type == "cuda" and resolved_precision(ctx, precision) == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def shard_modules(modules: Iterable[nn.Module], ctx: DistContext, precision: str) -> None:
    """`fully_shard` each module's direct sub-blocks, then the module itself (its root unit
    holds what is left), in place. One process: nothing to shard."""
    if not ctx.distributed:
        return
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    policy = mixed_precision(ctx, precision)
    for root in modules:
        for block in root.children():
            if _has_params(block):
                fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(root, mesh=mesh, mp_policy=policy)


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def holds_shards(module: nn.Module) -> bool:
    """Whether `module` or any module inside it is sharded (a GAN's container is not, its
    generator and discriminator are)."""
    return any(is_sharded(m) for m in module.modules())


def full_state_dict(module: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor] | None:
    """The whole state_dict of a (sharded) module, on the CPU of rank 0; None elsewhere.
    A collective under FSDP: every rank calls it."""
    if not holds_shards(module):
        return dict(module.state_dict()) if ctx.is_main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(
        module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    return dict(state) if ctx.is_main else None


def _local(t: torch.Tensor) -> torch.Tensor:
    to_local = getattr(t, "to_local", None)  # a DTensor's shard on this rank
    return to_local() if callable(to_local) else t


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: set[tuple[int, int]] = set()  # a tensor listed twice (tied weights) counts once
    total = 0
    for t in tensors:
        local = _local(t)
        key = (local.data_ptr(), local.numel()) if local.numel() else (id(local), 0)
        if key in seen:
            continue
        seen.add(key)
        total += local.numel() * local.element_size()
    return total


def rank_bytes(
    modules: Iterable[nn.Module], optimizers: Iterable[torch.optim.Optimizer]
) -> dict[str, int]:
    """Bytes this rank holds, measured from the tensors (a DTensor counts its local shard):
    parameters, gradients and optimizer state (benchmarks/fsdp_bench.py)."""
    params = [p for m in modules for p in m.parameters()]
    grads = [p.grad for p in params if p.grad is not None]
    state = [
        v
        for opt in optimizers
        for s in opt.state.values()
        for v in s.values()
        if torch.is_tensor(v)
    ]
    out = {"params": _nbytes(params), "grads": _nbytes(grads), "optimizer": _nbytes(state)}
    out["total"] = sum(out.values())
    return out
