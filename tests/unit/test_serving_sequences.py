"""A served sequence model (the rvae): a request samples the series `genpar generate` writes,
bit for bit, in the source's units with their lengths; `series` rows reconstruct and score;
bad series and image-only options are refused naming the row and field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from genpar_models.config import ModelConfig
from genpar_models.errors import GenparError
from genpar_models.infer.sampling import chunk_plan, generate_chunk
from genpar_models.infer.serving import Server, ServingSpec
from genpar_models.models.export import export_model, load_model
from genpar_models.models.registry import get_family

SPEC = ServingSpec(
    chunk_size=8, max_samples_per_request=50, image_shape=(7, 2), modality="sequences"
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = get_family("rvae").build(ModelConfig(name="rvae", latent_dim=3, hidden_dim=8), (7, 2))
    net.fit_lengths(torch.tensor([3, 5, 7, 7]))
    net.fit_normalisation([50.0, -2.0], [10.0, 0.5])
    out = tmp_path_factory.mktemp("rvae") / "model"
    export_model(out, module=net.eval(), spec=net.model_spec(), meta={})
    return out


def _server(model_dir: Path) -> Server:
    model, meta = load_model(model_dir)
    return Server(model, get_family(meta["model_spec"]["name"]), SPEC)


def test_a_request_samples_the_series_generate_writes(model_dir: Path, tmp_path: Path) -> None:
    server = _server(model_dir)
    answer, one = server.predict(pd.DataFrame([{"n": 20, "seed": 7}, {"n": 1, "seed": 7}]))
    chunks = [
        generate_chunk(i, size, model_dir=str(model_dir), seed=7, out_dir=str(tmp_path))
        for i, size in chunk_plan(20, SPEC.chunk_size)
    ]
    values = np.concatenate([np.load(tmp_path / c["file"]) for c in chunks])
    lengths = np.concatenate([np.load(tmp_path / c["lengths_file"]) for c in chunks])
    assert answer["shape"] == [20, 7, 2] and answer["dtype"] == "float32"
    assert answer["lengths"] == lengths.tolist() and set(lengths.tolist()) <= {3, 5, 7}
    wire = json.loads(json.dumps(answer))  # what crosses HTTP: no NaN, float32 exact
    for i, k in enumerate(lengths):
        got = np.asarray(wire["series"][i], dtype=np.float32)
        assert got.shape == (k, 2) and np.array_equal(got, values[i, :k])
    assert 30 < float(np.nanmean(values[..., 0])) < 70  # source units (mean 50), not standard
    assert one["shape"] == [1, 7, 2]


def test_series_rows_reconstruct_and_score(model_dir: Path) -> None:
    server = _server(model_dir)
    short = [[52.0, -2.5], [48.0, -1.0], [55.0, -2.0]]
    full = [[50.0 + i, -2.0] for i in range(7)]
    recon = server.predict([{"series": short}, {"series": full}], params={"task": "reconstruct"})
    assert [r["lengths"] for r in recon] == [[3], [7]]
    assert np.asarray(recon[0]["series"][0]).shape == (3, 2)
    scored = server.predict(
        [{"series": short, "seed": 3}, {"series": short, "seed": 3}], params={"task": "elbo"}
    )
    assert scored[0] == scored[1] and scored[0]["steps"] == 3 and scored[0]["unit"] == "nats"
    assert scored[0]["elbo"] == pytest.approx(-(scored[0]["recon"] + scored[0]["kl"]))
    # the model's own ELBO of the standardised series, with the same noise
    x = torch.full((1, 7, 2), float("nan"))
    x[0, :3] = (torch.tensor(short) - torch.tensor([50.0, -2.0])) / torch.tensor([10.0, 0.5])
    with torch.no_grad():
        out = server.model(x, generator=torch.Generator().manual_seed(3))
    assert scored[0]["elbo"] == pytest.approx(float(out["elbo"][0]), rel=1e-6)


@pytest.mark.parametrize(
    ("rows", "params", "match"),
    [
        ([{"n": 51}], None, r"row 0: n must be between 1 and 50, got 51"),
        ([{"n": 2}], {"format": "png"}, r"params.format: 'png': a sequence model answers json"),
        ([{"image": [[1.0, 2.0]]}], {"task": "elbo"}, r"row 0: missing column 'series'"),
        ([{"series": []}], {"task": "elbo"}, r"row 0: series: expected .* got an empty list"),
        ([{"series": [[1.0, 2.0, 3.0]]}], {"task": "elbo"}, r"row 0: series: step 0 has 3 chan"),
        ([{"series": [[1.0, 2.0]] * 8}], {"task": "reconstruct"}, r"8 steps; .* at most 7"),
        ([{"series": [[1.0, float("nan")]]}], {"task": "elbo"}, r"step 0 is not finite"),
        ([{"series": [["a", 1.0]]}], {"task": "elbo"}, r"row 0: series: expected a nested list"),
        ([{"series": "1,2"}], {"task": "elbo"}, r"row 0: series: expected .* got str"),
    ],
)
def test_bad_sequence_requests_are_refused_naming_the_field(
    model_dir: Path, rows: list, params: dict | None, match: str
) -> None:
    with pytest.raises(GenparError, match=match):  # RequestError or EncodingError: a 400
        _server(model_dir).predict(rows, params=params)
