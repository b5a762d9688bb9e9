"""configs/folder-resnet-vae.yaml on a real folder: a residual VAE at 64x64 RGB, end to end.

40 generated PNGs of coloured shapes go through the real pipeline (Dask preprocessing, a
2-rank torchrun, evaluation, generation, MLflow), shrunk to a few steps; the run's throughput
figures are checked and printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image, ImageDraw

from flows.pipeline import pipeline
from genpar_models.config import load_config
from genpar_models.util.paths import default_tracking_uri
from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def write_shapes(root: Path, n: int = 40, size: int = 64) -> Path:
    """n RGB PNGs (size x size) of a filled ellipse or rectangle in a random colour."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        bg = tuple(int(v) for v in rng.integers(0, 80, 3))
        img = Image.new("RGB", (size, size), bg)
        draw = ImageDraw.Draw(img)
        x0, y0 = (int(v) for v in rng.integers(4, size // 2, 2))
        x1, y1 = (int(v) for v in rng.integers(size // 2 + 4, size - 4, 2))
        colour = tuple(int(v) for v in rng.integers(120, 256, 3))
        (draw.ellipse if i % 2 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        img.save(root / f"shape-{i:03d}.png")
    return root


def test_resnet_vae_on_a_folder_of_rgb_images(
    prefect_server, tracked_home: Path, tmp_path: Path
) -> None:
    base = load_config(REPO / "configs" / "folder-resnet-vae.yaml")
    assert (base.model.arch, base.data.image_size, base.data.channels) == ("resnet", 64, 3)
    folder = write_shapes(tmp_path / "shapes")
    cfg = base.model_copy(
        update={
            "data": base.data.model_copy(
                update={"path": str(folder), "val_fraction": 0.2, "test_fraction": 0.25}
            ),
            "model": base.model.model_copy(update={"latent_dim": 8, "base_channels": 8}),
            "train": base.train.model_copy(
                update={
                    "max_steps": 4,
                    "batch_size_per_rank": 8,
                    "log_every_steps": 2,
                    "val_every_steps": 4,
                    "checkpoint_every_steps": 4,
                }
            ),
            "evaluate": base.evaluate.model_copy(
                update={"num_samples": 16, "iw_samples": 2, "extractor_steps": 10}
            ),
            "generate": base.generate.model_copy(update={"num_samples": 16, "chunk_size": 8}),
        }
    )
    summary = pipeline(cfg)
    client = MlflowClient(default_tracking_uri())
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert run.data.params["model.arch"] == "resnet"
    stored = json.loads((Path(summary["run_dir"]) / "model" / "model.json").read_text())
    spec = stored["model_spec"]
    assert spec["arch"] == "resnet" and spec["image_shape"] == [3, 64, 64]
    for key in ("train/loss", "eval/elbo", "eval/bits_per_dim", "gen/samples_per_s"):
        assert np.isfinite(metrics[key]), key
    assert 14 <= metrics["data/train_samples"] <= 30  # 40 images less the hashed val/test split
    print(
        f"resnet VAE 64x64 RGB: train/samples_per_s={metrics.get('train/samples_per_s', 0):.1f}"
        f" gen/samples_per_s={metrics['gen/samples_per_s']:.1f}"
    )
