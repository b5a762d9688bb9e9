"""Configs, stored model specs and registered models written by genpar 0.1 keep loading.

The fixtures under tests/fixtures/v1/ were written by genpar 0.1, before the layout of one home
per concern: today's tiny config (no `version`), the exported tiny VAE and DCGAN of a
`genpar run configs/tiny.yaml` (model.json + safetensors), and what that run recorded
(tiny_run.json: MLflow keys, scorecard, weights' and samples' sha256).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from mlflow import MlflowClient

from genpar_models.config import CONFIG_VERSION, PipelineConfig, load_config
from genpar_models.errors import ConfigError
from genpar_models.infer.sampling import generate_chunk
from genpar_models.models.export import load_exported, load_model
from tasks import registry
from tests.conftest import REPO

V1 = REPO / "tests" / "fixtures" / "v1"
RECORDED = json.loads((V1 / "tiny_run.json").read_text())


def test_a_config_file_without_version_is_migrated_with_a_notice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="genpar.config"):
        old = load_config(V1 / "tiny.yaml")
    assert old.version == CONFIG_VERSION
    notices = [r.getMessage() for r in caplog.records if r.name == "genpar.config"]
    assert all(str(V1 / "tiny.yaml") in n for n in notices)
    assert [n.split("version ")[1][:6] for n in notices] == ["1 -> 2", "2 -> 3", "3 -> 4"]
    today = load_config(REPO / "configs" / "tiny.yaml")
    unpinned = today.compute.model_copy(update={"threads_per_proc": None})
    assert old == today.model_copy(update={"compute": unpinned})


@pytest.mark.parametrize("kind", ["vae", "dcgan"])
def test_the_config_a_genpar_0_1_run_stored_still_loads(kind: str) -> None:
    """config.yaml of a 0.1 run (every field written out, KID's subset fields included), as
    `genpar evaluate` reads it back from MLflow."""
    cfg = load_config(V1 / f"model-{kind}" / "config.yaml")
    assert cfg.version == CONFIG_VERSION and cfg.model.name == kind
    assert "kid_subsets" not in cfg.evaluate.model_dump()


def test_a_current_config_file_loads_silently(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="genpar.config"):
        load_config(REPO / "configs" / "tiny.yaml")
    assert not [r for r in caplog.records if r.name == "genpar.config"]


def test_a_stored_tree_of_an_older_version_is_migrated_on_validation() -> None:
    """Run specs and deployment parameters are validated, not loaded from files."""
    assert PipelineConfig.model_validate({"version": 1, "name": "old"}).version == CONFIG_VERSION


@pytest.mark.parametrize("version", [CONFIG_VERSION + 1, 0, "two"])
def test_an_unknown_version_is_refused_naming_it(tmp_path: Path, version: object) -> None:
    path = tmp_path / "future.yaml"
    path.write_text(f"version: {json.dumps(version)}\nname: x\n")
    with pytest.raises(ConfigError, match="version"):
        load_config(path)


@pytest.mark.parametrize("kind", ["vae", "dcgan"])
def test_a_model_exported_by_genpar_0_1_loads_and_samples_the_same(
    tmp_path: Path, kind: str
) -> None:
    model_dir = V1 / f"model-{kind}"
    model, meta = load_model(model_dir)
    assert meta["sha256"] == RECORDED[kind]["weights_sha256"]
    # tiny's generation: seed 0, chunks of 16; chunk 0 is what `genpar run` wrote then
    chunk = generate_chunk(0, 16, model_dir=str(model_dir), seed=0, out_dir=str(tmp_path))
    assert chunk["sha256"] == RECORDED[kind]["samples_sha256"][0]


def test_a_version_registered_by_genpar_0_1_resolves_and_loads(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("old", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, str(V1 / "model-vae"), registry.MODEL_ARTIFACT)
    # as genpar 0.1 registered it: the run's model/ directory, no MLflow model
    client.create_registered_model("tiny", tags={"genpar": "1"})
    source = f"{client.get_run(run_id).info.artifact_uri}/{registry.MODEL_ARTIFACT}"
    version = client.create_model_version("tiny", source, run_id=run_id).version
    found = registry.resolve(client, f"models:/tiny/{version}", default_name=None, cache=tmp_path)
    assert found.run_id == run_id
    state, _ = load_exported(found.model_dir)
    model, _ = load_model(found.model_dir)
    assert all((model.state_dict()[k] == v).all() for k, v in state.items())
