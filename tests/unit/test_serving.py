"""What a served model does with a request (genpar_models/infer/serving.py, encoding.py),
on the models genpar 0.1 exported: checks that name the field, and answers that are
`genpar generate`'s samples, reconstructions and ELBOs."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from genpar_models.infer.encoding import (
    EncodingError,
    decode_image,
    encode_images,
    png_base64,
    use_c_json_encoder,
)
from genpar_models.infer.sampling import chunk_plan, generate_chunk
from genpar_models.infer.serving import (
    RequestError,
    Server,
    ServingSpec,
    check_rows,
    parse_params,
    rows_of,
)
from genpar_models.models.export import load_model
from genpar_models.models.registry import get_family
from tests.conftest import REPO

V1 = REPO / "tests" / "fixtures" / "v1"
SPEC = ServingSpec(chunk_size=16, max_samples_per_request=100, image_shape=(1, 8, 8))


def _server(kind: str, spec: ServingSpec = SPEC) -> Server:
    model, meta = load_model(V1 / f"model-{kind}")
    return Server(model, get_family(meta["model_spec"]["name"]), spec)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"n": 0, "seed": 1}], r"row 0: n must be between 1 and 100, got 0"),
        ([{"n": -3}], r"row 0: n must be between 1 and 100, got -3"),
        ([{"n": 101}], r"row 0: n must be between 1 and 100, got 101"),
        ([{"n": 2.5}], r"row 0: n must be an integer, got 2.5"),
        ([{"n": "4"}], r"row 0: n must be an integer, got '4'"),
        ([{"n": True}], r"row 0: n must be an integer, got True"),
        ([{"n": 2}, {"seed": 1}], r"row 1: missing column 'n'"),
        ([{"n": 2, "seed": -1}], r"row 0: seed must be between 0 and"),
        ([{"n": 2, "label": 3}], r"row 0: label 3 is unknown: this model is not conditional"),
    ],
)
def test_bad_sample_rows_are_refused_naming_row_and_field(rows: list, match: str) -> None:
    with pytest.raises(RequestError, match=match):
        check_rows(rows, "sample", SPEC)


def test_integral_floats_pass_because_pandas_turns_gappy_int_columns_into_floats() -> None:
    frame = pd.DataFrame([{"n": 3, "seed": 5}, {"n": 2}])  # seed becomes 5.0, NaN
    assert check_rows(rows_of(frame), "sample", SPEC) == [
        {"n": 3, "seed": 5},
        {"n": 2, "seed": 0},
    ]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"task": "denoise"}, r"params.task: 'denoise' is not one of sample, reconstruct, elbo"),
        ({"format": "jpeg"}, r"params.format: 'jpeg' is not one of json, png"),
        ({"fmt": "png"}, r"params: unknown \['fmt'\]"),
    ],
)
def test_bad_params_are_refused_naming_them(params: dict, match: str) -> None:
    with pytest.raises(RequestError, match=match):
        parse_params(params)
    assert parse_params(None) == ("sample", "json")


def test_images_round_trip_as_nested_lists_and_as_png() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (3, 1, 8, 8), dtype=np.uint8)
    as_json = encode_images(grey, "json")
    assert as_json["shape"] == [3, 1, 8, 8] and as_json["dtype"] == "uint8"
    assert np.array_equal(np.array(as_json["samples"], dtype=np.uint8), grey)
    as_png = encode_images(grey, "png")
    assert as_png["format"] == "png" and len(as_png["samples"]) == 3
    for png, image in zip(as_png["samples"], grey, strict=True):
        assert np.array_equal(decode_image(png, (1, 8, 8), "image"), image)
        assert np.array_equal(decode_image(image.tolist(), (1, 8, 8), "image"), image)
        assert np.array_equal(decode_image(image[0].tolist(), (1, 8, 8), "image"), image)
    rgb = rng.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    assert np.array_equal(decode_image(png_base64(rgb), (3, 5, 7), "image"), rgb)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ([[0] * 8] * 7, r"row 2: image: image of shape \[1, 7, 8\], the model takes \[1, 8, 8\]"),
        ([[300] * 8] * 8, r"row 2: image: pixel values must lie in 0..255"),
        ([[0.5] * 8] * 8, r"row 2: image: pixel values must be whole numbers"),
        ([[0] * 8, [0] * 3], r"row 2: image: not a rectangular array"),
        ("not base64!", r"row 2: image: a string must be a base64-encoded PNG"),
        (base64.b64encode(b"GIF89a nope").decode(), r"row 2: image: not a readable PNG"),
        ({"a": 1}, r"row 2: image: expected a nested list of integers"),
    ],
)
def test_bad_images_are_refused_naming_the_field(value: object, match: str) -> None:
    with pytest.raises(EncodingError, match=match):
        decode_image(value, (1, 8, 8), "row 2: image")


@pytest.mark.parametrize("kind", ["vae", "dcgan"])
def test_a_request_samples_what_generate_writes(tmp_path, kind: str) -> None:
    """n = 40 in chunks of 16: the chunks `genpar generate` writes, concatenated, bit for bit."""
    server = _server(kind)
    (answer, other) = server.predict(pd.DataFrame([{"n": 40, "seed": 7}, {"n": 1, "seed": 8}]))
    expected = np.concatenate(
        [
            np.load(
                tmp_path
                / generate_chunk(
                    i, size, model_dir=str(V1 / f"model-{kind}"), seed=7, out_dir=str(tmp_path)
                )["file"]
            )
            for i, size in chunk_plan(40, SPEC.chunk_size)
        ]
    )
    assert answer["shape"] == [40, 1, 8, 8] and answer["dtype"] == "uint8"
    assert np.array_equal(np.array(answer["samples"], dtype=np.uint8), expected)
    assert other["shape"] == [1, 1, 8, 8]
    png = server.predict([{"n": 40, "seed": 7}], params={"format": "png"})[0]
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(png["samples"][1]))))
    assert np.array_equal(pixels, expected[1, 0])


def test_a_vae_reconstructs_and_scores_images_a_gan_says_it_cannot() -> None:
    server = _server("vae")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 1, 8, 8), dtype=np.uint8)
    rows = [{"image": images[0].tolist()}, {"image": png_base64(images[1])}]
    recon = server.predict(rows, params={"task": "reconstruct"})
    expected = server.model.reconstruct(torch.from_numpy(images).float() / 255.0)
    expected = (expected * 255.0).round().to(torch.uint8).numpy()
    assert [r["shape"] for r in recon] == [[1, 1, 8, 8]] * 2
    assert np.array_equal(np.array([r["samples"][0] for r in recon], dtype=np.uint8), expected)
    scored = server.predict([{**rows[0], "seed": 3}, {**rows[0], "seed": 3}], {"task": "elbo"})
    assert scored[0] == scored[1] and scored[0]["unit"] == "nats"
    assert scored[0]["elbo"] == pytest.approx(-(scored[0]["recon"] + scored[0]["kl"]))
    with pytest.raises(RequestError, match=r"row 0: missing column 'image'"):
        server.predict([{"n": 3}], params={"task": "elbo"})
    gan = _server("dcgan")
    with pytest.raises(RequestError, match="params.task: the dcgan family cannot reconstruct"):
        gan.predict(rows, params={"task": "reconstruct"})
    with pytest.raises(RequestError, match="params.task: the dcgan family has no likelihood"):
        gan.predict(rows, params={"task": "elbo"})


def test_the_scoring_servers_json_is_the_same_bytes_with_the_c_encoder() -> None:
    from mlflow.pyfunc.scoring_server import predictions_to_json

    answer = [encode_images(np.arange(2 * 64, dtype=np.uint8).reshape(2, 1, 8, 8), "json")]
    answer.append({"x": np.float32(1.5), "y": np.arange(3), "z": float("nan"), "s": "é"})
    before = io.StringIO()
    predictions_to_json(answer, before)
    use_c_json_encoder()
    after = io.StringIO()
    predictions_to_json(answer, after)
    assert after.getvalue() == before.getvalue()
    assert json.loads(after.getvalue())["predictions"][0]["shape"] == [2, 1, 8, 8]
