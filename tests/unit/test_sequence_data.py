"""Sequence sources and preprocessing: arrays, long tables, the sines and BasicMotions built-ins,
the bad inputs (each named by its series), the train-split normalisation and verified shards."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genpar_models.config import DataConfig
from genpar_models.data.preprocess import build_shard_set, process_partition
from genpar_models.data.shards import open_shard_set
from genpar_models.data.sources import load_partition, plan_partitions
from genpar_models.data.sources.series import sine_series
from genpar_models.data.split import split_of
from genpar_models.errors import DataError, ShardError

LOG = logging.getLogger("test")


def _seq(**kw) -> DataConfig:
    return DataConfig(modality="sequences", **kw)


def _build(cfg: DataConfig, root: Path) -> Path:
    def loop(specs: list, staging: str) -> list[dict]:
        return [process_partition(s, cfg, staging) for s in specs]

    return build_shard_set(cfg, root, loop, LOG)


def _all(cfg: DataConfig):
    _, specs = plan_partitions(cfg)
    parts = [load_partition(s, cfg) for s in specs]
    return parts


def test_modality_is_never_guessed_and_sources_match_it() -> None:
    assert DataConfig().modality == "images"
    with pytest.raises(ValueError, match="does not hold sequences"):
        _seq(source="digits")
    with pytest.raises(ValueError, match="does not hold images"):
        DataConfig(source="sines")


def test_sines_follow_the_timegan_protocol_and_are_seeded() -> None:
    cfg = _seq(source="sines", num_series=50, shard_size=16)
    parts = _all(cfg)
    values = np.concatenate([p.images for p in parts])
    assert values.shape == (50, 24, 5) and values.dtype == np.float32
    assert (values >= 0).all() and (values <= 1).all()
    assert all((p.lengths == 24).all() for p in parts)
    # reference: x_t = (sin(f t + p) + 1) / 2 with f, p uniform in [0, 0.1) per channel
    rng = np.random.default_rng([0, 7])
    f, p = rng.uniform(0, 0.1, size=(2, 5))
    ref = (np.sin(f * np.arange(24)[:, None] + p) + 1) / 2
    np.testing.assert_allclose(values[7], ref, atol=1e-6)
    assert np.array_equal(sine_series(0, 7, 24, 5), ref)
    other = np.concatenate([p.images for p in _all(cfg.model_copy(update={"sines_seed": 1}))])
    assert not np.allclose(values, other)


def test_basic_motions_is_read_from_the_installed_sktime() -> None:
    cfg = _seq(source="basic_motions", shard_size=64)
    info, specs = plan_partitions(cfg)
    assert info.num_items == 80 and info.sequence_shape == (100, 6)
    assert info.class_names == ("Standing", "Running", "Walking", "Badminton")
    parts = [load_partition(s, cfg) for s in specs]
    labels = np.concatenate([p.labels for p in parts])
    assert sorted(np.bincount(labels).tolist()) == [20, 20, 20, 20]
    assert all(np.isfinite(p.images).all() for p in parts)


def test_japanese_vowels_is_variable_length_and_read_from_the_installed_sktime() -> None:
    cfg = _seq(source="japanese_vowels", shard_size=256)
    info, specs = plan_partitions(cfg)
    assert info.num_items == 640 and info.sequence_shape == (29, 12)
    assert info.class_names == tuple(str(k) for k in range(1, 10))
    parts = [load_partition(s, cfg) for s in specs]
    lengths = np.concatenate([p.lengths for p in parts])
    assert lengths.min() == 7 and lengths.max() == 29 and len(set(lengths.tolist())) > 10
    values = np.concatenate([p.images for p in parts])
    inside = np.arange(29)[None, :] < lengths[:, None]
    assert np.isfinite(values[inside]).all() and np.isnan(values[~inside]).all()
    # the first training series' first value, as sktime's file has it
    assert values[0, 0, 0] == np.float32(1.860936)
    assert len(np.unique(np.concatenate([p.labels for p in parts]))) == 9


def test_array_lengths_from_nan_end_padding_and_from_a_lengths_array(tmp_path: Path) -> None:
    x = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)  # (N, T): one channel
    x[1, 4:] = np.nan
    x[2, 1:] = np.nan
    np.save(tmp_path / "s.npy", x)
    parts = _all(_seq(source="array", path=str(tmp_path / "s.npy")))
    assert parts[0].images.shape == (4, 6, 1)
    assert parts[0].lengths.tolist() == [6, 4, 1, 6]
    assert np.isnan(parts[0].images[1, 4:]).all() and parts[0].bad == []

    y = np.random.default_rng(0).normal(size=(3, 5, 2))
    np.savez(tmp_path / "s.npz", series=y, lengths=np.array([5, 2, 3]), labels=np.array([0, 1, 1]))
    part = _all(_seq(source="array", path=str(tmp_path / "s.npz")))[0]
    assert part.lengths.tolist() == [5, 2, 3] and part.labels.tolist() == [0, 1, 1]
    np.testing.assert_allclose(part.images[1, :2], y[1, :2], rtol=1e-6)
    assert np.isnan(part.images[1, 2:]).all()  # what lies beyond a length is not kept


def _long_table() -> pd.DataFrame:
    rows = []
    for sid, n in (("a", 5), ("b", 3), ("c", 4)):
        for t in range(n):
            rows.append({"sid": sid, "t": t, "v1": t + 0.5, "v2": -t, "label": ord(sid) - 97})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # shuffled: sorting is ours


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_long_table_with_configurable_columns(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"long.{fmt}"
    frame = _long_table()
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    cfg = _seq(source="table", path=str(path), id_column="sid", time_column="t")
    info, specs = plan_partitions(cfg)
    assert info.sequence_shape == (5, 2) and info.num_items == 3
    part = load_partition(specs[0], cfg)
    by_id = dict(zip(part.ids, range(3), strict=True))
    b = by_id[f"{path.name}:sid=b"]
    assert part.lengths[b] == 3 and part.labels[b] == 1
    np.testing.assert_allclose(part.images[b, :3], [[0.5, 0], [1.5, -1], [2.5, -2]])
    only = cfg.model_copy(update={"value_columns": ["v2"]})
    assert plan_partitions(only)[0].sequence_shape == (5, 1)


# ---------------------------------------------------------------- bad inputs


def _bad_array(tmp_path: Path) -> Path:
    x = np.zeros((5, 6, 2), dtype=np.float64)
    x[1, 2, 1] = np.nan  # NaN inside (not at the end)
    x[2, 3, 0] = np.inf
    x[3, :, :] = np.nan  # zero-length: all NaN
    np.save(tmp_path / "bad.npy", x)
    return tmp_path / "bad.npy"


def test_bad_series_in_an_array_are_named(tmp_path: Path) -> None:
    part = _all(_seq(source="array", path=str(_bad_array(tmp_path))))[0]
    reasons = dict(part.bad)
    assert reasons["bad.npy[1]"] == (
        "bad.npy[1]: NaN at step 2, channel 1, inside the series (6 steps)"
    )
    assert "infinity at step 3, channel 0" in reasons["bad.npy[2]"]
    assert reasons["bad.npy[3]"] == "bad.npy[3]: zero-length series"
    assert part.ids == ["bad.npy[0]", "bad.npy[4]"]


def test_too_long_and_wrong_channel_count(tmp_path: Path) -> None:
    x = np.ones((3, 8, 2), dtype=np.float32)
    x[0, 5:] = np.nan
    np.save(tmp_path / "x.npy", x)
    part = _all(_seq(source="array", path=str(tmp_path / "x.npy"), max_length=5))[0]
    assert part.images.shape == (1, 5, 2)
    assert dict(part.bad)["x.npy[1]"] == "x.npy[1]: 8 steps, longer than data.max_length=5"
    with pytest.raises(DataError, match=r"x.npy: every series has 2 channels, expected 3"):
        plan_partitions(_seq(source="array", path=str(tmp_path / "x.npy"), series_channels=3))
    lengths = tmp_path / "len.npy"
    np.save(lengths, np.array([3, 9, 1]))
    with pytest.raises(DataError, match=r"series 1 has length 9, outside \[0, 8\]"):
        plan_partitions(
            _seq(source="array", path=str(tmp_path / "x.npy"), lengths_path=str(lengths))
        )


def test_bad_series_in_a_long_table_are_named(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "series_id": ["ok"] * 3 + ["dup"] * 3 + ["gap"] * 3 + ["text"] * 2 + ["hole"] * 3,
            "time": [0, 1, 2, 0, 1, 1, 0, 1, 3, 0, 1, 0, 1, 2],
            "v": ["1", "2", "3", "1", "2", "3", "1", "2", "3", "1", "abc", "1", "", "3"],
        }
    )
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    cfg = _seq(source="table", path=str(path))
    part = _all(cfg)[0]
    reasons = dict(part.bad)
    assert reasons["t.csv:series_id=dup"] == "t.csv:series_id=dup: duplicate rows at time 1"
    assert "gap in the time index: 1 -> 3" in reasons["t.csv:series_id=gap"]
    assert "column 'v' holds non-numeric 'abc'" in reasons["t.csv:series_id=text"]
    assert "NaN at step 1" in reasons["t.csv:series_id=hole"]
    assert part.ids == ["t.csv:series_id=ok"]
    with pytest.raises(DataError, match="no column 'sid' \\(data.id_column\\)"):
        plan_partitions(cfg.model_copy(update={"id_column": "sid"}))


def test_bad_times_labels_and_channel_counts_in_a_long_table(tmp_path: Path) -> None:
    """The table's other bad inputs: a non-numeric or missing time, a label that changes
    within a series (each named, then skipped and counted), a wrong channel count (refused)."""
    frame = pd.DataFrame(
        {
            "series_id": ["ok"] * 2 + ["when"] * 2 + ["notime"] * 2 + ["relabel"] * 2,
            "time": ["0", "1", "0", "x", "0", "", "0", "1"],
            "v": [1.0, 2.0] * 4,
            "label": [0, 0, 0, 0, 0, 0, 0, 1],
        }
    )
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    cfg = _seq(source="table", path=str(path), label_column="label")
    reasons = dict(_all(cfg)[0].bad)
    assert (
        reasons["t.csv:series_id=when"]
        == "t.csv:series_id=when: column 'time' holds non-numeric 'x'"
    )
    assert "missing time in column 'time'" in reasons["t.csv:series_id=notime"]
    assert (
        "label column 'label' holds [0, 1], not one class index"
        in reasons["t.csv:series_id=relabel"]
    )
    with pytest.raises(DataError, match=r"1 value columns \['v'\], expected data.series_chan"):
        plan_partitions(cfg.model_copy(update={"series_channels": 2}))
    root = tmp_path / "shards"
    root.mkdir()
    skip = {"on_bad": "skip", "val_fraction": 0.0, "test_fraction": 0.0}
    manifest = open_shard_set(_build(cfg.model_copy(update=skip), root)).manifest
    assert manifest.total == 1 and manifest.skipped["count"] == 3


def test_bad_series_fail_leaving_nothing_or_are_skipped_and_counted(tmp_path: Path) -> None:
    path = _bad_array(tmp_path)
    root = tmp_path / "shards"
    root.mkdir()
    with pytest.raises(DataError) as exc:
        _build(_seq(source="array", path=str(path)), root)
    assert "3 bad sample(s)" in str(exc.value) and "bad.npy[2]: infinity" in str(exc.value)
    assert list(root.iterdir()) == []  # no staging directory, no partial set
    built = _build(
        _seq(source="array", path=str(path), on_bad="skip", val_fraction=0.0, test_fraction=0.0),
        root,
    )
    manifest = open_shard_set(built).manifest
    assert manifest.total == 2 and manifest.skipped["count"] == 3
    assert {s["id"] for s in manifest.skipped["samples"]} == {
        "bad.npy[1]",
        "bad.npy[2]",
        "bad.npy[3]",
    }


# ---------------------------------------------------------------- shards


def test_shards_split_by_series_id_hold_lengths_and_train_normalisation(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(loc=[3.0, -2.0], scale=[2.0, 0.5], size=(64, 10, 2)).astype(np.float32)
    lengths = rng.integers(1, 11, size=64)
    for i, n in enumerate(lengths):
        x[i, n:] = np.nan
    np.save(tmp_path / "x.npy", x)
    cfg = _seq(source="array", path=str(tmp_path / "x.npy"), shard_size=16)
    built = _build(cfg, tmp_path / "shards")
    shardset = open_shard_set(built)
    m = shardset.manifest
    assert m.modality == "sequences" and m.image_shape == (10, 2) and m.total == 64
    want = {
        s: [
            i
            for i in range(64)
            if split_of(f"x.npy[{i}]", val_fraction=0.1, test_fraction=0.1) == s
        ]
        for s in m.splits
    }
    train = want["train"]
    assert m.splits["train"].count == len(train)
    steps = np.concatenate([x[i, : lengths[i]] for i in train]).astype(np.float64)
    np.testing.assert_allclose(m.normalisation["mean"], steps.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(m.normalisation["std"], steps.std(axis=0), atol=1e-5)
    values, _ = shardset.load("train")
    got_lengths = shardset.lengths("train")
    assert sorted(got_lengths.tolist()) == sorted(lengths[train].tolist())
    inside = np.arange(10)[None, :] < got_lengths[:, None]
    assert np.isfinite(values[inside]).all() and np.isnan(values[~inside]).all()
    np.testing.assert_allclose(values[inside].mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(values[inside].std(axis=0), 1.0, atol=1e-4)
    shard = built / m.splits["train"].shards[0].lengths
    shard.chmod(0o644)
    np.save(shard, np.load(shard) + 1)
    with pytest.raises(ShardError, match="lengths.npy: sha256 mismatch"):
        open_shard_set(built)
