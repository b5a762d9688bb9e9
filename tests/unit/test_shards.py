"""Shard writing, the hash split, the manifest, and verified reading that names the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from genpar_models.config import PipelineConfig
from genpar_models.data import shards
from genpar_models.data.manifest import SPLITS, shard_set_key
from genpar_models.data.split import split_of
from genpar_models.errors import ShardError
from genpar_models.util import atomic
from tests.helpers import make_shard_set


def test_split_is_deterministic_and_proportional() -> None:
    ids = [f"img/{i}.png" for i in range(20000)]
    a = [split_of(i, val_fraction=0.1, test_fraction=0.2) for i in ids]
    b = [split_of(i, val_fraction=0.1, test_fraction=0.2) for i in ids]
    assert a == b
    share = {s: a.count(s) / len(a) for s in SPLITS}
    assert share["test"] == pytest.approx(0.2, abs=0.01)
    assert share["val"] == pytest.approx(0.1, abs=0.01)
    # adding samples never moves existing ones between splits
    more = [split_of(i, val_fraction=0.1, test_fraction=0.2) for i in ids + ["new.png"]]
    assert more[:-1] == a


def test_round_trip_and_counts(tmp_path: Path, tiny: PipelineConfig) -> None:
    d = make_shard_set(tmp_path / "set", tiny, n=300)
    ss = shards.open_shard_set(d)
    total = sum(ss.count(s) for s in SPLITS)
    assert total == 300
    images, labels = ss.load("train")
    assert images.dtype == np.uint8 and images.shape[1:] == (1, 8, 8)
    assert labels.dtype == np.int64 and len(labels) == len(images) == ss.count("train")
    assert ss.manifest.stats["mean"][0] == pytest.approx(images.mean() / 255, abs=1e-4)
    assert not list(d.glob(f"*{atomic.TMP_MARK}*"))


def test_tampered_shard_is_refused_naming_the_file(tmp_path: Path, tiny: PipelineConfig) -> None:
    d = make_shard_set(tmp_path / "set", tiny)
    victim = sorted(d.glob("train-*.images.npy"))[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardError) as exc:
        shards.open_shard_set(d)
    assert victim.name in str(exc.value) and "sha256 mismatch" in str(exc.value)


def test_missing_shard_and_bad_manifest(tmp_path: Path, tiny: PipelineConfig) -> None:
    d = make_shard_set(tmp_path / "set", tiny)
    sorted(d.glob("val-*.labels.npy"))[0].unlink()
    with pytest.raises(ShardError, match="missing"):
        shards.open_shard_set(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="not valid JSON"):
        shards.open_shard_set(d)
    with pytest.raises(ShardError, match="no manifest"):
        shards.open_shard_set(tmp_path)


def test_path_traversal_in_manifest_is_refused(tmp_path: Path, tiny: PipelineConfig) -> None:
    d = make_shard_set(tmp_path / "set", tiny)
    raw = json.loads((d / "manifest.json").read_text())
    raw["splits"]["train"]["shards"][0]["images"] = "../../etc/passwd"
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ShardError, match="splits.train.shards.0.images"):
        shards.open_shard_set(d)


def test_count_mismatch_is_refused(tmp_path: Path, tiny: PipelineConfig) -> None:
    d = make_shard_set(tmp_path / "set", tiny)
    raw = json.loads((d / "manifest.json").read_text())
    raw["splits"]["train"]["count"] += 1
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ShardError, match="splits.train.count"):
        shards.open_shard_set(d)


def test_shard_key_depends_on_fingerprint_and_prep(tiny: PipelineConfig) -> None:
    k = shard_set_key("f1", tiny.data)
    assert k == shard_set_key("f1", tiny.data)
    assert k != shard_set_key("f2", tiny.data)
    assert k != shard_set_key("f1", tiny.data.model_copy(update={"image_size": 16}))
    assert k == shard_set_key("f1", tiny.data.model_copy(update={"path": "/moved"}))


def test_a_forced_rebuild_never_takes_the_set_from_a_reader(
    tmp_path: Path, tiny: PipelineConfig
) -> None:
    """retrain.force_preprocess rebuilds a shard set that another run may be reading: the new
    set is built beside it and swapped in whole, so the reader always opens a complete set."""
    import logging
    import threading

    from genpar_models.data.preprocess import build_shard_set, process_partition

    def loop(specs: list, staging: str) -> list[dict]:
        return [process_partition(s, tiny.data, staging) for s in specs]

    log = logging.getLogger("test")
    final = build_shard_set(tiny.data, tmp_path, loop, log)
    errors: list[Exception] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                shards.open_shard_set(final).load("train")
            except (ShardError, OSError) as e:
                errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(4):
            assert build_shard_set(tiny.data, tmp_path, loop, log, rebuild=True) == final
    finally:
        done.set()
        reader.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]
