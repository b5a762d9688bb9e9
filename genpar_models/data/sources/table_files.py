"""Reading table files for the table source: the format by name, strict CSV, Parquet row groups.

CSV is read with pandas and never guesses an index column (a ragged row is an error naming the
line); Parquet through pyarrow, reading only the row groups a partition overlaps.
"""

from __future__ import annotations

import csv
import gzip
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genpar_models.errors import DataError

CSV_CHUNK_ROWS = 4096  # ~25 MB of float64 at 784 pixel columns


def table_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise DataError(f"data.path {path}: the table source expects .parquet, .pq, .csv or .csv.gz")


def read_csv(path: Path, **kwargs: object) -> pd.DataFrame:
    """pandas.read_csv that never guesses an index column: a row with more fields than the
    header is an error (pandas would otherwise take the first column as the index)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            return pd.read_csv(path, index_col=False, **kwargs)
        except (pd.errors.ParserError, pd.errors.ParserWarning) as e:
            raise DataError(
                f"{path}: ragged or malformed CSV: {_first_ragged_line(path) or e}"
            ) from e


def csv_chunks(path: Path) -> Iterator[pd.DataFrame]:
    """Chunks of CSV_CHUNK_ROWS rows, with the same strictness as `read_csv`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            yield from pd.read_csv(path, index_col=False, chunksize=CSV_CHUNK_ROWS)
        except (pd.errors.ParserError, pd.errors.ParserWarning) as e:
            raise DataError(
                f"{path}: ragged or malformed CSV: {_first_ragged_line(path) or e}"
            ) from e


def _first_ragged_line(path: Path) -> str | None:
    """'line N has F fields, the header has H' for the first row of the wrong width."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        for line, row in enumerate(reader, start=2):
            if row and len(row) != len(header):
                return f"line {line} has {len(row)} fields, the header has {len(header)}"
    return None


def open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from e


def parquet_columns(pf: pq.ParquetFile) -> list[str]:
    """Column names, less the index columns pandas' ``to_parquet`` adds (``__index_level_0__``)."""
    meta = pf.schema_arrow.pandas_metadata or {}
    index = {name for name in meta.get("index_columns", []) if isinstance(name, str)}
    return [name for name in pf.schema_arrow.names if name not in index]


def read_rows(path: Path, layout_columns: list[str], start: int, stop: int) -> pd.DataFrame:
    """Rows [start, stop) of the table (0-based data rows)."""
    if table_format(path) == "csv":
        try:
            return read_csv(path, skiprows=range(1, start + 1), nrows=stop - start)
        except pd.errors.ParserError as e:
            raise DataError(f"{path}: ragged or malformed CSV: {e}") from e
    pf = open_parquet(path)
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    groups = [g for g in range(len(sizes)) if bounds[g] < stop and bounds[g + 1] > start]
    table = pf.read_row_groups(groups, columns=layout_columns)
    offset = start - int(bounds[groups[0]]) if groups else 0
    return table.slice(offset, stop - start).to_pandas()
