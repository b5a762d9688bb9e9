"""A registered version is an MLflow model: it loads with `mlflow.pyfunc.load_model` in a fresh
process and samples what `genpar generate` writes; its folder holds no pickle; its scorecard
is linked to it; versions registered before it still resolve for genpar's consumers."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from flows.generate import generate_flow
from genpar_models.infer.sampling import chunk_plan, generate_chunk
from genpar_models.models.export import load_model
from genpar_models.util.paths import default_tracking_uri
from tasks import registry
from tests.served import V1, pickles_in, register_v1

pytestmark = [pytest.mark.integration]
RECORDED_SHA = json.loads((V1 / "model-vae" / "model.json").read_text())["sha256"]

# n = 300 spans two of `genpar generate`'s default chunks (250): the chunking must match too.
FRESH = """
import sys, numpy as np, pandas as pd, mlflow
vae = mlflow.pyfunc.load_model("models:/tiny@champion")
out = vae.predict(pd.DataFrame([{"n": 300, "seed": 7}, {"n": 2, "seed": 1}]))
np.save(sys.argv[1], np.array(out[0]["samples"], dtype=np.uint8))
gan = mlflow.pyfunc.load_model("models:/tiny-gan/1")
np.save(sys.argv[2], np.array(gan.predict([{"n": 5, "seed": 3}])[0]["samples"], np.uint8))
print(sorted(m for m in ("prefect", "dask") if m in sys.modules))
"""


def test_a_version_loads_in_a_fresh_process_and_samples_what_generate_writes(
    prefect_server, tracked_home: Path, tmp_path: Path
) -> None:
    uri = default_tracking_uri()
    client = MlflowClient(uri)
    assert register_v1(client, "vae", "tiny") == "1"
    register_v1(client, "dcgan", "tiny-gan", champion=False)

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    vae_out, gan_out = tmp_path / "vae.npy", tmp_path / "gan.npy"
    fresh = subprocess.run(
        [sys.executable, "-c", FRESH, str(vae_out), str(gan_out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert fresh.stdout.strip().splitlines()[-1] == "[]"  # no orchestration to load a model

    result = generate_flow("models:/tiny/1", None, n=300, out=str(tmp_path / "gen"), seed=7)
    meta = json.loads((Path(result["out"]) / "samples.json").read_text())
    assert [c["count"] for c in meta["chunks"]] == [250, 50]
    generated = np.concatenate([np.load(Path(result["out"]) / c["file"]) for c in meta["chunks"]])
    assert np.array_equal(np.load(vae_out), generated)  # bit for bit

    chunks = [
        generate_chunk(i, k, model_dir=str(V1 / "model-dcgan"), seed=3, out_dir=str(tmp_path))
        for i, k in chunk_plan(5, 250)
    ]
    expected = np.concatenate([np.load(tmp_path / c["file"]) for c in chunks])
    assert np.array_equal(np.load(gan_out), expected)


def test_the_model_folder_holds_no_pickle_and_carries_its_scorecard(
    tracked_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = default_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the registry MLflow's download reads
    client = MlflowClient(uri)
    version = client.get_model_version("tiny", register_v1(client, "vae", "tiny"))
    assert version.source.startswith("models:/m-")
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.source_run_id == version.run_id and logged.status.to_int() == 2  # READY
    assert {m.key: m.value for m in logged.metrics} == {"eval/fid": 12.5}

    folder = Path(
        mlflow.artifacts.download_artifacts("models:/tiny@champion", dst_path=str(tmp_path / "m"))
    )
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"MLmodel", "mlflow_model.py", "input_example.json", "requirements.txt"} <= names
    assert {"artifacts/model/model.safetensors", "artifacts/serving.json"} <= names
    mlmodel = (folder / "MLmodel").read_text()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel  # models from code
    assert "signature" in mlmodel and "python_model.pkl" not in names
    assert pickles_in(folder) == []
    # the scan finds one when there is one (a test that cannot fail proves nothing)
    shutil.copytree(folder, tmp_path / "spiked")
    (tmp_path / "spiked" / "artifacts" / "weights.bin").write_bytes(pickle.dumps({"w": 1}))
    assert [Path(f.split(":")[0]).name for f in pickles_in(tmp_path / "spiked")] == ["weights.bin"]


def test_versions_old_and_new_resolve_to_the_same_weights_for_genpar(
    tracked_home: Path, tmp_path: Path
) -> None:
    client = MlflowClient(default_tracking_uri())
    new = register_v1(client, "vae", "tiny")
    run_id = client.get_model_version("tiny", new).run_id
    # a version as genpar 0.1 registered it: the run's model/ directory, no MLflow model
    source = f"{client.get_run(run_id).info.artifact_uri}/{registry.MODEL_ARTIFACT}"
    old = client.create_model_version("tiny", source, run_id=run_id).version
    for ref in (f"models:/tiny/{new}", f"models:/tiny/{old}", "tiny@champion"):
        found = registry.resolve(client, ref, default_name=None, cache=tmp_path / ref[-3:])
        _, meta = load_model(found.model_dir)
        assert found.run_id == run_id and meta["sha256"] == RECORDED_SHA
