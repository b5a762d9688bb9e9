"""Prefect tasks: generate samples in seeded chunks (on Dask when it pays), written as .npy
chunks, samples.json and a PNG grid: into the pipeline's run directory, or whole into a user's
output directory. A sequence model's chunks are its series in the source's units (NaN after
each length) with a `.lengths.npy` beside each, and grid.png plots the first series."""

from __future__ import annotations

import functools
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from genpar_models.config import PipelineConfig
from genpar_models.errors import ConfigError, GenparError
from genpar_models.models.conditioning import check_label, num_classes_of
from genpar_models.models.export import META_FILE
from genpar_models.util import atomic
from tasks.common import run_logger
from tasks.dask_stage import here_or_on_dask, map_with_progress


def generate_to_dir(config: PipelineConfig, model_dir: str, out_dir: Path) -> dict[str, float]:
    """Generate the configured samples into out_dir; return gen/ metrics.

    Chunk i is seeded by (seed, i) and sampled with one thread wherever it runs, so the files
    are the same in this process, on a LocalCluster or on a cluster (generate.parallel)."""
    # imported here: sampling imports torch, which the pipeline flow's start-up (it imports
    # this module) should not pay (issue 18)
    from genpar_models.infer.sampling import (
        cached_model,
        chunk_plan,
        class_rows,
        generate_chunk,
        make_grid,
        warm_model,
    )

    log = run_logger()
    gen = config.generate
    classes = check_labels(gen, model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = config.seed if gen.seed is None else gen.seed
    plan = chunk_plan(gen.num_samples, gen.chunk_size)
    per_class = {"class_label": gen.label, "chunk_size": gen.chunk_size} if classes else {}
    sample = functools.partial(
        generate_chunk, model_dir=model_dir, seed=seed, out_dir=str(out_dir), **per_class
    )
    t0 = time.perf_counter()
    started: list[float] = []

    def here(item: tuple[int, int]) -> dict[str, Any]:
        warm_model(model_dir)  # once per process (cached)
        return sample(*item)

    def on_dask(client: Any, rest: list[tuple[int, int]]) -> list[dict[str, Any]]:
        client.run(warm_model, model_dir)  # every worker loads the model once, up front
        started.append(time.perf_counter())
        return map_with_progress(
            client,
            generate_chunk,
            [i for i, _ in rest],
            [n for _, n in rest],
            model_dir=model_dir,
            seed=seed,
            out_dir=str(out_dir),
            **per_class,
            label="generate",
            report=log.info,
        )

    chunks = here_or_on_dask(
        gen.parallel, config.compute, plan, here, on_dask, label="generate", report=log.info
    )
    elapsed = time.perf_counter() - t0
    chunks.sort(key=lambda c: c["index"])
    atomic.write_json(
        out_dir / "samples.json",
        {
            "seed": seed,
            "num_samples": gen.num_samples,
            "chunk_size": gen.chunk_size,
            "model_dir": model_dir,
            # a conditional model's: "balanced" (sample i of class i mod num_classes) or K
            **(
                {"num_classes": classes, "labels": "balanced" if gen.label is None else gen.label}
                if classes
                else {}
            ),
            "chunks": chunks,
        },
        sort_keys=False,
    )
    first = np.load(out_dir / chunks[0]["file"], allow_pickle=False)
    if "lengths_file" in chunks[0]:  # series: the first grid_rows, one panel each
        # imported here: matplotlib is 0.7 s of every genpar start-up that draws no series
        from genpar_models.eval.plots import plot_generated_series

        plot_generated_series(first, out_dir / "grid.png", rows=gen.grid_rows)
    elif classes and gen.label is None:  # one row per class, grid_rows samples each
        rows = class_rows(cached_model(model_dir), gen.grid_rows, seed)
        with atomic.atomic_path(out_dir / "grid.png") as tmp:
            make_grid(rows, classes, cols=gen.grid_rows).save(tmp, format="PNG")
    else:  # rows x rows samples: from as many chunks as that takes, not the first alone
        shown = _leading_samples(out_dir, chunks, first, gen.grid_rows**2)
        with atomic.atomic_path(out_dir / "grid.png") as tmp:
            make_grid(shown, gen.grid_rows).save(tmp, format="PNG")
    return {
        "gen/num_samples": float(gen.num_samples),
        "gen/samples_per_s": gen.num_samples / elapsed,
        # before the first chunk could start on a cluster (0 when none was used)
        "gen/startup_s": started[0] - t0 if started else 0.0,
    }


@task(
    name="generate",
    task_run_name="generate-{config.model.name}",
    retries=1,
    retry_delay_seconds=5,
    cache_policy=NO_CACHE,
)
def generate(config: PipelineConfig, model_dir: str, run_dir: str) -> dict[str, float]:
    metrics = generate_to_dir(config, model_dir, Path(run_dir) / "samples")
    run_logger().info(
        "generated %d samples at %.0f samples/s",
        config.generate.num_samples,
        metrics["gen/samples_per_s"],
    )
    return metrics


def _leading_samples(
    out_dir: Path, chunks: list[dict[str, Any]], first: np.ndarray, n: int
) -> np.ndarray:
    """The first `n` samples of the set (fewer when it is smaller), chunk by chunk."""
    parts, have = [first], len(first)
    for chunk in chunks[1:]:
        if have >= n:
            break
        parts.append(np.load(out_dir / chunk["file"], allow_pickle=False))
        have += len(parts[-1])
    return np.concatenate(parts)[:n]


SAMPLE_SET_FILE = re.compile(r"^(samples\.json|grid\.png|samples-\d{5}(\.lengths|\.labels)?\.npy)$")


def check_labels(gen: Any, model_dir: str) -> int:
    """The classes of the model in `model_dir` (0: unconditional), after checking
    generate.label / generate.balanced_labels against them, before any sample is drawn.

    Raises:
        ConfigError: naming --label (generate.label) or --labels (generate.balanced_labels).
    """
    spec = json.loads((Path(model_dir) / META_FILE).read_text())["model_spec"]
    classes = num_classes_of(spec)
    check_label(classes, gen.label, "--label (generate.label)")
    if gen.balanced_labels and not classes:
        raise ConfigError(
            "--labels (generate.balanced_labels): this model is not conditional "
            "(model.conditional: false), so it samples no classes; leave it out"
        )
    return classes


def check_output(out: str | Path, overwrite: bool) -> Path:
    """The output directory of `genpar generate`, absolute; refused before any work when it
    is a file, or not empty without `overwrite`. `overwrite` replaces only a previous genpar
    sample set: a directory holding anything else (a home directory, a project) is refused,
    naming what genpar did not write."""
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise GenparError(f"--out {path} exists and is not a directory")
    if not path.is_dir() or not any(path.iterdir()):
        return path
    if not overwrite:
        raise GenparError(f"--out {path} is not empty; choose another directory or --overwrite")
    foreign = sorted(p.name for p in path.iterdir() if not SAMPLE_SET_FILE.match(p.name))
    if foreign or not _is_sample_set(path / "samples.json"):
        what = ", ".join(foreign[:5]) + (" …" if len(foreign) > 5 else "")
        raise GenparError(
            f"--out {path} is not a genpar sample set"
            + (f" (it holds {what})" if foreign else " (no valid samples.json)")
            + "; --overwrite only replaces a directory genpar generate wrote: choose an empty "
            "or new directory"
        )
    return path


def _is_sample_set(manifest: Path) -> bool:
    try:
        info = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and isinstance(info.get("chunks"), list) and "seed" in info


@task(
    name="generate-samples",
    task_run_name="generate-samples-{config.generate.num_samples}",
    retries=1,
    retry_delay_seconds=5,
    cache_policy=NO_CACHE,
)
def generate_samples(
    config: PipelineConfig, model_dir: str, out: str, overwrite: bool
) -> dict[str, float]:
    """Generate into a staging directory beside `out`, then rename it onto `out` (whole)."""
    with atomic.staged_directory(out, replace=overwrite) as staging:
        metrics = generate_to_dir(config, model_dir, staging)
    return metrics
