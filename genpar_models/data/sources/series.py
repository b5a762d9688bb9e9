"""Sequence sources (data.modality: sequences): arrays, the generated sines, sktime's bundled sets.

A series is (L, C) floats, L its length. Every source hands `pack_series` the series of one
partition; it validates each (zero length, longer than data.max_length, wrong channel count,
NaN or infinity inside the series) and lists the bad ones as (id, reason) naming the series,
so data.on_bad decides. The good ones become a float32 (n, T, C) block, NaN after each series'
length, with an int64 (n,) array of lengths: T is data.max_length or the source's longest.

Arrays: (N, T) or (N, T, C) in a .npy or .npz; lengths come from an (N,) integer array
(data.lengths_key in the .npz, data.lengths_path beside a .npy) or, without one, from NaN at the
end of a series (trailing steps where every channel is NaN). ``sines`` is TimeGAN's protocol
(Yoon et al. 2019, github.com/jsyoon0823/TimeGAN utils.sine_data_generation): per series and
channel a frequency and a phase uniform in [0, 0.1), x_t = sin(f t + p), scaled to [0, 1] as
(x + 1) / 2; series i is drawn from numpy's generator seeded by (data.sines_seed, i), so a
partition needs no other. ``basic_motions`` and ``japanese_vowels`` read sktime's bundled
BasicMotions (80 series x 100 steps x 6 channels, 4 classes) and JapaneseVowels (640 series x
7-29 steps x 12 channels, variable length, 9 speakers) .ts files, train then test, with the small
parser below, without importing sktime.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import zipfile
from pathlib import Path

import numpy as np

from genpar_models.config import DataConfig
from genpar_models.data.sources.array import read_npy
from genpar_models.data.sources.types import (
    Partition,
    PartitionSpec,
    SourceInfo,
    capped,
    check_labels,
    numbered_classes,
    resolve_path,
    sha256_files,
)
from genpar_models.errors import DataError

SERIES_KEYS = ("series", "values", "x", "X", "data")
LABEL_KEYS = ("labels", "y", "Y")
LENGTH_KEYS = ("lengths",)
SINES_CHANNELS = 5


def series_problem(values: np.ndarray, sid: str, cfg: DataConfig, channels: int) -> str | None:
    """Why series `sid` ((L, C) values within its length) cannot be used, or None."""
    if values.shape[0] == 0:
        return f"{sid}: zero-length series"
    if cfg.max_length is not None and values.shape[0] > cfg.max_length:
        return f"{sid}: {values.shape[0]} steps, longer than data.max_length={cfg.max_length}"
    if values.shape[1] != channels:
        return f"{sid}: {values.shape[1]} channels, expected {channels}"
    bad = ~np.isfinite(values)
    if bad.any():
        t, c = (int(i) for i in np.argwhere(bad)[0])
        what = "NaN" if np.isnan(values[t, c]) else "infinity"
        return f"{sid}: {what} at step {t}, channel {c}, inside the series ({len(values)} steps)"
    return None


def pack_series(
    spec: PartitionSpec,
    cfg: DataConfig,
    *,
    ids: list[str],
    series: list[np.ndarray],
    labels: list[int],
    bad: list[tuple[str, str]] | None = None,
) -> Partition:
    """Validate the partition's series and pad the good ones into (n, T, C) float32."""
    assert spec.sequence_shape is not None, "a sequence partition needs its sequence_shape"
    steps, channels = spec.sequence_shape
    bad = list(bad or [])
    kept: list[int] = []
    for i, (sid, values) in enumerate(zip(ids, series, strict=True)):
        problem = series_problem(values, sid, cfg, channels)
        if problem is None:
            kept.append(i)
        else:
            bad.append((sid, problem))
    out = np.full((len(kept), steps, channels), np.nan, dtype=np.float32)
    lengths = np.zeros(len(kept), dtype=np.int64)
    for row, i in enumerate(kept):
        lengths[row] = len(series[i])
        out[row, : len(series[i])] = series[i]
    return Partition(
        index=spec.index,
        ids=[ids[i] for i in kept],
        images=out,
        labels=np.asarray([labels[i] for i in kept], dtype=np.int64).reshape(-1),
        bad=bad,
        lengths=lengths,
    )


# ---------------------------------------------------------------- arrays


@functools.lru_cache(maxsize=1)
def _read_npz(path: Path, keys: tuple[str | None, str | None, str | None], stamp: tuple) -> tuple:
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz file (not a zip archive)")
    out = []
    with np.load(path, allow_pickle=False) as npz:
        files = list(npz.files)
        for chosen, defaults, field in zip(
            keys,
            (SERIES_KEYS, LABEL_KEYS, LENGTH_KEYS),
            ("images_key", "labels_key", "lengths_key"),
            strict=True,
        ):
            if chosen is not None and chosen not in files:
                raise DataError(f"{path}: no array named {chosen!r} (data.{field}); it has {files}")
            key = chosen or next((k for k in defaults if k in files), None)
            try:
                out.append(None if key is None else npz[key])
            except ValueError as e:
                raise DataError(f"{path} key {key!r}: object arrays are refused ({e})") from e
    if out[0] is None:
        raise DataError(f"{path}: no series array (looked for {list(SERIES_KEYS)}); it has {files}")
    return tuple(out)


def open_series_arrays(
    cfg: DataConfig,
) -> tuple[Path, np.ndarray, np.ndarray | None, np.ndarray | None, list[Path]]:
    """(file, values (N, T, C), labels or None, lengths or None, files that identify the data)."""
    path = resolve_path(cfg)
    if path.suffix.lower() == ".npz":
        if cfg.labels_path or cfg.lengths_path:
            raise DataError(f"{path}: labels_path/lengths_path are for .npy; use the .npz keys")
        st = path.stat()
        keys = (cfg.images_key, cfg.labels_key, cfg.lengths_key)
        values, labels, lengths = _read_npz(path, keys, (st.st_size, st.st_mtime_ns))
        files = [path]
    elif path.suffix.lower() == ".npy":
        if cfg.images_key or cfg.labels_key or cfg.lengths_key:
            raise DataError(f"{path}: data.*_key apply to .npz files only")
        values, files = read_npy(path), [path]
        labels = lengths = None
        for field in ("labels_path", "lengths_path"):
            other = getattr(cfg, field)
            if other:
                p = Path(other).expanduser().resolve()
                if not p.is_file():
                    raise DataError(f"data.{field} {other!r} does not exist")
                files.append(p)
                if field == "labels_path":
                    labels = read_npy(p)
                else:
                    lengths = read_npy(p)
    else:
        raise DataError(f"data.path {path}: the array source expects a .npy or .npz file")
    if values.ndim == 2:
        values = values[:, :, None]  # (N, T) -> (N, T, 1)
    return path, values, labels, lengths, files


def _check_series_arrays(path: Path, values, labels, lengths, cfg: DataConfig) -> None:
    where = str(path)
    if values.ndim != 3 or 0 in values.shape[1:]:
        raise DataError(f"{where}: series have shape {values.shape}; expected (N, T) or (N, T, C)")
    if len(values) == 0:
        raise DataError(f"{where}: holds no series (shape {values.shape})")
    if values.dtype.kind not in "iuf":
        raise DataError(f"{where}: series have dtype {values.dtype}; expected numbers")
    if cfg.series_channels is not None and values.shape[2] != cfg.series_channels:
        raise DataError(
            f"{where}: every series has {values.shape[2]} channels, expected "
            f"{cfg.series_channels} (data.series_channels)"
        )
    if lengths is not None:
        if lengths.ndim != 1 or len(lengths) != len(values) or lengths.dtype.kind not in "iu":
            raise DataError(
                f"{where}: lengths have shape {lengths.shape} and dtype {lengths.dtype}; "
                f"expected ({len(values)},) integers, one per series"
            )
        wrong = (lengths < 0) | (lengths > values.shape[1])
        if wrong.any():
            row = int(np.flatnonzero(wrong)[0])
            raise DataError(
                f"{where}: series {row} has length {int(lengths[row])}, outside "
                f"[0, {values.shape[1]}] (the array's steps)"
            )
    if labels is not None:
        if labels.ndim != 1 or len(labels) != len(values) or labels.dtype.kind not in "iu":
            raise DataError(
                f"{where}: labels have shape {labels.shape} and dtype {labels.dtype}; "
                f"expected ({len(values)},) integers"
            )
        check_labels(np.asarray(labels), cfg, f"{where} labels")


def survey_series_array(cfg: DataConfig) -> tuple[SourceInfo, tuple[str, ...]]:
    path, values, labels, lengths, files = open_series_arrays(cfg)
    _check_series_arrays(path, values, labels, lengths, cfg)
    info = SourceInfo(
        kind="array",
        uri=str(path),
        fingerprint=sha256_files(files, prefix="array-sequences\n"),
        num_items=capped(len(values), cfg),
        class_names=numbered_classes(np.asarray(labels), cfg) if labels is not None else (),
        sequence_shape=(cfg.max_length or values.shape[1], values.shape[2]),
    )
    return info, ()


def nan_end_length(values: np.ndarray) -> int:
    """Steps before the trailing run of all-NaN steps of (T, C) values."""
    filled = ~np.isnan(values).all(axis=1)
    return int(np.flatnonzero(filled)[-1]) + 1 if filled.any() else 0


def load_series_array(spec: PartitionSpec, cfg: DataConfig) -> Partition:
    path, values, labels, lengths, _ = open_series_arrays(cfg)
    if len(values) < spec.stop:
        raise DataError(f"{path}: has {len(values)} series, fewer than when it was planned")
    chunk = np.asarray(values[spec.start : spec.stop], dtype=np.float64)
    ids = [f"{path.name}[{row}]" for row in range(spec.start, spec.stop)]
    series = []
    for i, row in enumerate(range(spec.start, spec.stop)):
        length = int(lengths[row]) if lengths is not None else nan_end_length(chunk[i])
        series.append(chunk[i, :length])
    labs = [-1] * len(ids) if labels is None else [int(v) for v in labels[spec.start : spec.stop]]
    return pack_series(spec, cfg, ids=ids, series=series, labels=labs)


# ---------------------------------------------------------------- built-ins


def sine_series(seed: int, index: int, steps: int, channels: int) -> np.ndarray:
    """Series `index` of the sine protocol: (steps, channels) in [0, 1]."""
    rng = np.random.default_rng([seed, index])
    freq, phase = rng.uniform(0.0, 0.1, size=(2, channels))
    t = np.arange(steps, dtype=np.float64)[:, None]
    return (np.sin(freq * t + phase) + 1.0) * 0.5


def _sines_shape(cfg: DataConfig) -> tuple[int, int]:
    return cfg.max_length or cfg.series_length, cfg.series_channels or SINES_CHANNELS


# sktime's bundled UEA datasets genpar reads (data.source -> the folder and files' name)
BUNDLED = {"basic_motions": "BasicMotions", "japanese_vowels": "JapaneseVowels"}


def bundled_dir(source: str) -> Path:
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.origin:
        raise DataError(f"data.source {source!r} needs the sktime package: pip install sktime")
    path = Path(spec.origin).parent / "datasets" / "data" / BUNDLED[source]
    if not path.is_dir():
        raise DataError(f"sktime is installed but its bundled {path} is missing")
    return path


def parse_ts(path: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """A .ts file (the UEA/UCR time-series format): ([(L, C) series], [label], class names)."""
    series, labels, classes, in_data = [], [], [], False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if line.lower().startswith("@classlabel"):
                classes = line.split()[2:]
            in_data = line.lower() == "@data"
            continue
        *dims, label = line.split(":")
        try:
            channels = [
                [float("nan") if v == "?" else float(v) for v in d.split(",")] for d in dims
            ]
            series.append(np.asarray(channels, dtype=np.float64).T)  # (C, L) -> (L, C)
        except ValueError as e:
            raise DataError(f"{path} line {number}: not a series of numbers ({e})") from e
        labels.append(label.strip())
    return series, labels, classes


@functools.cache
def bundled_series(source: str) -> tuple[list[np.ndarray], np.ndarray, tuple[str, ...], str]:
    """(series, labels, class names, fingerprint) of a bundled dataset: train file then test
    file, cached."""
    folder, name = bundled_dir(source), BUNDLED[source]
    files = [folder / f"{name}_TRAIN.ts", folder / f"{name}_TEST.ts"]
    series, names, classes = [], [], []
    for f in files:
        s, n, classes = parse_ts(f)
        series += s
        names += n
    labels = np.asarray([classes.index(n) for n in names], dtype=np.int64)
    version = importlib.metadata.version("sktime")
    return series, labels, tuple(classes), sha256_files(files, prefix=f"{source}\n{version}\n")


def describe_series_builtin(cfg: DataConfig) -> tuple[SourceInfo, tuple[str, ...]]:
    if cfg.source == "sines":
        key = f"sines/1\n{cfg.sines_seed}\n{cfg.num_series}\n{_sines_shape(cfg)}"
        info = SourceInfo(
            kind="sines",
            uri=f"genpar:sines(seed={cfg.sines_seed})",
            fingerprint=hashlib.sha256(key.encode()).hexdigest(),
            num_items=capped(cfg.num_series, cfg),
            class_names=(),
            sequence_shape=(cfg.max_length or cfg.series_length, _sines_shape(cfg)[1]),
        )
        return info, ()
    series, labels, classes, fingerprint = bundled_series(cfg.source)
    longest = max(len(s) for s in series)
    channels = series[0].shape[1]
    if cfg.series_channels is not None and cfg.series_channels != channels:
        raise DataError(
            f"sktime:{BUNDLED[cfg.source]} has {channels} channels, not data.series_channels="
            f"{cfg.series_channels}"
        )
    info = SourceInfo(
        kind=cfg.source,
        uri=f"sktime:{BUNDLED[cfg.source]}",
        fingerprint=fingerprint,
        num_items=capped(len(series), cfg),
        class_names=classes,
        sequence_shape=(cfg.max_length or longest, channels),
    )
    return info, ()


def load_series_builtin(spec: PartitionSpec, cfg: DataConfig) -> Partition:
    rows = range(spec.start, spec.stop)
    if spec.kind == "sines":
        steps, channels = cfg.series_length, _sines_shape(cfg)[1]
        series = [sine_series(cfg.sines_seed, i, steps, channels) for i in rows]
        return pack_series(
            spec, cfg, ids=[f"sines[{i}]" for i in rows], series=series, labels=[-1] * len(rows)
        )
    all_series, labels, _, _ = bundled_series(spec.kind)
    return pack_series(
        spec,
        cfg,
        ids=[f"{BUNDLED[spec.kind]}[{i}]" for i in rows],
        series=[all_series[i] for i in rows],
        labels=[int(labels[i]) for i in rows],
    )
