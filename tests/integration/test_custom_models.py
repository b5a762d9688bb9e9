"""Your own network through the real pipeline: the examples' custom VAE on 2 torchrun ranks
(Prefect, Dask, SQLite MLflow, the scorecard with its likelihood, generation, the registry and
the served pyfunc model in a fresh process), and the custom GAN as a nightly retrain (one rank,
the moving average of its generator scored beside the raw one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from flows.nightly import nightly_retrain
from flows.pipeline import pipeline
from genpar_models.config import ModelConfig, PipelineConfig
from genpar_models.models.export import load_model
from genpar_models.util.paths import default_tracking_uri
from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVED = """
import sys, mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict([{"n": 3, "seed": 1}])
print(sys.modules["examples.custom_vae"].__file__)
print(out[0]["shape"])
"""


def _custom(tiny: PipelineConfig, path: str, **changes) -> PipelineConfig:
    model = ModelConfig(name=path, latent_dim=tiny.model.latent_dim, **changes.pop("model", {}))
    return tiny.model_copy(update={"model": model, **changes})


def test_custom_vae_pipeline_on_two_ranks_is_scored_registered_and_served(
    prefect_server, tracked_home: Path, tiny: PipelineConfig, tmp_path: Path
) -> None:
    name = "examples.custom_vae:TinyVAE"
    cfg = _custom(tiny, name, name="custom-vae", model={"options": {"hidden": 32}})
    assert cfg.compute.cpu_procs == 2
    summary = pipeline(cfg)
    client = MlflowClient(default_tracking_uri())
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == name
    assert run.data.params["model.options.hidden"] == "32"
    assert run.data.tags["genpar.world_size"] == "2"
    assert len(run.data.tags["genpar.lineage.network_code"]) == 16  # the nightly compares it
    for key in ("train/loss", "val/elbo", "eval/elbo", "eval/iw_bound", "eval/fid", "eval/kid"):
        assert np.isfinite(run.data.metrics[key]), key
    assert "eval/bits_per_dim" not in run.data.metrics  # TinyVAE does not claim a code length
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert history[-1].value < history[0].value  # it learned something

    run_dir = Path(summary["run_dir"])
    meta = json.loads((run_dir / "model" / "model.json").read_text())
    assert meta["model_spec"] == {
        "name": name,
        "image_shape": [1, 8, 8],
        "latent_dim": 4,
        "options": {"hidden": 32, "layers": 1},
    }
    assert sorted((run_dir / "checkpoints").glob("ckpt-*.safetensors"))
    samples = json.loads((run_dir / "samples" / "samples.json").read_text())
    assert sum(c["count"] for c in samples["chunks"]) == cfg.generate.num_samples
    model, _ = load_model(run_dir / "model")
    assert model.net.hidden == 32

    (version,) = client.search_model_versions("name='custom-vae'")
    assert version.run_id == summary["run_id"]
    # the served model re-imports the class from the module bundled with it (MLflow code):
    # in a fresh process outside the repository, where `examples` would not import
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.source_run_id == summary["run_id"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": default_tracking_uri()}
    env.pop("PYTHONPATH", None)
    served = subprocess.run(
        [sys.executable, "-c", SERVED, f"models:/custom-vae/{version.version}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    *_, module_file, shape = served.stdout.strip().splitlines()
    assert shape == "[3, 1, 8, 8]"
    assert not Path(module_file).is_relative_to(REPO)  # the bundled copy, not the checkout


def test_custom_gan_nightly_retrain_trains_scores_and_promotes(
    prefect_server, tracked_home: Path, tiny: PipelineConfig
) -> None:
    name = "examples.custom_gan:TinyGAN"
    cfg = _custom(
        tiny,
        name,
        name="custom-gan",
        model={"options": {"hidden": 32}, "ema_decay": 0.9},
        train=tiny.train.model_copy(update={"lr": 2e-4, "adam_beta1": 0.5, "max_steps": 20}),
        compute=tiny.compute.model_copy(update={"cpu_procs": 1}),
    )
    night = nightly_retrain(cfg)
    assert night["champion"] is None and night["decision"]["action"] == "promoted"
    client = MlflowClient(default_tracking_uri())
    run = client.get_run(night["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == name
    for key in ("train/loss_d", "train/loss_g", "val/d_real", "eval/fid", "eval/fid_raw"):
        assert np.isfinite(run.data.metrics[key]), key
    assert "eval/elbo" not in run.data.metrics
    champion = client.get_model_version_by_alias("custom-gan", "champion")
    assert champion.run_id == night["run_id"]
