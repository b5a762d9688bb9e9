"""Generation throughput: a naive per-sample loop, one batched process, and genpar's Dask stage
with 1 and 2 workers (model loaded once per worker, clusters started before timing); the
compressed variants of `genpar compress` (bf16, int8, torch.compile) batched in one process."""

from __future__ import annotations

import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import torch

from benchmarks.common import Result, interleaved, median, stopwatch
from genpar_models.infer.compress import build_variant
from genpar_models.infer.sampling import cached_model, sample_uint8
from genpar_models.models.export import load_model
from genpar_models.util.threads import torch_threads
from tasks.cluster import local_cluster


def naive(model: torch.nn.Module, n: int) -> float:
    """One sample per call, as tutorial code does."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad(), stopwatch() as t:
        for _ in range(n):
            model.sample(1, generator=gen)
    return n / t["s"]


def batched(model: torch.nn.Module, n: int, threads: int) -> float:
    with torch_threads(threads), stopwatch() as t:
        sample_uint8(model, n, seed=0)  # genpar's batch (SAMPLE_BATCH) on both sides
    return n / t["s"]


def _sample_in_process(model_dir: str, n: int, seed: int) -> int:
    with torch_threads(1):
        sample_uint8(cached_model(model_dir), n, seed=seed)
    return n


def _sample_rate(model_dir: str, n: int, threads: int = 1) -> float:
    """Batched samples/s in a pool process that only ever runs `threads` threads.

    Not in the benchmark's own process: a run there went 1.3-2.1x faster than in a clean
    process at the same thread count. The cause was glibc's malloc, not threads: a process
    that had freed large blocks before had raised its mmap/trim thresholds, a fresh one
    page-faulted every activation buffer (genpar_models/util/malloc.py, which genpar now sets
    everywhere; since then the gap is about 1.1x). The 2-thread baseline gets a clean process
    of its own too, like the Dask workers."""
    with torch_threads(threads):
        sample_uint8(cached_model(model_dir), 64, seed=1)
        with stopwatch() as t:
            sample_uint8(cached_model(model_dir), n, seed=0)
    return n / t["s"]


def plain_processes(model_dir: str, n: int, pool, procs: int = 2) -> float:
    """The batched loop split over the warm pool's plain processes (model already loaded):
    what two cores give this work with no framework at all (the machine's own scaling)."""
    with stopwatch() as t:
        pool.starmap(_sample_in_process, [(model_dir, n // procs, i) for i in range(procs)])
    return n / t["s"]


def dask_stage(cfg, model_dir: str, address: str) -> float:
    from tasks.generate import generate_to_dir

    compute = cfg.compute.model_copy(update={"dask_address": address})
    with tempfile.TemporaryDirectory() as out:
        metrics = generate_to_dir(cfg.model_copy(update={"compute": compute}), model_dir, Path(out))
    return metrics["gen/samples_per_s"]


def run(model_dir: Path, cfg, quick: bool) -> list[Result]:
    n = 500 if quick else 8000
    cfg = cfg.model_copy(
        update={"generate": cfg.generate.model_copy(update={"num_samples": n, "chunk_size": 1000})}
    )
    model, _ = load_model(model_dir)
    repeats = 1 if quick else 5  # medians of 5: the stage runs take about a second each
    variants = ("bf16", "int8") if quick else ("bf16", "int8", "compile")
    compressed = {name: build_variant(model, name) for name in variants}
    for net in compressed.values():  # compile (and first-call setup) outside the timing
        batched(net, 256, 1)
    with (
        local_cluster(1) as c1,
        local_cluster(2) as c2,
        get_context("spawn").Pool(2) as pool,
        get_context("spawn").Pool(1) as pool2,  # the 2-thread process, kept apart
    ):
        pool.starmap(_sample_in_process, [(str(model_dir), 8, 0)] * 2, chunksize=1)
        fns = {
            "naive": lambda: naive(model, 100 if quick else 1000),
            "batched1": lambda: pool.apply(_sample_rate, (str(model_dir), n)),
            "fp32_here": lambda: batched(model, n, 1),
            "batched2": lambda: pool2.apply(_sample_rate, (str(model_dir), n, 2)),
            "batched2_here": lambda: batched(model, n, 2),
            "plain2": lambda: plain_processes(str(model_dir), n, pool),
            "dask1": lambda: dask_stage(cfg, str(model_dir), c1.scheduler_address),
            "dask2": lambda: dask_stage(cfg, str(model_dir), c2.scheduler_address),
            **{f"v_{k}": (lambda net=net: batched(net, n, 1)) for k, net in compressed.items()},
        }
        time.sleep(0.5)
        m = {k: median(v) for k, v in interleaved(fns, repeats).items()}
    sec = f"generation ({cfg.model.name}, {n} samples, chunks of 1000)"
    best_single = max(m["batched1"], m["batched2"])
    return [
        Result(sec, "naive per-sample loop", m["naive"], "samples/s"),
        Result(
            sec,
            "batched, 1 process x 1 thread",
            m["batched1"],
            "samples/s",
            baseline="naive",
            ratio=m["batched1"] / m["naive"],
            target=50,
        ),
        Result(sec, "batched, 1 process x 2 threads", m["batched2"], "samples/s"),
        Result(
            sec,
            "batched, 2 threads in the benchmark's own process (after 1-thread runs there)",
            m["batched2_here"],
            "samples/s",
            baseline="batched, 1 process x 2 threads",
            ratio=m["batched2_here"] / m["batched2"],
        ),
        Result(
            sec,
            "batched, split over 2 plain processes (the machine's scaling)",
            m["plain2"],
            "samples/s",
            baseline="batched, 1 process x 1 thread",
            ratio=m["plain2"] / m["batched1"],
        ),
        Result(sec, "genpar Dask, 1 worker", m["dask1"], "samples/s"),
        Result(
            sec,
            "genpar Dask, 2 workers",
            m["dask2"],
            "samples/s",
            baseline="batched, 1 process x 1 thread",
            ratio=m["dask2"] / m["batched1"],
            target=1.8,
            floor=(m["plain2"] / m["batched1"], "the batched loop in 2 plain processes"),
        ),
        Result(
            sec,
            "genpar Dask 2 workers vs best single process",
            m["dask2"],
            "samples/s",
            baseline="best of 1 and 2 threads",
            ratio=m["dask2"] / best_single,
            target=1.0,
            floor=(m["plain2"] / best_single, "the batched loop in 2 plain processes"),
        ),
        Result(
            sec,
            "genpar Dask 2 workers vs naive",
            m["dask2"],
            "samples/s",
            baseline="naive",
            ratio=m["dask2"] / m["naive"],
            target=50,
        ),
        *(
            Result(
                sec,
                f"compressed: {name}, batched, benchmark process set to 1 thread",
                m[f"v_{name}"],
                "samples/s",
                baseline="fp32 batched, same process and threads",
                ratio=m[f"v_{name}"] / m["fp32_here"],
            )
            for name in variants
        ),
    ]
