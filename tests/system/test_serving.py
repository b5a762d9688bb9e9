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
