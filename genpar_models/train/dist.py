"""Process-group setup and teardown for torchrun (or a plain single process).

torchrun exports RANK, LOCAL_RANK and WORLD_SIZE; without them we run as one process with no
process group at all, so the same entry point works under `python -m`. nccl on CUDA, gloo on
CPU (https://docs.pytorch.org/docs/stable/distributed.html, "Which backend to use?").
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("compute.device=cuda but torch sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


TIMEOUT = dt.timedelta(minutes=10)


def _attempt_store(rank: int, world_size: int) -> tdist.Store:
    """The rendezvous store of this attempt.

    Under a single-node torchrun every attempt's ranks connect to the *same* agent-hosted
    TCPStore, and torch 2.13's default process group uses un-prefixed keys there. After an
    elastic restart the new ranks can then read the previous attempt's gloo addresses and fail
    with "connectFullMesh failed ... Connection refused" (measured here: rank 1 SIGKILLed, the
    restart died this way). A prefix per attempt (torchelastic's restart count) keeps every
    attempt's keys apart.

    The restart count is per agent, though: after a worker dies on one node, that node's agent
    counts a restart while the other node's restarts for the membership change without
    counting (torch/distributed/elastic/agent/server/api.py, "membership changes do not count
    as retries"), so the nodes' prefixes would differ. Multi-node launches therefore set
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (tasks/launcher.py): rank 0 hosts a fresh store on a
    new port every rendezvous round, and no prefix is needed or wanted.
    """
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    base = tdist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=rank == 0 and not agent_hosts_store,
        timeout=TIMEOUT,
    )
    if not agent_hosts_store:
        return base
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return tdist.PrefixStore(f"genpar/attempt-{attempt}", base)


def setup_distributed(device_preference: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment (or stay single)."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before init_process_group, so nccl binds the right GPU
    if world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        tdist.init_process_group(
            backend=backend,
            store=_attempt_store(rank, world_size),
            rank=rank,
            world_size=world_size,
            timeout=TIMEOUT,
        )
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        tdist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def elastic_restarts(ctx: DistContext) -> int:
    """How often torchrun restarted this job: the largest restart count of any node's agent.

    Each agent counts only the restarts its own failures caused; the other nodes restart for
    the membership change without counting, so rank 0's own count can be 0 after a worker
    died on another node.
    """
    count = torch.tensor([int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))], device=ctx.device)
    if ctx.distributed:
        tdist.all_reduce(count, op=tdist.ReduceOp.MAX)
    return int(count.item())
