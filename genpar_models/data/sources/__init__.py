"""List a data source's samples in partitions, and decode one partition: what Dask maps over.

The preprocessing task calls `plan_partitions` once on the driver and then
``client.map(load_partition, specs, cfg=...)``. Planning reads metadata only (file lists,
headers, label columns) and validates everything structural, so a bad file, shape or label
fails before any worker starts; `load_partition` decodes and normalises samples and reports
per-sample problems in `Partition.bad` instead of raising, so ``data.on_bad`` can decide.
Image kinds: the built-ins ``digits`` and ``mnist5k``, ``folder``, ``array`` and ``table``;
sequence kinds (data.modality: sequences, sources/series*.py): ``sines``, ``basic_motions``,
``japanese_vowels``, ``array`` and ``table``.
Nothing here imports dask, prefect or torch.
"""

from __future__ import annotations

from collections.abc import Callable

from genpar_models.config import DataConfig
from genpar_models.data.sources.array import load_array, survey_array
from genpar_models.data.sources.builtin import describe_builtin, load_builtin
from genpar_models.data.sources.folder import load_folder, survey_folder
from genpar_models.data.sources.series import (
    describe_series_builtin,
    load_series_array,
    load_series_builtin,
    survey_series_array,
)
from genpar_models.data.sources.series_table import load_series_table, survey_series_table
from genpar_models.data.sources.table import load_table, survey_table
from genpar_models.data.sources.types import Partition, PartitionSpec, SourceInfo, row_ranges
from genpar_models.errors import DataError

__all__ = [
    "Partition",
    "PartitionSpec",
    "SourceInfo",
    "describe_source",
    "load_partition",
    "plan_partitions",
]

Survey = Callable[[DataConfig], tuple[SourceInfo, tuple[str, ...]]]
Loader = Callable[[PartitionSpec, DataConfig], Partition]


def _survey_builtin(cfg: DataConfig) -> tuple[SourceInfo, tuple[str, ...]]:
    return describe_builtin(cfg), ()


_SURVEYS: dict[str, Survey] = {
    "digits": _survey_builtin,
    "mnist5k": _survey_builtin,
    "folder": survey_folder,
    "array": survey_array,
    "table": survey_table,
}
_LOADERS: dict[str, Loader] = {
    "digits": load_builtin,
    "mnist5k": load_builtin,
    "folder": load_folder,
    "array": load_array,
    "table": load_table,
}

_SEQUENCE_SURVEYS: dict[str, Survey] = {
    "sines": describe_series_builtin,
    "basic_motions": describe_series_builtin,
    "japanese_vowels": describe_series_builtin,
    "array": survey_series_array,
    "table": survey_series_table,
}
_SEQUENCE_LOADERS: dict[str, Loader] = {
    "sines": load_series_builtin,
    "basic_motions": load_series_builtin,
    "japanese_vowels": load_series_builtin,
    "array": load_series_array,
    "table": load_series_table,
}


def _survey(cfg: DataConfig) -> tuple[SourceInfo, tuple[str, ...]]:
    surveys = _SEQUENCE_SURVEYS if cfg.modality == "sequences" else _SURVEYS
    return surveys[cfg.source](cfg)


def describe_source(cfg: DataConfig) -> SourceInfo:
    """What `cfg` points at: kind, location, fingerprint, sample count and class names.

    Raises:
        DataError: the source is missing, empty or structurally invalid (names the file).
    """
    return _survey(cfg)[0]


def plan_partitions(cfg: DataConfig) -> tuple[SourceInfo, list[PartitionSpec]]:
    """The source split into partitions of at most ``data.shard_size`` samples, in source order.

    Returns:
        (SourceInfo, specs) where specs[i].index == i and together they cover samples
        0..num_items-1 exactly once.
    """
    info, items = _survey(cfg)
    specs = []
    for index, (start, stop) in enumerate(row_ranges(info.num_items, cfg.shard_size)):
        part = items[start:stop]
        specs.append(
            PartitionSpec(
                index=index,
                kind=info.kind,
                uri=info.uri,
                items=part,
                start=0 if items else start,
                stop=len(part) if items else stop,
                class_names=info.class_names if info.kind == "folder" else (),
                pixel_max=info.pixel_max,
                sequence_shape=info.sequence_shape,
            )
        )
    return info, specs


def load_partition(spec: PartitionSpec, cfg: DataConfig) -> Partition:
    """Decode, validate and normalise one partition to (n, channels, size, size) uint8
    (sequences: float32 (n, T, C), NaN after each series' length, and the lengths).

    Samples that cannot be used are listed in ``Partition.bad`` as (id, reason); only problems
    with the source as a whole (for example a file that changed since planning) raise.
    """
    if spec.kind != cfg.source:
        raise DataError(
            f"partition {spec.index} is of kind {spec.kind!r} but data.source is {cfg.source!r}"
        )
    if cfg.modality == "sequences":
        part = _SEQUENCE_LOADERS[spec.kind](spec, cfg)
        assert part.images.shape[1:] == spec.sequence_shape and part.lengths is not None, (
            f"partition {spec.index}: series {part.images.shape}, "
            f"expected (n, *{spec.sequence_shape})"
        )
        return part
    part = _LOADERS[spec.kind](spec, cfg)
    expected = (cfg.channels, cfg.image_size, cfg.image_size)
    assert part.images.shape[1:] == expected and len(part.images) == len(part.ids), (
        f"partition {spec.index}: images {part.images.shape}, expected (n, *{expected})"
    )
    return part
