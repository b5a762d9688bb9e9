"""The GPU section: training samples/s in fp32 and bf16 (data resident on the GPU, with and
without torch.compile), generation throughput, and the fraction of the bf16 matmul peak the
largest default model reaches. Reports nothing without CUDA; the rest of the suite runs anyway.
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import Result


def _sync() -> None:
    torch.cuda.synchronize()


def matmul_peak_bf16(n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def train_throughput(model, data, *, batch: int, steps: int, bf16: bool) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator(device="cuda").manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, len(data), (batch,), device="cuda", generator=gen)
        x = data[idx].float() / 255.0
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = (out["recon"] + out["kl"]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(10):
        step()
    _sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    return steps * batch / (time.perf_counter() - t0)


def run(images, model_cfg, quick: bool) -> list[Result]:
    if not torch.cuda.is_available():
        return []
    from torch.utils.flop_counter import FlopCounterMode

    from genpar_models.models.export import build_model

    sec = f"GPU ({torch.cuda.get_device_name(0)})"
    data = torch.from_numpy(images).cuda()  # resident on the GPU
    steps, batch = (50, 256) if quick else (300, 512)
    out = []
    for name, bf16, compiled in (
        ("fp32", False, False),
        ("bf16", True, False),
        ("bf16 + torch.compile", True, True),
    ):
        torch.manual_seed(0)
        model = build_model(model_cfg, images.shape[1:]).cuda()
        runnable = torch.compile(model) if compiled else model
        sps = train_throughput(runnable, data, batch=batch, steps=steps, bf16=bf16)
        out.append(Result(sec, f"training, {name}", sps, "samples/s"))
    model = build_model(model_cfg, images.shape[1:]).cuda()
    x = data[:batch].float() / 255.0
    with FlopCounterMode(display=False) as counter:
        o = model(x)
        (o["recon"] + o["kl"]).mean().backward()
    peak = matmul_peak_bf16()
    achieved = out[-1].value * counter.get_total_flops() / batch
    out.append(
        Result(
            sec,
            "fraction of bf16 matmul peak (bf16 + compile)",
            achieved / 1e12,
            "TFLOP/s",
            baseline=f"peak {peak / 1e12:.0f} TFLOP/s",
            ratio=achieved / peak,
        )
    )
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        model.sample(4096, generator=gen)
        _sync()
        t0 = time.perf_counter()
        model.sample(65536, generator=gen)
        _sync()
    out.append(
        Result(sec, "generation, batch 65536", 65536 / (time.perf_counter() - t0), "samples/s")
    )
    return out
