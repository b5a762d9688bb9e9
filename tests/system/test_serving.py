"""`mlflow models serve -m models:/tiny@champion` serves a registered genpar version on
127.0.0.1: good requests (JSON and PNG samples, VAE reconstruct and ELBO) get the answers
`predict` gives in process, bad ones a 400 naming the field, and the server keeps serving.

The version is genpar 0.1's tiny VAE registered through the pipeline's own code (tests/
served.py) in a SQLite store of its own: no stack and no training needed.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from genpar_models.infer.serving import sample_images
from genpar_models.models.export import load_model
from infra import model_server
from tests.served import V1, register_v1
from tests.system.conftest import ARTIFACTS, free_port

pytestmark = [pytest.mark.system]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the module (it starts in ~7 s), always stopped."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('served') / 'mlflow.db'}"
    register_v1(MlflowClient(uri), "vae", "tiny")
    port = free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "mlflow-models-serve.log"
    proc = model_server.start("models:/tiny@champion", uri, port, log)
    try:
        model_server.wait_serving(proc, f"http://127.0.0.1:{port}", log, timeout_s=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        model_server.stop(proc)


def _post(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/invocations", json=body, timeout=60)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dataframe_records": [{"n": 0, "seed": 1}]}, "n must be between 1 and 4096, got 0"),
        ({"dataframe_records": [{"n": 4097}]}, "n must be between 1 and 4096, got 4097"),
        ({"dataframe_records": [{"n": 2.5}]}, "n must be an integer, got 2.5"),
        ({"dataframe_records": [{"n": "four"}]}, "n must be an integer, got 'four'"),
        ({"dataframe_records": [{"n": 2, "seed": "x"}]}, "seed must be an integer"),
        ({"dataframe_records": [{"seed": 1}]}, "missing column 'n'"),
        ({"dataframe_records": [{"count": 1}]}, "missing column"),
        ({"dataframe_records": [{"n": 2, "label": 7}]}, "label 7 is unknown"),
        ({"inputs": [{"n": 1}], "params": {"format": "gif"}}, "params.format: 'gif'"),
        ({"inputs": [{"n": 1}], "params": {"task": "elbo"}}, "missing column 'image'"),
        ({"inputs": [{"image": "bm90IGEgcG5n"}], "params": {"task": "reconstruct"}}, "image:"),
    ],
)
def test_bad_requests_get_a_400_naming_the_field_and_the_server_survives(
    served: str, body: dict, field: str
) -> None:
    bad = _post(served, body)
    assert bad.status_code == 400, bad.text
    assert field in bad.json()["message"]
    good = _post(served, {"dataframe_records": [{"n": 1, "seed": 0}]})
    assert good.status_code == 200 and good.json()["predictions"][0]["shape"] == [1, 1, 8, 8]


def _png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def test_good_requests_sample_reconstruct_and_score(served: str) -> None:
    model, _ = load_model(V1 / "model-vae")
    expected = sample_images(model, 300, 7, 250)  # `genpar generate --n 300 --seed 7`'s chunks
    answer = _post(served, {"dataframe_records": [{"n": 300, "seed": 7}, {"n": 3, "seed": 1}]})
    assert answer.status_code == 200, answer.text
    first, second = answer.json()["predictions"]
    assert first["shape"] == [300, 1, 8, 8] and first["dtype"] == "uint8"
    assert np.array_equal(np.array(first["samples"], dtype=np.uint8), expected)
    assert second["shape"] == [3, 1, 8, 8]

    png = _post(served, {"inputs": [{"n": 300, "seed": 7}], "params": {"format": "png"}})
    (answer,) = png.json()["predictions"]
    assert answer["format"] == "png" and len(answer["samples"]) == 300
    assert np.array_equal(_png(answer["samples"][299]), expected[299, 0])

    image = expected[0]
    rows = [{"image": image.tolist()}, {"image": answer["samples"][0]}]  # nested list, PNG
    recon = _post(served, {"inputs": rows, "params": {"task": "reconstruct", "format": "png"}})
    assert recon.status_code == 200, recon.text
    a, b = (_png(r["samples"][0]) for r in recon.json()["predictions"])
    assert a.shape == (8, 8) and np.array_equal(a, b)  # the same image, sent two ways
    scored = _post(served, {"inputs": [{**rows[0], "seed": 1}], "params": {"task": "elbo"}})
    (elbo,) = scored.json()["predictions"]
    assert elbo["unit"] == "nats" and elbo["elbo"] == pytest.approx(-(elbo["recon"] + elbo["kl"]))


@pytest.fixture(scope="module")
def served_series(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A recurrent VAE (2 channels, lengths 3-7, source units around 50 and -2) registered
    through the pipeline's code and served by `mlflow models serve`; (server URL, store URI)."""
    import torch

    from genpar_models.config import ModelConfig
    from genpar_models.models.export import export_model
    from genpar_models.models.registry import get_family
    from tasks import registry, served_model

    root = tmp_path_factory.mktemp("served-series")
    torch.manual_seed(0)
    net = get_family("rvae").build(ModelConfig(name="rvae", latent_dim=3, hidden_dim=8), (7, 2))
    net.fit_lengths(torch.tensor([3, 5, 7, 7]))
    net.fit_normalisation([50.0, -2.0], [10.0, 0.5])
    model_dir = root / "model"
    export_model(model_dir, module=net.eval(), spec=net.model_spec(), meta={"step": 0})
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("series")).info.run_id
    client.log_artifacts(run_id, str(model_dir), registry.MODEL_ARTIFACT)
    version = registry.register_once(
        client, run_id, name="sines", tags={},
        log_model=lambda: served_model.log_served_model(
            client, run_id, model_dir, binarize="none", max_samples=64
        ),
    )  # fmt: skip
    client.set_registered_model_alias("sines", registry.ALIAS, version)
    port = free_port()
    log = ARTIFACTS / "mlflow-models-serve-series.log"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    proc = model_server.start("models:/sines@champion", uri, port, log)
    try:
        model_server.wait_serving(proc, f"http://127.0.0.1:{port}", log, timeout_s=120)
        yield f"http://127.0.0.1:{port}", uri
    finally:
        model_server.stop(proc)


def test_a_served_sequence_model_answers_series_over_http(served_series: tuple[str, str]) -> None:
    """Over HTTP as in process: the same series (cut at their lengths, in the source's units),
    reconstructions and ELBO terms; bad series get a 400 naming the row and the field."""
    import mlflow
    import pandas as pd

    from tasks.served_model import global_tracking_uri

    url, uri = served_series
    answer = _post(url, {"dataframe_records": [{"n": 20, "seed": 7}]})
    assert answer.status_code == 200, answer.text
    (sampled,) = answer.json()["predictions"]
    with global_tracking_uri(uri):
        local = mlflow.pyfunc.load_model("models:/sines@champion")
        (expected,) = local.predict(pd.DataFrame([{"n": 20, "seed": 7}]))
    assert sampled["shape"] == [20, 7, 2] and sampled["lengths"] == expected["lengths"]
    assert set(sampled["lengths"]) <= {3, 5, 7}
    for got, want in zip(sampled["series"], expected["series"], strict=True):
        assert np.array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    assert 30 < float(np.mean(np.concatenate(sampled["series"])[:, 0])) < 70  # source units

    short = [[52.0, -2.5], [48.0, -1.0], [55.0, -2.0]]
    recon = _post(url, {"inputs": [{"series": short}], "params": {"task": "reconstruct"}})
    assert recon.status_code == 200, recon.text
    assert recon.json()["predictions"][0]["lengths"] == [3]
    scored = _post(url, {"inputs": [{"series": short, "seed": 3}], "params": {"task": "elbo"}})
    (elbo,) = scored.json()["predictions"]
    assert elbo["steps"] == 3 and elbo["elbo"] == pytest.approx(-(elbo["recon"] + elbo["kl"]))
    for row, field in (
        ({"series": [[1.0, 2.0, 3.0]]}, "channel"),
        ({"series": [[float(i), 0.0] for i in range(8)]}, "step"),
    ):
        bad = _post(url, {"inputs": [row], "params": {"task": "reconstruct"}})
        assert bad.status_code == 400 and "row 0" in bad.json()["message"], bad.text
        assert field in bad.json()["message"], bad.text
    png = _post(url, {"inputs": [{"n": 1}], "params": {"format": "png"}})
    assert png.status_code == 400 and "png" in png.json()["message"]
