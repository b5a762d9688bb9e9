"""The table source for sequences: a long-format CSV or Parquet, one row per series and step.

Columns (names configurable): data.id_column (the series), data.time_column (a numeric time
index), the value columns (data.value_columns, default every other column) and an optional
label column (data.label_column, default "label" when present; constant within a series).
Rows may come in any order: each series is sorted by its time index. A series is bad, named by
its id, when two of its rows share a time, when its time index is unevenly spaced (a gap), when
a value or time is not a number, when its label changes, or for any reason `series_problem`
gives. Partitions are groups of data.shard_size series in order of first appearance; the file
is read whole once per process (cached), which suits tables that fit in memory.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from genpar_models.config import DataConfig
from genpar_models.data.sources.series import pack_series
from genpar_models.data.sources.table_files import read_csv, table_format
from genpar_models.data.sources.types import (
    Partition,
    PartitionSpec,
    SourceInfo,
    capped,
    resolve_path,
    sha256_files,
)
from genpar_models.errors import DataError


@functools.lru_cache(maxsize=1)
def _read(path: Path, stamp: tuple[int, int]) -> pd.DataFrame:
    if table_format(path) == "csv":
        try:
            return read_csv(path)
        except pd.errors.EmptyDataError as e:
            raise DataError(f"{path}: empty CSV, expected a header row of column names") from e
    try:
        return pq.read_table(path).to_pandas()
    except OSError as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from e


def read_long_table(cfg: DataConfig) -> tuple[Path, pd.DataFrame, list[str], str | None]:
    """(file, frame, value columns, label column or None); DataError naming missing columns."""
    path = resolve_path(cfg)
    st = path.stat()
    frame = _read(path, (st.st_size, st.st_mtime_ns))
    columns = list(frame.columns)
    for field in ("id_column", "time_column"):
        if getattr(cfg, field) not in columns:
            raise DataError(
                f"{path}: no column {getattr(cfg, field)!r} (data.{field}); columns: {columns}"
            )
    label = cfg.label_column if cfg.label_column in columns else None
    if cfg.label_column not in (None, "label") and label is None:
        raise DataError(f"{path}: no label column {cfg.label_column!r}; columns: {columns}")
    reserved = {cfg.id_column, cfg.time_column, label}
    values = cfg.value_columns or [c for c in columns if c not in reserved]
    missing = [c for c in values if c not in columns]
    if missing:
        raise DataError(f"{path}: value column(s) {missing} (data.value_columns) not in {columns}")
    if not values:
        raise DataError(f"{path}: no value columns beside {sorted(map(str, reserved - {None}))}")
    if cfg.series_channels is not None and len(values) != cfg.series_channels:
        raise DataError(
            f"{path}: {len(values)} value columns {values}, expected data.series_channels="
            f"{cfg.series_channels}"
        )
    if len(frame) == 0:
        raise DataError(f"{path}: the table has no data rows")
    return path, frame, values, label


def survey_series_table(cfg: DataConfig) -> tuple[SourceInfo, tuple[str, ...]]:
    path, frame, values, _ = read_long_table(cfg)
    ids = frame[cfg.id_column].astype(str)
    order = tuple(pd.unique(ids))[: capped(ids.nunique(), cfg)]
    longest = int(ids.value_counts().max())
    info = SourceInfo(
        kind="table",
        uri=str(path),
        fingerprint=sha256_files([path], prefix="table-sequences\n"),
        num_items=len(order),
        class_names=(),
        sequence_shape=(cfg.max_length or longest, len(values)),
    )
    return info, order


def _numbers(rows: pd.DataFrame, column: str, sid: str) -> tuple[np.ndarray, str | None]:
    raw = rows[column]
    coerced = pd.to_numeric(raw, errors="coerce")
    wrong = coerced.isna().to_numpy() & raw.notna().to_numpy()
    if wrong.any():
        return np.empty(
            0
        ), f"{sid}: column {column!r} holds non-numeric {raw.iloc[int(np.flatnonzero(wrong)[0])]!r}"
    return coerced.to_numpy(dtype=np.float64, na_value=np.nan), None


def _plain(values) -> list:
    """Values as Python scalars, so a message reads [0, 1], not [np.int64(0), np.int64(1)]."""
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def series_of(rows: pd.DataFrame, sid: str, cfg: DataConfig, values: list[str], label: str | None):
    """((L, C) values sorted by time, label) of one series, or (None, reason)."""
    time, problem = _numbers(rows, cfg.time_column, sid)
    if problem:
        return None, problem
    if np.isnan(time).any():
        return None, f"{sid}: missing time in column {cfg.time_column!r}"
    order = np.argsort(time, kind="stable")
    time = time[order]
    dup = np.flatnonzero(np.diff(time) == 0)
    if dup.size:
        return None, f"{sid}: duplicate rows at time {time[dup[0]]:g}"
    steps = np.diff(time)
    if steps.size and not np.allclose(steps, steps[0]):
        at = int(np.flatnonzero(~np.isclose(steps, steps[0]))[0])
        return None, (
            f"{sid}: gap in the time index: {time[at]:g} -> {time[at + 1]:g}, where the series "
            f"steps by {steps[0]:g}"
        )
    columns = []
    for column in values:
        numbers, problem = _numbers(rows, column, sid)
        if problem:
            return None, problem
        columns.append(numbers[order])
    lab = -1
    if label is not None:
        labs = pd.unique(rows[label])
        if len(labs) != 1 or not float(labs[0]).is_integer() or labs[0] < 0:
            return (
                None,
                f"{sid}: label column {label!r} holds {_plain(labs[:4])}, not one class index",
            )
        lab = int(labs[0])
    return (np.stack(columns, axis=1).reshape(len(rows), len(values)), lab), None


def load_series_table(spec: PartitionSpec, cfg: DataConfig) -> Partition:
    path, frame, values, label = read_long_table(cfg)
    ids = frame[cfg.id_column].astype(str)
    wanted = frame[ids.isin(set(spec.items))]
    groups = dict(tuple(wanted.groupby(ids[wanted.index], sort=False)))
    kept_ids, series, labels, bad = [], [], [], []
    for sid in spec.items:
        if sid not in groups:
            raise DataError(f"{path}: series {sid!r} is gone since planning")
        name = f"{path.name}:{cfg.id_column}={sid}"
        got, problem = series_of(groups[sid], name, cfg, values, label)
        if problem:
            bad.append((name, problem))
            continue
        kept_ids.append(name)
        series.append(got[0])
        labels.append(got[1])
    return pack_series(spec, cfg, ids=kept_ids, series=series, labels=labels, bad=bad)
