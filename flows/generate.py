"""The generate flow behind `genpar generate`: sample from a registered model in parallel.

`model` is a model reference (tasks/registry.py); `champion` means the `champion` alias of the
config's registered model when a config names one (`named`), else of the one genpar model
that has a champion. Samples come from the pipeline's own generation code (seeded Dask chunks;
the same seed gives the same samples whatever the worker count) and are written whole: into a
staging directory that is renamed onto `out` when complete.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from genpar_models.config import PipelineConfig
from tasks import mlflow_store as store
from tasks.cluster import flow_cluster
from tasks.evaluate import resolve_model
from tasks.generate import check_output, generate_samples


@flow(name="genpar-generate", flow_run_name="generate-{model}")
def generate_flow(
    model: str = "champion",
    config: PipelineConfig | None = None,
    n: int = 1000,
    out: str = "samples",
    seed: int | None = None,
    overwrite: bool = False,
    named: bool = True,
    label: int | None = None,
    balanced_labels: bool = False,
) -> dict[str, Any]:
    """Generate `n` samples of `model` into `out` (.npy chunks, samples.json, grid.png).

    A conditional model (model.conditional) samples class `label` only, or every class
    balanced (the default; `balanced_labels` refuses an unconditional model); the labels are
    written beside the samples."""
    cfg = config or PipelineConfig()
    target = check_output(out, overwrite)
    gen: dict[str, Any] = {"num_samples": n, **({"seed": seed} if seed is not None else {})}
    if label is not None:
        gen["label"] = label
    if balanced_labels:
        gen["balanced_labels"] = True
    cfg = cfg.model_copy(update={"generate": cfg.generate.model_copy(update=gen)})
    uri = store.resolve_uri(cfg)
    found = resolve_model(model, uri, cfg.registered_model_name, named=named)
    with flow_cluster():
        metrics = generate_samples(cfg, found["model_dir"], str(target), overwrite)
    what = f"{found['name']} version {found['version']}" if found["version"] else model
    return {
        "model": what,
        "model_dir": found["model_dir"],
        "out": str(target),
        "grid": str(target / "grid.png"),
        "labels": "balanced" if label is None else label,
        "samples_per_s": metrics["gen/samples_per_s"],
    }
