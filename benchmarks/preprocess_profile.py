"""Where preprocessing's per-image time goes: cProfile of genpar's per-partition function
(`process_partition`, what each Dask worker runs) and of the benchmark's single-process script,
in this one process, on the same images of the benchmark's folder.

    python -m benchmarks.preprocess_profile              # 1,500 images (3 partitions of 500)
    python -m benchmarks.preprocess_profile --images 6000 --work /tmp/prof

It prints the unprofiled wall and CPU time per image of both (A B A B, medians), then one table
each: seconds, microseconds per image and share per part. Parts are cumulative times of
(function, caller) pairs from pstats, so they do not overlap; the last row is what is left
(the per-image loop, list building, glue). cProfile adds a roughly constant cost per Python
call, so Python-heavy parts read larger than they run; compare the two tables with each other.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.preprocess_bench import make_image_folder, single_process_script

Match = Callable[[str, str], bool]


def fn(file: str, name: str) -> Match:
    return lambda f, n: f.endswith(file) and n == name


def builtin(name: str) -> Match:
    return lambda f, n: f == "~" and n == name


def cum(stats: dict, callee: Match, caller: Match | None = None, own: bool = False) -> float:
    """Seconds in `callee` (cumulative, or its own with `own`), only as called from `caller`."""
    total = 0.0
    for (f, _, n), (_, _, tt, ct, callers) in stats.items():
        if not callee(f, n):
            continue
        if caller is None:
            total += tt if own else ct
            continue
        total += sum(v[2] if own else v[3] for (cf, _, cn), v in callers.items() if caller(cf, cn))
    return total


def genpar_rows(st: dict) -> tuple[float, list[tuple[str, float]]]:
    dec, toa = fn("images.py", "decode_image"), fn("images.py", "to_array")
    write_bytes = fn("atomic.py", "write_bytes")
    hashing = cum(st, builtin("<built-in method _hashlib.openssl_sha256>"), None) - cum(
        st, builtin("<built-in method _hashlib.openssl_sha256>"), fn("split.py", "split_fraction")
    )
    hashing += cum(st, builtin("<method 'hexdigest' of '_hashlib.HASH' objects>"))
    writes = cum(st, fn("atomic.py", "write_npys")) + cum(st, write_bytes)
    save = cum(st, fn("_npyio_impl.py", "save"), fn("atomic.py", "write_npys")) + cum(
        st, fn("_npyio_impl.py", "save"), fn("atomic.py", "write_npy")
    )
    # the files' flushes run in threads cProfile does not see: the wait for them is `result`
    fsync = cum(st, builtin("<built-in method posix.fsync>")) + cum(
        st, fn("_base.py", "result"), fn("atomic.py", "write_npys")
    )
    split = cum(st, fn("split.py", "split_of"))
    shards = cum(st, fn("shards.py", "write_partition_shards"))
    return cum(st, fn("preprocess.py", "process_partition")), [
        (
            "file open + fstat + close",
            sum(
                cum(st, builtin(b), dec)
                for b in (
                    "<built-in method io.open>",
                    "<built-in method posix.fstat>",
                    "<method '__exit__' of '_io._IOBase' objects>",
                )
            ),
        ),
        ("header: Image.open (format probe, PNG chunks)", cum(st, fn("images.py", "_open_header"))),
        (
            "decode: libspng (png.decode_plain: read, CRCs, pyspng.load)",
            cum(st, fn("png.py", "decode_plain"), dec),
        ),
        ("decode: Pillow's ImageFile.load (other files)", cum(st, fn("ImageFile.py", "load"), dec)),
        ("validation: empty/size checks, error mapping", cum(st, dec, own=True)),
        ("EXIF orientation", cum(st, fn("ImageOps.py", "exif_transpose"), dec)),
        (
            "mode conversion (to 8 bit, convert L)",
            cum(st, fn("images.py", "_to_8bit"), toa) + cum(st, fn("Image.py", "convert"), toa),
        ),
        ("resize (BOX)", cum(st, fn("images.py", "_make_square"), toa)),
        (
            "to numpy uint8 (C, H, W)",
            cum(st, builtin("<built-in method numpy.asarray>"), toa)
            + cum(st, builtin("<built-in method numpy.ascontiguousarray>"), toa)
            + cum(st, toa, own=True),
        ),
        ("np.stack of the partition", cum(st, fn("shape_base.py", "stack"))),
        ("split: sha256 of each id", split),
        ("np.save into memory", save),
        ("shard sha256", hashing),
        ("write + rename (without fsync)", writes - save - hashing - fsync),
        ("fsync (files, concurrently, + directory)", fsync),
        ("train statistics, masks (float64 sums)", shards - writes - split),
    ]


def script_rows(st: dict) -> tuple[float, list[tuple[str, float]]]:
    sc = fn("preprocess_bench.py", "single_process_script")
    conv = cum(st, fn("Image.py", "convert"), sc)
    decode = cum(st, fn("ImageFile.py", "load"), fn("Image.py", "convert"))
    return cum(st, sc), [
        ("open + header: Image.open(path)", cum(st, fn("Image.py", "open"), sc)),
        ("decode: ImageFile.load (inside convert)", decode),
        ("mode conversion (convert L)", conv - decode),
        ("resize (BOX)", cum(st, fn("Image.py", "resize"), sc)),
        ("to numpy uint8", cum(st, builtin("<built-in method numpy.asarray>"), sc)),
        ("np.stack", cum(st, fn("shape_base.py", "stack"), sc)),
        (
            "split: sha256 of each path",
            cum(st, builtin("<built-in method _hashlib.openssl_sha256>"), sc)
            + cum(st, builtin("<method 'digest' of '_hashlib.HASH' objects>"), sc),
        ),
        ("np.save + write (no fsync, no hash)", cum(st, fn("preprocess_bench.py", "_save"), sc)),
    ]


def table(label: str, n: int, total: float, rows: list[tuple[str, float]]) -> str:
    lines = [
        f"**{label}**: {n} images, {total:.3f} s under cProfile = {total / n * 1e6:.1f} us/image",
        "",
        "| part | s | us/image | % |",
        "|---|---:|---:|---:|",
    ]
    rest = total - sum(v for _, v in rows)
    for name, v in [*rows, ("rest: per-image loop, lists, glue", rest)]:
        lines.append(f"| {name} | {v:.3f} | {v / n * 1e6:.1f} | {100 * v / total:.1f} |")
    return "\n".join(lines)


def main() -> None:
    from genpar_models.config import load_config
    from genpar_models.data.preprocess import process_partition
    from genpar_models.data.sources import plan_partitions

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1500, help="a multiple of 500, <= 6000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "genpar-prof")
    args = ap.parse_args()
    folder = args.work / "images"
    if not folder.exists():
        make_image_folder(folder, 6000)  # the preprocess benchmark's folder
    cfg = load_config(
        None,
        ["name=bench", "data.source=folder", f"data.path={folder}", "data.image_size=32"]
        + ["data.shard_size=500"],
    ).data
    specs = plan_partitions(cfg)[1][: args.images // 500]
    files = [folder / rel for s in specs for rel in s.items]
    n = len(files)

    def genpar(out: str) -> None:
        for spec in specs:
            process_partition(spec, cfg, out)

    def script(out: str) -> None:
        single_process_script(files, Path(out), 32, 500)

    def timed(work: Callable[[str], None], prof: cProfile.Profile | None = None):
        out = tempfile.mkdtemp(dir=args.work)
        try:
            w, c = time.perf_counter(), time.process_time()
            if prof:
                prof.enable()
            work(out)
            if prof:
                prof.disable()
            return time.perf_counter() - w, time.process_time() - c
        finally:
            shutil.rmtree(out)  # not timed

    timed(genpar), timed(script)  # page cache and imports warm
    runs: dict[str, list[tuple[float, float]]] = {"genpar": [], "script": []}
    for _ in range(args.repeats):
        runs["genpar"].append(timed(genpar))
        runs["script"].append(timed(script))
    print(f"{n} images, load average {os.getloadavg()[0]:.1f}; no profiler, medians:")
    for k, v in runs.items():
        wall, cpu = (statistics.median(x[i] for x in v) for i in (0, 1))
        print(f"  {k}: wall {wall / n * 1e6:.1f} us/image, CPU {cpu / n * 1e6:.1f} us/image")
    for label, work, rows in (
        ("genpar process_partition", genpar, genpar_rows),
        ("single-process script", script, script_rows),
    ):
        prof = cProfile.Profile()
        timed(work, prof)
        total, parts = rows(pstats.Stats(prof).stats)
        print("\n" + table(label, n, total, parts))


if __name__ == "__main__":
    main()
