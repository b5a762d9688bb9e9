"""The table source: Parquet or CSV, one image per row, one column per pixel value.

``data.label_column`` (default "label") holds integer class labels; every other column is a
pixel and must be numeric. P pixel columns make a side x side grayscale image when P = side**2,
or an RGB image when P = 3 * side**2, flattened channels-last (the order of
``images.reshape(n, -1)`` for an (n, H, W, 3) array). A table without a "label" column is
unlabelled unless ``data.label_column`` names another column or ``data.num_classes`` is set;
then the missing column is an error. Parquet partitions read only the row groups they overlap;
CSV partitions read their row range with ``skiprows``/``nrows`` (the header is kept).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from genpar_models.config import DataConfig
from genpar_models.data.images import arrays_to_uint8
from genpar_models.data.sources.table_files import (
    CSV_CHUNK_ROWS,
    csv_chunks,
    open_parquet,
    parquet_columns,
    read_csv,
    read_rows,
    table_format,
)
from genpar_models.data.sources.types import (
    Partition,
    PartitionSpec,
    SourceInfo,
    build_partition,
    capped,
    check_labels,
    numbered_classes,
    resolve_path,
    sha256_files,
)
from genpar_models.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableLayout:
    label: str | None  # label column, None when unlabelled
    pixels: tuple[str, ...]  # pixel columns, in file order
    side: int
    channels: int


def pixel_geometry(path: Path, count: int) -> tuple[int, int]:
    """(side, channels) for P pixel columns, or DataError with the nearest valid counts."""
    for channels in (1, 3):
        side = math.isqrt(count // channels)
        if side > 0 and channels * side * side == count:
            return side, channels
    near = set()
    for channels in (1, 3):
        side = math.isqrt(count // channels)
        near |= {(channels * s * s, s, channels) for s in (side, side + 1) if s > 0}
    shown = ", ".join(f"{n} ({s}x{s}{' RGB' if c == 3 else ''})" for n, s, c in sorted(near))
    raise DataError(
        f"{path}: {count} pixel columns; expected side**2 (grayscale) or 3*side**2 (RGB); "
        f"nearest valid counts: {shown}"
    )


def table_layout(
    path: Path,
    columns: list[str],
    cfg: DataConfig,
    check_pixels: Callable[[tuple[str, ...], str | None], None] | None = None,
) -> TableLayout:
    """Label and pixel columns; `check_pixels` (column types) runs before the count check,
    because a stray text column is the likelier mistake than a wrong image size."""
    label = cfg.label_column
    if label is not None and label not in columns:
        if label != "label" or cfg.num_classes is not None:
            raise DataError(
                f"{path}: no label column {label!r} (data.label_column); columns: "
                f"{columns[:8]}{' ...' if len(columns) > 8 else ''}"
            )
        label = None
    pixels = tuple(c for c in columns if c != label)
    if check_pixels is not None:
        check_pixels(pixels, label)
    side, channels = pixel_geometry(path, len(pixels))
    return TableLayout(label, pixels, side, channels)


def table_labels(series: pd.Series, path: Path, cfg: DataConfig) -> np.ndarray:
    """Whole-number class labels (integral floats accepted: CSV has no integer type with gaps)."""
    where = f"{path} column {series.name!r}"
    if not pd.api.types.is_numeric_dtype(series.dtype):
        raise DataError(f"{where}: labels must be integer class indices, got dtype {series.dtype}")
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(values).any():
        raise DataError(f"{where}: missing label at row {int(np.flatnonzero(np.isnan(values))[0])}")
    wrong = values != np.round(values)
    if wrong.any():
        row = int(np.flatnonzero(wrong)[0])
        raise DataError(f"{where}: label {values[row]} at row {row} is not a whole number")
    labels = values.astype(np.int64)
    check_labels(labels, cfg, where)
    return labels


def _non_numeric(
    path: Path, frame: pd.DataFrame, pixels: tuple[str, ...], label: str | None, first_row: int
) -> None:
    for name in pixels:
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column.dtype):
            continue
        coerced = pd.to_numeric(column, errors="coerce")
        offending = np.flatnonzero(coerced.isna().to_numpy() & column.notna().to_numpy())
        detail = (
            f" (row {first_row + int(offending[0])} holds {column.iloc[offending[0]]!r})"
            if offending.size
            else ""
        )
        raise DataError(
            f"{path}: column {name!r} is not numeric{detail}; every column except the label "
            f"column ({label!r}) must be a pixel value"
        )


def survey_csv(path: Path, cfg: DataConfig) -> tuple[int, TableLayout, float, np.ndarray | None]:
    """One chunked pass: (rows, layout, default pixel_max, labels or None)."""
    try:
        head = read_csv(path, nrows=CSV_CHUNK_ROWS)
        layout = table_layout(
            path, list(head.columns), cfg, lambda px, label: _non_numeric(path, head, px, label, 0)
        )
        rows, fractional, labels = 0, False, []
        for chunk in csv_chunks(path):
            _non_numeric(path, chunk, layout.pixels, layout.label, rows)
            values = chunk[list(layout.pixels)].to_numpy(dtype=np.float64, na_value=np.nan)
            finite = values[np.isfinite(values)]
            fractional = fractional or bool((finite != np.floor(finite)).any())
            if layout.label is not None:
                labels.append(chunk[layout.label])
            rows += len(chunk)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: empty CSV, expected a header row of column names") from e
    except pd.errors.ParserError as e:
        raise DataError(
            f"{path}: ragged or malformed CSV (every row needs one value per column): {e}"
        ) from e
    label_values = table_labels(pd.concat(labels), path, cfg) if labels else None
    # CSV has no column types: data with any fractional value is taken as [0, 1].
    return rows, layout, 1.0 if fractional else 255.0, label_values


def survey_parquet(
    path: Path, cfg: DataConfig
) -> tuple[int, TableLayout, float, np.ndarray | None]:
    pf = open_parquet(path)
    schema = pf.schema_arrow

    def numeric_only(pixels: tuple[str, ...], label: str | None) -> None:
        for name in pixels:
            kind = schema.field(name).type
            if not (
                pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
            ):
                raise DataError(
                    f"{path}: column {name!r} is not numeric (Arrow type {kind}); every column "
                    f"except the label column ({label!r}) must be a pixel value"
                )

    layout = table_layout(path, parquet_columns(pf), cfg, numeric_only)
    types = {name: schema.field(name).type for name in layout.pixels}
    labels = None
    if layout.label is not None:
        series = pf.read(columns=[layout.label]).column(0).to_pandas().rename(layout.label)
        labels = table_labels(series, path, cfg)
    integral = all(pa.types.is_integer(kind) for kind in types.values())
    return pf.metadata.num_rows, layout, 255.0 if integral else 1.0, labels


def survey_table(cfg: DataConfig) -> tuple[SourceInfo, tuple[str, ...]]:
    path = resolve_path(cfg)
    survey = survey_parquet if table_format(path) == "parquet" else survey_csv
    rows, layout, default_max, labels = survey(path, cfg)
    if layout.label is None and cfg.label_column is not None:
        log.info("%s has no %r column: treating the table as unlabelled", path, cfg.label_column)
    if rows == 0:
        raise DataError(f"{path}: the table has no data rows")
    info = SourceInfo(
        kind="table",
        uri=str(path),
        fingerprint=sha256_files([path], prefix="table\n"),
        num_items=capped(rows, cfg),
        class_names=numbered_classes(labels, cfg) if labels is not None else (),
        pixel_max=cfg.pixel_max or default_max,
    )
    return info, ()


def load_table(spec: PartitionSpec, cfg: DataConfig) -> Partition:
    """Rows [start, stop): missing or out-of-range pixels make a sample bad, never raise."""
    path = Path(spec.uri)
    columns = (
        list(read_csv(path, nrows=0).columns)
        if table_format(path) == "csv"
        else parquet_columns(open_parquet(path))
    )
    layout = table_layout(path, columns, cfg)
    frame = read_rows(path, columns, spec.start, spec.stop)
    if len(frame) != spec.stop - spec.start:
        raise DataError(f"{path}: rows {spec.start}..{spec.stop - 1} are gone since planning")
    _non_numeric(path, frame, layout.pixels, layout.label, spec.start)
    ids = [f"{path.name}:row{row}" for row in range(spec.start, spec.stop)]
    pixels, kept, bad = pixel_rows(frame, layout, ids, spec.pixel_max or 255.0)
    # (n, P) -> (n, side, side) or, channels last, (n, side, side, 3)
    shape = (len(kept), layout.side, layout.side) + ((3,) if layout.channels == 3 else ())
    labels = (
        frame[layout.label].to_numpy(dtype=np.float64)[kept].astype(np.int64)
        if layout.label is not None
        else np.full(len(kept), -1, dtype=np.int64)
    )
    ids_kept = [ids[r] for r in kept]
    return build_partition(
        spec, cfg, ids=ids_kept, pixels=pixels.reshape(shape), labels=labels, bad=bad
    )


def pixel_rows(
    frame: pd.DataFrame, layout: TableLayout, ids: list[str], pixel_max: float
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """(uint8 pixels of the usable rows, their row positions, [(id, reason)] in row order)."""
    values = frame[list(layout.pixels)].to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(values)
    bad = {
        int(row): (
            ids[row],
            f"{ids[row]}: missing value in pixel column "
            f"{layout.pixels[int(np.argmax(missing[row]))]!r}",
        )
        for row in np.flatnonzero(missing.any(axis=1))
    }
    rest = np.flatnonzero(~missing.any(axis=1))
    pixels, ok, out_of_range = arrays_to_uint8(
        values[rest], pixel_max=pixel_max, ids=[ids[r] for r in rest]
    )
    position = {ids[r]: int(r) for r in rest}
    bad.update({position[sample]: (sample, reason) for sample, reason in out_of_range})
    return pixels, rest[ok], [bad[row] for row in sorted(bad)]
