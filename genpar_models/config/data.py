"""The `data` section: where the samples come from and how they become shards."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from genpar_models.config.base import Section

BUILTIN_SOURCES = ("digits", "mnist5k", "sines", "basic_motions", "japanese_vowels")
# Which sources hold which modality (array and table hold either, as data.modality says).
IMAGE_SOURCES = ("digits", "mnist5k", "folder", "array", "table")
SEQUENCE_SOURCES = ("sines", "basic_motions", "japanese_vowels", "array", "table")
# Fields only data.modality sequences reads (left out of an image shard set's key).
SEQUENCE_FIELDS = (
    "modality",
    "max_length",
    "series_channels",
    "series_length",
    "num_series",
    "sines_seed",
    "lengths_key",
    "lengths_path",
    "id_column",
    "time_column",
    "value_columns",
)


class DataConfig(Section):
    """Where the images come from and how they are turned into shards."""

    modality: Literal["images", "sequences"] = Field(
        "images",
        description="What a sample is: images (C, H, W), or sequences (T steps x C channels, "
        "variable length). Never guessed from the data: an image array and a sequence array "
        "can have the same rank.",
    )
    source: Literal[
        "digits", "mnist5k", "folder", "array", "table", "sines", "basic_motions", "japanese_vowels"
    ] = Field(
        "digits",
        description="digits / mnist5k: built-in image datasets shipped inside installed "
        "packages; folder: a directory of PNG/JPEG images (class subfolders become labels); "
        "array: a .npy or .npz file; table: a Parquet or CSV file (images: pixel columns; "
        "sequences: long format, one row per series and step). Sequences only: sines "
        "(TimeGAN's generated sine protocol, seeded), basic_motions (sktime's bundled "
        "BasicMotions, 80 series x 100 steps x 6 channels) and japanese_vowels (sktime's "
        "bundled JapaneseVowels, 640 series x 7-29 steps x 12 channels, variable length).",
    )
    path: str | None = Field(
        None, description="File or folder for the folder/array/table sources; unused for built-ins."
    )
    image_size: int = Field(
        8,
        description="Side of the square images the model sees, in pixels (even, 8 to 128; "
        "sizes that are not powers of two, such as 28 or 48, keep a top level of 7 or 6 "
        "pixels).",
    )
    channels: Literal[1, 3] = Field(1, description="1 = grayscale, 3 = RGB.")
    resize: Literal["center_crop", "pad", "stretch"] = Field(
        "center_crop", description="How non-square images become square before resizing."
    )
    alpha_background: Literal["black", "white"] = Field(
        "black", description="Colour that transparent pixels are composited onto."
    )
    binarize: Literal["none", "static", "dynamic"] = Field(
        "none",
        description="What the model sees: none = 8-bit grey levels; static = pixels above "
        "half-white are 1, the rest 0 (one fixed binary dataset); dynamic = each pixel is 1 "
        "with probability grey/255, drawn anew whenever a training image is seen (evaluation "
        "uses one seeded draw). A Bernoulli likelihood is a code length only on binary data. "
        "Shards keep the grey levels.",
    )
    val_fraction: float = Field(0.1, ge=0.0, le=0.5, description="Share of samples for validation.")
    test_fraction: float = Field(0.1, ge=0.0, le=0.5, description="Share of samples for test.")
    shard_size: int = Field(
        1024, ge=16, le=1_000_000, description="Input samples per Dask partition (and per shard)."
    )
    on_bad: Literal["fail", "skip"] = Field(
        "fail",
        description="fail: stop and list every unreadable or invalid sample; "
        "skip: leave them out and count them in the manifest and in MLflow.",
    )
    parallel: Literal["auto", "local", "dask"] = Field(
        "auto",
        description="Where the partitions are decoded (the shards are the same either way): "
        "dask (compute.dask_address, else the flow run's one LocalCluster, started by the "
        "first stage that needs it), local (in this "
        "process), auto (dask when compute.dask_address names a cluster; otherwise the first "
        "partition in this process, and the rest on a LocalCluster only when the time it "
        "measured says the cluster's start-up pays for itself).",
    )
    max_samples: int | None = Field(
        None, ge=1, description="Use only the first N samples of the source (in source order)."
    )
    max_image_pixels: int = Field(
        25_000_000, ge=64, description="Largest decoded image (width x height) accepted."
    )
    pixel_max: float | None = Field(
        None,
        gt=0,
        description="array/table sources: value of a white pixel. Default: 255 for integer "
        "data, 1.0 for floating-point data.",
    )
    images_key: str | None = Field(
        None, description="array source, .npz: key of the images (default: images, x, X or data)."
    )
    labels_key: str | None = Field(
        None, description="array source, .npz: key of the labels (default: labels, y or Y)."
    )
    labels_path: str | None = Field(None, description="array source, .npy: a .npy of labels.")
    label_column: str | None = Field(
        "label", description="table source: the label column; every other column is a pixel."
    )
    num_classes: int | None = Field(
        None, ge=1, description="Expected number of classes; labels must lie in [0, num_classes)."
    )
    # --- sequences (data.modality: sequences) ---
    max_length: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="sequences: the longest series accepted (a longer one is a bad sample) and "
        "the padded length of the shards. Default: the longest series of the source.",
    )
    series_channels: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="sequences: the channels every series must have (a table series with "
        "another count is a bad sample; an array with another is refused). sines: how many it "
        "generates (default 5). Default otherwise: what the source holds.",
    )
    series_length: int = Field(
        24, ge=2, le=10_000, description="sines: steps per generated series (TimeGAN: 24)."
    )
    num_series: int = Field(
        10_000, ge=1, le=10_000_000, description="sines: how many series to generate."
    )
    sines_seed: int = Field(
        0, ge=0, description="sines: seed of the generator (series i is drawn from (seed, i))."
    )
    lengths_key: str | None = Field(
        None,
        description="array source, sequences, .npz: key of an (N,) integer array of series "
        "lengths (default: lengths when present). Without one, NaN at the end of a series "
        "marks where it stops.",
    )
    lengths_path: str | None = Field(
        None, description="array source, sequences, .npy: a .npy of (N,) series lengths."
    )
    id_column: str = Field("series_id", description="table source, sequences: the series id.")
    time_column: str = Field(
        "time",
        description="table source, sequences: the time index (numeric). Rows may come in any "
        "order (they are sorted by it); duplicate or unevenly spaced times make a bad series.",
    )
    value_columns: list[str] | None = Field(
        None,
        description="table source, sequences: the channels, in order. Default: every column "
        "but the id, time and label columns.",
    )

    @field_validator("image_size")
    @classmethod
    def _check_size(cls, v: int) -> int:
        if not 8 <= v <= 128 or v % 2:
            raise ValueError(f"must be an even number from 8 to 128, got {v}")
        return v

    @model_validator(mode="after")
    def _check_source(self) -> DataConfig:
        allowed = IMAGE_SOURCES if self.modality == "images" else SEQUENCE_SOURCES
        if self.source not in allowed:
            raise ValueError(
                f"data.source {self.source!r} does not hold {self.modality} "
                f"(data.modality={self.modality}); use one of {', '.join(allowed)}"
            )
        if self.source not in BUILTIN_SOURCES and not self.path:
            raise ValueError(f"data.path is required for source {self.source!r}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "data.val_fraction + data.test_fraction must be below 0.9, got "
                f"{self.val_fraction + self.test_fraction:g}"
            )
        return self
