"""Preprocessing throughput: genpar's Dask stage with 1 and 2 workers against a single-process
NumPy/Pillow script doing the same decode/resize/normalise/write, and against decode-only.

The Dask clusters are started once, before timing (their start-up is an orchestration cost,
measured in orchestration_bench); each timed run writes into a fresh GENPAR_HOME so nothing
is reused.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import Result, interleaved, median, stopwatch
from tasks.cluster import local_cluster


def make_image_folder(root: Path, n: int, side: int = 64) -> Path:
    """n smooth-with-noise RGB PNGs in 10 class folders (realistic PNG compression)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    for i in range(n):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        base = (np.sin(xx / (3 + i % 7)) + np.cos(yy / (2 + i % 5))) * 60 + 128
        rgb = np.stack([base, base[::-1], base.T], -1) + rng.normal(0, 8, (side, side, 3))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.png")
    return root


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.png"))


def _decode_only(paths: list[str]) -> int:
    for p in paths:
        with Image.open(p) as im:
            im.load()
    return len(paths)


def _decode_only_spng(paths: list[str]) -> int:
    import pyspng

    for p in paths:
        with open(p, "rb") as f:
            pyspng.load(f.read())
    return len(paths)


def decode_only(files: list[Path], pool, procs: int = 2, decoder=_decode_only) -> float:
    """images/s of decoding alone (the ceiling), in the processes of a warm `pool` (or this
    process when pool is None); spawning the pool is not timed, like the Dask clusters.
    `decoder` is Pillow's (what the script uses, the ceiling of the issue's target) or
    libspng's (what genpar decodes these PNGs with since genpar_models/data/png.py)."""
    if pool is None:
        with stopwatch() as t:
            decoder([str(p) for p in files])
        return len(files) / t["s"]
    chunks = [[str(p) for p in files[i::procs]] for i in range(procs)]
    with stopwatch() as t:
        pool.map(decoder, chunks)
    return len(files) / t["s"]


def script_in_processes(files: list[Path], out: Path, pool, procs: int = 2) -> float:
    """The single-process script's whole job split over the warm pool's plain processes: what
    two cores give this work with no framework at all (the machine's own scaling)."""
    jobs = [(files[i::procs], out / f"part{i}", 32, 500) for i in range(procs)]
    with stopwatch() as t:
        pool.starmap(single_process_script, jobs)
    return len(files) / t["s"]


def _save(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    path.write_bytes(buf.getvalue())


def single_process_script(files: list[Path], out: Path, size: int, shard: int) -> float:
    """What a user's plain script does: decode, grayscale, resize, split by hash, write .npy."""
    out.mkdir(parents=True, exist_ok=True)
    with stopwatch() as t:
        buckets: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        for p in files:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("L").resize((size, size), Image.Resampling.BOX))
            u = int.from_bytes(hashlib.sha256(str(p).encode()).digest()[:8], "big") / 2**64
            split = "test" if u < 0.1 else "val" if u < 0.2 else "train"
            buckets[split].append(arr[None])
        for split, arrays in buckets.items():
            stacked = np.stack(arrays)
            for i in range(0, len(stacked), shard):
                _save(out / f"{split}-{i // shard:05d}.npy", stacked[i : i + shard])
    return len(files) / t["s"]


def genpar_stage(cfg, address: str, count: int) -> float:
    """images/s of genpar's preprocessing task on an already running Dask cluster."""
    from tasks.preprocess import preprocess

    compute = cfg.compute.model_copy(update={"dask_address": address})
    with tempfile.TemporaryDirectory() as home:
        os.environ["GENPAR_HOME"] = home
        with stopwatch() as t:
            preprocess.fn(cfg.model_copy(update={"compute": compute}))
    return count / t["s"]


def run(work: Path, quick: bool) -> list[Result]:
    from genpar_models.config import load_config

    n = 300 if quick else 6000
    repeats = 1 if quick else 5  # medians of 5: the stage runs take about a second each
    folder = make_image_folder(work / "images", n)
    files = _files(folder)
    folder_cfg = load_config(
        None,
        [
            "name=bench",
            "data.source=folder",
            f"data.path={folder}",
            "data.image_size=32",
            "data.shard_size=500",
        ],
    )
    mnist_n = 1000 if quick else 5000
    mnist_cfg = load_config(
        None,
        [
            "name=bench",
            "data.source=mnist5k",
            "data.image_size=28",
            "data.shard_size=500",
            f"data.max_samples={mnist_n}",
        ],
    )
    results: list[Result] = []
    with (
        local_cluster(1) as c1,
        local_cluster(2) as c2,
        get_context("spawn").Pool(2) as pool,
    ):
        pool.map(_decode_only, [[], []], chunksize=1)  # both processes up before timing
        for c in (c1, c2):  # warm: imports and the built-in dataset caches
            with c.get_client() as client:
                client.run(lambda: __import__("genpar_models.data.sources"))
        for label, cfg, count in (("image folder", folder_cfg, n), ("mnist5k", mnist_cfg, mnist_n)):
            fns = {
                "dask1": lambda cfg=cfg, count=count: genpar_stage(
                    cfg, c1.scheduler_address, count
                ),
                "dask2": lambda cfg=cfg, count=count: genpar_stage(
                    cfg, c2.scheduler_address, count
                ),
            }
            if label == "image folder":
                fns["script"] = lambda: single_process_script(files, work / "script", 32, 500)
                fns["script2"] = lambda: script_in_processes(files, work / "script2", pool)
                fns["decode1"] = lambda: decode_only(files, None)
                fns["decode2"] = lambda: decode_only(files, pool)
                fns["spng2"] = lambda: decode_only(files, pool, decoder=_decode_only_spng)
            m = {k: median(v) for k, v in interleaved(fns, repeats).items()}
            sec = f"preprocess ({label}, {count} images)"
            results.append(Result(sec, "genpar Dask, 1 worker", m["dask1"], "images/s"))
            results.append(
                Result(
                    sec,
                    "genpar Dask, 2 workers",
                    m["dask2"],
                    "images/s",
                    baseline="1 worker",
                    ratio=m["dask2"] / m["dask1"],
                )
            )
            if "script" in m:
                results += [
                    Result(sec, "single-process script", m["script"], "images/s"),
                    Result(
                        sec,
                        "same script split over 2 plain processes (the machine's scaling)",
                        m["script2"],
                        "images/s",
                        baseline="single-process script",
                        ratio=m["script2"] / m["script"],
                    ),
                    Result(sec, "decode only (Pillow), 1 process", m["decode1"], "images/s"),
                    Result(
                        sec, "decode only (Pillow), 2 processes (ceiling)", m["decode2"], "images/s"
                    ),
                    Result(
                        sec,
                        "decode only (libspng, genpar's PNG decoder), 2 processes",
                        m["spng2"],
                        "images/s",
                    ),
                    Result(
                        sec,
                        "Dask 2 workers vs script",
                        m["dask2"],
                        "images/s",
                        baseline="single-process script",
                        ratio=m["dask2"] / m["script"],
                        target=1.7,
                        floor=(
                            m["script2"] / m["script"],
                            "the same script in 2 plain processes",
                        ),
                    ),
                    Result(
                        sec,
                        "Dask 2 workers vs decode-only ceiling",
                        m["dask2"],
                        "images/s",
                        baseline="decode only (Pillow), 2 processes",
                        ratio=m["dask2"] / m["decode2"],
                        target=0.7,
                    ),
                    Result(
                        sec,
                        "Dask 2 workers vs decoding alone with genpar's own decoder",
                        m["dask2"],
                        "images/s",
                        baseline="decode only (libspng), 2 processes",
                        ratio=m["dask2"] / m["spng2"],
                    ),
                ]
    return results
