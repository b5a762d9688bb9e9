"""What a served genpar model does with a request: check it, then sample, reconstruct or score.

A request is rows (a pandas DataFrame, as MLflow's pyfunc hands them over, or a list of
dicts) and params. `task` (params, default `sample`) says what each row asks:

    sample       n (int >= 1, at most generate.max_samples_per_request), seed (int >= 0,
                 default 0), label (conditional models only: class 0..K-1; without it every
                 class, balanced, as `genpar generate` draws them) -> n images
    reconstruct  image (nested list or base64 PNG) -> its reconstruction (families that have
                 one, the VAE; a conditional VAE also needs the image's label)
    elbo         image, seed -> the one-sample ELBO terms in nats (families with a likelihood;
                 a conditional VAE's of log p(x | label), so it needs the label)

`format` (params, `json` or `png`) says how images come back. A sequence model (its family's
modality) answers series instead, as JSON only (series_encoding.py): `sample` gives n series
in the source's units with their lengths, and `reconstruct` and `elbo` take a `series` column
where an image model takes `image`. Sampling draws the chunks
`genpar generate` draws: chunk i of `chunk_plan(n, chunk_size)` from `seeding.chunk(seed, i)`
on one torch thread, so a row with n and seed returns the samples `genpar generate --n N
--seed S` writes, bit for bit. Bad rows raise `RequestError` naming the row and field, before
any work; the MLflow model turns it into a 400 answer.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from genpar_models.errors import GenparError
from genpar_models.infer.encoding import FORMATS, decode_image, encode_images
from genpar_models.infer.sampling import chunk_plan, sample_series, sample_uint8
from genpar_models.infer.series_encoding import decode_series, encode_series
from genpar_models.models.conditioning import num_classes_of, sample_labels
from genpar_models.models.family import Family
from genpar_models.util import seeding
from genpar_models.util.threads import torch_threads

TASKS = ("sample", "reconstruct", "elbo")
COLUMNS = "n, seed, label, image, series"
SERVING_FILE = "serving.json"
_SEED_LIMIT = 2**63


class RequestError(GenparError, ValueError):
    """A request a served model cannot answer (the message names the row and field)."""


@dataclass(frozen=True)
class ServingSpec:
    """What the served model needs beside the weights (serving.json in its artifacts)."""

    chunk_size: int  # generate.chunk_size of `genpar generate` without --config
    max_samples_per_request: int
    image_shape: tuple[int, ...]  # (C, H, W); a sequence model's (T, C)
    binarize: str = "none"  # data.binarize of the run: how `elbo` sees pixels
    modality: str = "images"  # the family's: "sequences" answers series (older files: images)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ServingSpec:
        return cls(**{**raw, "image_shape": tuple(raw["image_shape"])})

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "image_shape": list(self.image_shape)}


def parse_params(params: Mapping[str, Any] | None) -> tuple[str, str]:
    """(task, format) from the request's params, checked."""
    params = dict(params or {})
    task = params.pop("task", None) or "sample"
    fmt = params.pop("format", None) or "json"
    if task not in TASKS:
        raise RequestError(f"params.task: {task!r} is not one of {', '.join(TASKS)}")
    if fmt not in FORMATS:
        raise RequestError(f"params.format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if params:
        raise RequestError(f"params: unknown {sorted(params)}; allowed: task, format")
    return task, fmt


def rows_of(data: Any) -> list[dict[str, Any]]:
    """Request rows as dicts, missing cells (None, NaN) dropped."""
    if isinstance(data, pd.DataFrame):  # what MLflow's pyfunc hands over
        if len(data.columns) == 0:  # MLflow drops columns its signature does not name
            raise RequestError(
                f"missing column: the request's {len(data)} row(s) name none of {COLUMNS}"
            )
        data = data.to_dict(orient="records")
    elif isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
        raise RequestError(f"the request must be rows of fields, got {type(data).__name__}")
    if not data:
        raise RequestError("the request has no rows")
    return [{k: v for k, v in row.items() if not _missing(v)} for row in data]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def integer(row: Mapping[str, Any], field: str, i: int, *, low: int, high: int) -> int:
    """`row[field]` as an int in [low, high] (integral floats too: pandas turns an int column
    with a missing cell into floats)."""
    if field not in row:
        raise RequestError(f"row {i}: missing column {field!r}")
    value = row[field]
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, int | np.integer | float | np.floating
    ):
        raise RequestError(f"row {i}: {field} must be an integer, got {value!r}")
    if not float(value).is_integer():
        raise RequestError(f"row {i}: {field} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise RequestError(f"row {i}: {field} must be between {low} and {high}, got {int(value)}")
    return int(value)


def _seed(row: Mapping[str, Any], i: int) -> int:
    if "seed" not in row:
        return 0
    return integer(row, "seed", i, low=0, high=_SEED_LIMIT - 1)


def _no_label(row: Mapping[str, Any], i: int) -> None:
    if "label" in row:
        raise RequestError(
            f"row {i}: label {row['label']!r} is unknown: this model is not conditional "
            "(it takes no label)"
        )


def _label(row: Mapping[str, Any], i: int, classes: int, required: bool) -> int | None:
    """A conditional model's row label in [0, classes) (None when absent and not required)."""
    if not classes:
        _no_label(row, i)
        return None
    if "label" not in row and not required:
        return None
    if "label" not in row:
        raise RequestError(
            f"row {i}: missing column 'label': this model is conditional (classes 0.."
            f"{classes - 1}), so a reconstruction or likelihood is given the image's class"
        )
    return integer(row, "label", i, low=0, high=classes - 1)


def check_rows(
    rows: Sequence[Mapping[str, Any]], task: str, spec: ServingSpec, classes: int = 0
) -> list[dict]:
    """Every row checked for `task` (all of them before any work): n/seed or image/seed, and
    a conditional model's label (`classes` > 0)."""
    checked = []
    for i, row in enumerate(rows):
        label = _label(row, i, classes, required=task != "sample")
        extra = {"label": label} if classes else {}
        if task == "sample":
            limit = spec.max_samples_per_request
            n = integer(row, "n", i, low=1, high=limit)
            checked.append({"n": n, "seed": _seed(row, i), **extra})
        else:
            column = "series" if spec.modality == "sequences" else "image"
            if column not in row:
                raise RequestError(f"row {i}: missing column {column!r} (params.task is {task})")
            decode = decode_series if column == "series" else decode_image
            value = decode(row[column], spec.image_shape, f"row {i}: {column}")
            checked.append({"image": value, "seed": _seed(row, i), **extra})
    return checked


def sample_images(
    model: torch.nn.Module, n: int, seed: int, chunk_size: int, label: int | None = None
) -> np.ndarray:
    """n uint8 samples, chunked, seeded and (a conditional model's) labelled exactly as
    `genpar generate` does it."""
    k = num_classes_of(model)
    parts = [
        sample_uint8(
            model,
            size,
            seeding.chunk(seed, index),
            labels=sample_labels(k, index * chunk_size, size, label) if k else None,
        )
        for index, size in chunk_plan(n, chunk_size)
    ]
    return np.concatenate(parts)


def sample_series_chunks(
    model: torch.nn.Module, n: int, seed: int, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A sequence model's n series (source units, NaN-padded) and lengths, chunked and seeded
    exactly as `genpar generate` writes them."""
    parts = [
        sample_series(model, size, seeding.chunk(seed, index))
        for index, size in chunk_plan(n, chunk_size)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class Server:
    """A loaded model and what serving it needs; `predict` is the pyfunc's predict.

    Predictions run one at a time: MLflow's scoring server calls predict from several
    threads, and both the bits (the torch thread count) and a small machine's cores ask for
    one sampler at a time.
    """

    def __init__(self, model: torch.nn.Module, family: Family, spec: ServingSpec) -> None:
        self.model, self.family, self.spec = model, family, spec
        self.classes = num_classes_of(model)
        self._lock = threading.Lock()

    def predict(self, data: Any, params: Mapping[str, Any] | None = None) -> list[dict]:
        task, fmt = parse_params(params)
        if task == "reconstruct" and self.family.reconstruct is None:
            raise RequestError(f"params.task: the {self.family.name} family cannot reconstruct")
        if task == "elbo" and self.family.likelihood is None:
            raise RequestError(f"params.task: the {self.family.name} family has no likelihood")
        sequences = self.spec.modality == "sequences"
        if sequences and fmt != "json":
            raise RequestError(f"params.format: {fmt!r}: a sequence model answers json only")
        rows = check_rows(rows_of(data), task, self.spec, self.classes)
        with self._lock, torch_threads(1):
            if task == "sample":
                return [self._sample(r["n"], r["seed"], fmt, r.get("label")) for r in rows]
            images = torch.from_numpy(np.stack([r["image"] for r in rows]))
            if sequences:  # the model reads standardised series (the shards' units)
                images = (images - self.model.data_mean) / self.model.data_std
            labels = None
            if self.classes:
                labels = torch.tensor([r["label"] for r in rows], dtype=torch.long)
            if task == "reconstruct":
                return self._reconstruct(images, fmt, labels)
            return self._elbo(images, [r["seed"] for r in rows], labels)

    def _sample(self, n: int, seed: int, fmt: str, label: int | None = None) -> dict[str, Any]:
        if self.spec.modality == "sequences":
            chunk = self.spec.chunk_size
            return encode_series(*sample_series_chunks(self.model, n, seed, chunk))
        images = sample_images(self.model, n, seed, self.spec.chunk_size, label)
        out = encode_images(images, fmt)
        if self.classes:  # what each sample is of, in order
            k, c = self.classes, self.spec.chunk_size
            labels = [sample_labels(k, i * c, size, label) for i, size in chunk_plan(n, c)]
            out["labels"] = np.concatenate(labels).tolist()
        return out

    @torch.no_grad()
    def _reconstruct(
        self, images: torch.Tensor, fmt: str, labels: torch.Tensor | None = None
    ) -> list[dict[str, Any]]:
        assert self.family.reconstruct is not None
        if self.spec.modality == "sequences":  # posterior means, back in the source's units
            series = self.model.denormalise(self.family.reconstruct(self.model, images))
            values = series.float().numpy()
            lengths = (~np.isnan(values[..., 0])).sum(axis=1)
            return [
                encode_series(values[i : i + 1], lengths[i : i + 1]) for i in range(len(values))
            ]
        x = images.float() / 255.0
        if labels is None:
            out = self.family.reconstruct(self.model, x)
        else:
            out = self.family.reconstruct(self.model, x, labels)
        recon = (out.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
        return [encode_images(recon[i : i + 1], fmt) for i in range(len(recon))]

    @torch.no_grad()
    def _elbo(
        self, images: torch.Tensor, seeds: list[int], labels: torch.Tensor | None = None
    ) -> list[dict[str, Any]]:
        assert self.family.likelihood is not None
        answers = []
        for i, (image, seed) in enumerate(zip(images, seeds, strict=True)):  # own noise each
            gen = torch.Generator().manual_seed(seed)
            if self.spec.modality == "sequences":  # standardised units, as in training
                x, extra = image[None], {"steps": int((~torch.isnan(image[:, 0])).sum())}
            else:
                x, extra = self.family.to_input(image[None], self.spec.binarize, gen), {}
            if labels is None:
                terms = self.family.likelihood(self.model, x, gen, 0)
            else:
                terms = self.family.likelihood(self.model, x, gen, 0, labels[i : i + 1])
            answers.append({k: float(v[0]) for k, v in terms.items()} | extra | {"unit": "nats"})
        return answers
