"""The bad-input corpus: each case a real input, a clear error naming what was wrong, no residue.

Data cases run the real preprocessing task on a real Dask cluster (reached by
`compute.dask_address`, as with an existing cluster). Awkward-but-valid images (16-bit,
palette, CMYK, alpha, mixed sizes, one class) must be *handled*, with the values checked.
docs/RELIABILITY.md lists every case; keep the two in step.
"""

from __future__ import annotations

import gzip
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from genpar_models.config import PipelineConfig, load_config
from genpar_models.data.shards import open_shard_set
from genpar_models.errors import CheckpointError, ConfigError, DataError, ShardError
from genpar_models.models.export import build_model, export_model, load_model
from genpar_models.train import checkpoint
from genpar_models.util.paths import shards_root
from tasks.launcher import plan_processes
from tasks.preprocess import preprocess
from tests.conftest import TINY
from tests.helpers import family_steps, make_shard_set

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def dask_address():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ) as cluster:
        yield cluster.scheduler_address


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def _folder(root: Path, n: int = 12, size: tuple[int, int] = (10, 10)) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        _png(root / "a" / f"{i}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return root


def _cfg(address: str, **data: object) -> PipelineConfig:
    base = load_config(TINY)
    compute = base.compute.model_copy(update={"dask_address": address})
    full = {"max_samples": None, **data}
    return base.model_copy(update={"data": base.data.model_copy(update=full), "compute": compute})


def _expect_data_error(cfg: PipelineConfig, *needles: str) -> str:
    with pytest.raises(DataError) as exc:
        preprocess.fn(cfg)
    message = str(exc.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    root = shards_root()
    assert not root.exists() or list(root.iterdir()) == [], "half-written state left behind"
    return message


# --------------------------------------------------------------------------- broken files

BROKEN: dict[str, Callable[[Path], tuple[Path, str]]] = {}


def _case(fn: Callable[[Path], tuple[Path, str]]) -> Callable[[Path], tuple[Path, str]]:
    BROKEN[fn.__name__] = fn
    return fn


@_case
def truncated_png(root: Path) -> tuple[Path, str]:
    p = _png(root / "a" / "bad.png", np.full((64, 64, 3), 7, np.uint8))
    p.write_bytes(p.read_bytes()[:60])
    return p, "truncated"


@_case
def truncated_jpeg(root: Path) -> tuple[Path, str]:
    p = root / "a" / "bad.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:400])
    return p, "truncated"


@_case
def zero_byte_file(root: Path) -> tuple[Path, str]:
    p = root / "a" / "empty.png"
    p.write_bytes(b"")
    return p, "empty"


@_case
def text_named_png(root: Path) -> tuple[Path, str]:
    p = root / "a" / "notes.png"
    p.write_text("hello, I am not an image")
    return p, "not an image"


@_case
def decompression_bomb(root: Path) -> tuple[Path, str]:
    # 6000 x 6000 of one colour compresses to a few KB but decodes to 36 M pixels.
    p = root / "a" / "bomb.png"
    Image.new("L", (6000, 6000)).save(p)
    return p, "max_image_pixels"


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_image_is_named(case: str, home: Path, tmp_path: Path, dask_address: str) -> None:
    root = _folder(tmp_path / "imgs")
    bad, reason = BROKEN[case](root)
    cfg = _cfg(dask_address, source="folder", path=str(root), max_image_pixels=25_000_000)
    _expect_data_error(cfg, "1 bad sample(s)", bad.relative_to(root).as_posix(), reason)


def test_broken_image_is_skipped_and_counted(home: Path, tmp_path: Path, dask_address: str) -> None:
    root = _folder(tmp_path / "imgs")
    for fn in BROKEN.values():
        fn(root)
    manifest = open_shard_set(
        preprocess.fn(_cfg(dask_address, source="folder", path=str(root), on_bad="skip"))
    ).manifest
    assert manifest.skipped["count"] == len(BROKEN) and manifest.total == 12


# --------------------------------------------------------------------------- handled images


def _only_image(cfg: PipelineConfig) -> np.ndarray:
    shardset = open_shard_set(preprocess.fn(cfg))
    images = np.concatenate([shardset.load(s)[0] for s in ("train", "val", "test")])
    return images


AWKWARD = [
    ("16-bit", lambda p: Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(p), 255),
    ("palette", lambda p: Image.new("P", (8, 8), 3).save(p), None),
    (
        "cmyk",
        lambda p: Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(p.with_suffix(".jpg")),
        255,
    ),
    ("alpha", lambda p: Image.new("RGBA", (8, 8), (255, 255, 255, 0)).save(p), 0),
]


@pytest.mark.parametrize(("name", "make", "expect"), AWKWARD, ids=[c[0] for c in AWKWARD])
def test_awkward_modes_are_converted(
    name: str, make: Callable, expect: int | None, home: Path, tmp_path: Path, dask_address: str
) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    make(root / "x.png")
    cfg = _cfg(dask_address, source="folder", path=str(root), val_fraction=0.0, test_fraction=0.0)
    images = _only_image(cfg)
    assert images.shape == (1, 1, 8, 8) and images.dtype == np.uint8
    if expect is not None:
        assert abs(int(images.max()) - expect) <= 1, name


def test_mixed_sizes_and_a_single_class_are_handled(
    home: Path, tmp_path: Path, dask_address: str
) -> None:
    root = tmp_path / "imgs"
    for i, size in enumerate([(5, 9), (40, 12), (8, 8), (100, 30)]):
        _png(root / "only" / f"{i}.png", np.full((*size, 3), 200, np.uint8))
    cfg = _cfg(dask_address, source="folder", path=str(root), val_fraction=0.0, test_fraction=0.0)
    shardset = open_shard_set(preprocess.fn(cfg))
    images, labels = shardset.load("train")
    assert images.shape == (4, 1, 8, 8) and set(labels.tolist()) == {0}
    assert shardset.manifest.class_names == ["only"]


# --------------------------------------------------------------------------- layouts and arrays


def test_empty_folder(home: Path, tmp_path: Path, dask_address: str) -> None:
    (tmp_path / "empty").mkdir()
    _expect_data_error(
        _cfg(dask_address, source="folder", path=str(tmp_path / "empty")),
        str(tmp_path / "empty"),
        "no image",
    )


def test_images_in_root_and_subfolders(home: Path, tmp_path: Path, dask_address: str) -> None:
    root = _folder(tmp_path / "imgs")
    _png(root / "stray.png", np.zeros((8, 8), np.uint8))
    _expect_data_error(_cfg(dask_address, source="folder", path=str(root)), "stray.png")


def test_missing_path(home: Path, tmp_path: Path, dask_address: str) -> None:
    _expect_data_error(
        _cfg(dask_address, source="folder", path=str(tmp_path / "nope")), str(tmp_path / "nope")
    )


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


ARRAYS = [
    (
        "nan",
        lambda d: _npz(
            d / "x.npz",
            images=np.where(np.arange(64 * 20).reshape(20, 8, 8) == 70, np.nan, 0.5),
        ),
        ["x.npz[1]", "nan"],
    ),
    (
        "inf",
        lambda d: _npz(d / "x.npz", images=np.full((20, 8, 8), np.inf)),
        ["x.npz[0]", "inf"],
    ),
    (
        "complex dtype",
        lambda d: _npz(d / "x.npz", images=np.zeros((20, 8, 8), complex)),
        ["x.npz", "complex"],
    ),
    ("strings", lambda d: _npz(d / "x.npz", images=np.full((20, 8, 8), "a")), ["x.npz"]),
    (
        "2-D npy",
        lambda d: np.save(d / "x.npy", np.zeros((20, 64), np.uint8)) or d / "x.npy",
        ["x.npy", "(20, 64)"],
    ),
    (
        "no images key",
        lambda d: _npz(d / "x.npz", pixels=np.zeros((4, 8, 8))),
        ["x.npz", "pixels"],
    ),
    (
        "label out of range",
        lambda d: _npz(
            d / "x.npz",
            images=np.zeros((20, 8, 8), np.uint8),
            labels=np.r_[np.zeros(19, int), 12],
        ),
        ["x.npz", "row 19", "12"],
    ),
    (
        "pickled objects",
        lambda d: (
            (d / "x.npy").write_bytes(
                b"\x93NUMPY\x01\x00v\x00"
                + b"{'descr': '|O', 'fortran_order': False, 'shape': (2,), }".ljust(117)
                + b"\n"
                + pickle.dumps([1, 2])
            )
            and d / "x.npy"
        ),
        ["x.npy", "pickle"],
    ),
]


@pytest.mark.parametrize(("name", "make", "needles"), ARRAYS, ids=[c[0] for c in ARRAYS])
def test_bad_arrays(
    name: str, make: Callable, needles: list[str], home: Path, tmp_path: Path, dask_address: str
) -> None:
    path = make(tmp_path)
    cfg = _cfg(dask_address, source="array", path=str(path), num_classes=10)
    _expect_data_error(cfg, *needles)


def _table(path: Path, frame: pd.DataFrame) -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def _pixels(n: int = 20, p: int = 64) -> pd.DataFrame:
    return pd.DataFrame(np.zeros((n, p), np.uint8), columns=[f"px{i}" for i in range(p)])


TABLES = [
    (
        "parquet missing label column",
        lambda d: _table(d / "t.parquet", _pixels()),
        {"label_column": "digit"},
        ["t.parquet", "digit"],
    ),
    (
        "parquet extra text column",
        lambda d: _table(d / "t.parquet", _pixels().assign(note="hello")),
        {},
        ["t.parquet", "note"],
    ),
    (
        "pixel count not square",
        lambda d: _table(d / "t.parquet", _pixels(p=60)),
        {},
        ["t.parquet", "60"],
    ),
    (
        "ragged csv",
        lambda d: (
            (d / "t.csv").write_text(
                ",".join(f"px{i}" for i in range(64))
                + "\n"
                + ",".join(["0"] * 64)
                + "\n"
                + ",".join(["0"] * 70)
                + "\n"
            )
            and d / "t.csv"
        ),
        {},
        ["t.csv", "line 3"],
    ),
]


@pytest.mark.parametrize(
    ("name", "make", "overrides", "needles"), TABLES, ids=[c[0] for c in TABLES]
)
def test_bad_tables(
    name: str,
    make: Callable,
    overrides: dict,
    needles: list[str],
    home: Path,
    tmp_path: Path,
    dask_address: str,
) -> None:
    cfg = _cfg(dask_address, source="table", path=str(make(tmp_path)), **overrides)
    _expect_data_error(cfg, *needles)


# --------------------------------------------------------------------------- config


CONFIGS = [
    (["train.max_stepz=3"], ["unknown key 'max_stepz'"]),
    (["train.max_steps=ten"], ["train.max_steps", "valid integer"]),
    (["data.image_size=-8"], ["data.image_size", "-8"]),
    (["train.batch_size_per_rank=0"], ["train.batch_size_per_rank", "greater than or equal"]),
    (["model.latent_dim=0"], ["model.latent_dim"]),
]


@pytest.mark.parametrize(("overrides", "needles"), CONFIGS, ids=[c[0][0] for c in CONFIGS])
def test_bad_config(overrides: list[str], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(TINY, overrides)
    for needle in needles:
        assert needle in str(exc.value)


def test_more_cpu_procs_than_cores() -> None:
    import os

    cfg = load_config(TINY, [f"compute.cpu_procs={(os.cpu_count() or 1) + 1}"])
    with pytest.raises(
        ConfigError,
        match=r"compute.cpu_procs=\d+ is more than the \d+ core\(s\) this process may use",
    ):
        plan_processes(cfg.compute, cuda_devices=0)


# --------------------------------------------------------------------------- shards, checkpoints


def test_manifest_path_traversal(tmp_path: Path, tiny: PipelineConfig) -> None:
    d = make_shard_set(tmp_path / "s", tiny)
    raw = json.loads((d / "manifest.json").read_text())
    raw["splits"]["test"]["shards"][0]["labels"] = "/etc/passwd"
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ShardError, match=r"manifest.json: invalid manifest field splits.test"):
        open_shard_set(d)


def test_tampered_shard(tmp_path: Path, tiny: PipelineConfig) -> None:
    d = make_shard_set(tmp_path / "s", tiny)
    victim = sorted(d.glob("*.labels.npy"))[0]
    arr = np.load(victim)
    arr[0] += 1
    np.save(victim, arr)
    with pytest.raises(ShardError, match=f"{victim.name}: sha256 mismatch"):
        open_shard_set(d)


def _saved_model(tmp_path: Path, tiny: PipelineConfig) -> tuple[Path, dict]:
    torch.manual_seed(0)
    steps = family_steps(build_model(tiny.model, (1, 8, 8)), tiny.train)
    meta = {"model_spec": steps.model.model_spec(), "train_key": "k"}
    checkpoint.save_checkpoint(
        tmp_path / "ck", step=5, modules=steps.modules, optimizers=steps.optimizers, meta=meta
    )
    return tmp_path / "ck", meta


def test_checkpoint_of_another_config(tmp_path: Path, tiny: PipelineConfig) -> None:
    directory, meta = _saved_model(tmp_path, tiny)
    other = tiny.model.model_copy(update={"latent_dim": 7})
    steps = family_steps(build_model(other, (1, 8, 8)), tiny.train)
    with pytest.raises(CheckpointError, match="different model_spec"):
        checkpoint.restore_latest(
            directory,
            modules=steps.modules,
            optimizers=steps.optimizers,
            expect={"model_spec": steps.model.model_spec(), "train_key": "k"},
        )


def test_checkpoint_with_pickle_payload(tmp_path: Path, tiny: PipelineConfig) -> None:
    directory, _ = _saved_model(tmp_path, tiny)
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    blob = pickle.dumps({"model.vae.w": Payload()})
    path = checkpoint.checkpoint_path(directory, 5)
    path.write_bytes(blob)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    import hashlib

    sidecar["sha256"] = hashlib.sha256(blob).hexdigest()  # an attacker can fix the hash too
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        checkpoint.read_verified(path)
    assert not marker.exists()


def test_truncated_exported_model(tmp_path: Path, tiny: PipelineConfig) -> None:
    torch.manual_seed(0)
    model = build_model(tiny.model, (1, 8, 8))
    export_model(tmp_path / "m", module=model, spec=model.model_spec(), meta={})
    blob = (tmp_path / "m" / "model.safetensors").read_bytes()
    (tmp_path / "m" / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: sha256 mismatch"):
        load_model(tmp_path / "m")


def test_ragged_gzipped_csv(home: Path, tmp_path: Path, dask_address: str) -> None:
    """A .csv.gz whose rows are ragged is reported like a plain CSV (line named)."""
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(",".join(f"px{i}" for i in range(64)) + "\n" + ",".join(["0"] * 65) + "\n")
    _expect_data_error(_cfg(dask_address, source="table", path=str(path)), "t.csv.gz", "line 2")
