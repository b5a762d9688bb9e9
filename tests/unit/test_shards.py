"""Shard writing, the hash split, the manifest, and verified reading that names the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from genpar_models import atomic, shards
from genpar_models.config import PipelineConfig
from genpar_models.errors import ShardError
from tests.helpers import make_shard_set


def test_split_is_deterministic_and_proportional() -> None:
    ids = [f"img/{i}.png" for i in range(20000)]
    a = [shards.split_of(i, val_fraction=0.1, test_fraction=0.2) for i in ids]
    b = [shards.split_of(i, val_fraction=0.1, test_fraction=0.2) for i in ids]
    assert a == b
    share = {s: a.count(s) / len(a) for s in shards.SPLITS}
    assert share["test"] == pytest.approx(0.2, abs=0.01)
    assert share["val"] == pytest.approx(0.1, abs=0.01)
    # adding samples never moves existing ones between splits
    more = [shards.split_of(i, val_fraction=0.1, test_fraction=0.2) for i in ids + ["new.png"]]
    assert more[:-1] == a


def test_round_trip_and_counts(tmp_path: Path, tiny: PipelineConfig) -> None:
    d = make_shard_set(tmp_path / "set", tiny, n=300)
    ss = shards.open_shard_set(d)
    total = sum(ss.count(s) for s in shards.SPLITS)
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


def test_commit_keeps_the_first_winner(tmp_path: Path, tiny: PipelineConfig) -> None:
    first = make_shard_set(tmp_path / "set", tiny, seed=1)
    before = (first / "manifest.json").read_text()
    second_staging = tmp_path / "other"
    make_shard_set(second_staging, tiny, seed=2)
    manifest = shards.read_manifest(second_staging)
    shards.commit_shard_set(second_staging, first, manifest)
    assert (first / "manifest.json").read_text() == before  # ours discarded, theirs kept
    assert not second_staging.exists()


def test_stale_staging_of_dead_process_is_removed(tmp_path: Path) -> None:
    dead = tmp_path / f"{shards.STAGING_PREFIX}abc-999999999-x"
    alive = tmp_path / f"{shards.STAGING_PREFIX}abc-{os.getpid()}-y"
    dead.mkdir()
    alive.mkdir()
    shards.remove_dead_staging(tmp_path)
    assert not dead.exists() and alive.exists()


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "x.npy"
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_shard_key_depends_on_fingerprint_and_prep(tiny: PipelineConfig) -> None:
    k = shards.shard_set_key("f1", tiny.data)
    assert k == shards.shard_set_key("f1", tiny.data)
    assert k != shards.shard_set_key("f2", tiny.data)
    assert k != shards.shard_set_key("f1", tiny.data.model_copy(update={"image_size": 16}))
    assert k == shards.shard_set_key("f1", tiny.data.model_copy(update={"path": "/moved"}))
