"""Where a 2-rank DDP step of the RVAE goes (issue 20), outside the trainer.

`torchrun --standalone --nproc-per-node N -m benchmarks.rvae_ddp_profile VARIANT [--steps S]
[--out JSON]` (from the repository root; `python -m benchmarks.rvae_ddp_profile VARIANT` for one
rank) runs S (default 300) steps (after 20 warm-up) of configs/sines-rvae.yaml's network (GRU,
hidden 64, latent 16, 24 x 5, batch 64 per rank, Adam, one thread per process) on random series
and prints ms per step split into forward / backward (DDP's all-reduce runs inside it) /
optimizer, per rank. VARIANT: `base` (DDP's defaults), `nobuf` (broadcast_buffers=False, what
the RVAE family now asks for), `nobuf_bucket_view` (+ one bucket, gradient_as_bucket_view),
`allreduce` (only a gloo all-reduce of the gradient's size per step: the collective's floor).
Without torchrun (one process) it is the 1-rank step; two such processes at once are the
machine's own scaling for this step. `--out` writes rank 0's {"series_per_s", "ms_per_step"} as
JSON: sequence_bench's throughput section measures this bare loop beside the trainer as the
2-rank target's floor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from genpar_models.models.rvae.network import RVAE
from genpar_models.util import atomic

WARMUP, BATCH = 20, 64


def main(variant: str, steps: int = 300, out: Path | None = None) -> None:
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = RVAE(sequence_shape=(24, 5), latent_dim=16, hidden_dim=64, rnn="gru", rnn_layers=1)
    size = sum(p.numel() for p in model.parameters())
    net: torch.nn.Module = model
    if world > 1 and variant != "allreduce":
        kw: dict[str, object] = {"broadcast_buffers": "nobuf" not in variant}
        if "bucket" in variant:
            kw["bucket_cap_mb"] = 100
        if "view" in variant:
            kw["gradient_as_bucket_view"] = True
        net = DDP(model, **kw)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(BATCH, 24, 5)
    gen = torch.Generator().manual_seed(0)
    parts = [0.0, 0.0, 0.0]
    grad = torch.zeros(size)

    def step() -> None:
        if variant == "allreduce":
            dist.all_reduce(grad)
            return
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = net(x, generator=gen)
        loss = out["recon"].mean() + out["kl_dims"].mean(0).sum()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        for i, dt in enumerate((t1 - t0, t2 - t1, t3 - t2)):
            parts[i] += dt

    for _ in range(WARMUP):
        step()
    parts[:] = [0.0, 0.0, 0.0]
    start = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - start) / steps
    rank = int(os.environ.get("RANK", "0"))
    if variant != "allreduce":
        fwd, bwd, upd = (1e3 * p / steps for p in parts)
        print(f"rank {rank} {variant}: forward {fwd:.2f} backward {bwd:.2f} optimizer {upd:.2f} ms")
    if world > 1:
        mean = torch.tensor([per_step])
        dist.all_reduce(mean)
        per_step = mean.item() / world
        dist.destroy_process_group()
    if rank == 0:
        rate = world * BATCH / per_step
        print(
            f"{variant} x{world} ({size} params): {1e3 * per_step:.2f} ms/step, {rate:.0f} series/s"
        )
        if out is not None:
            text = json.dumps({"series_per_s": rate, "ms_per_step": 1e3 * per_step})
            atomic.write_text(out, text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="benchmarks.rvae_ddp_profile")
    parser.add_argument("variant", nargs="?", default="base")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    main(args.variant, args.steps, args.out)
    # No interpreter teardown: a rank that finalises gloo's threads there sometimes aborted
    # ("terminate called without an active exception") after its figures were out.
    sys.stdout.flush()
    os._exit(0)
