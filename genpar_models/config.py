"""The pipeline's configuration: one frozen pydantic tree, read from YAML with dotted overrides.

`PipelineConfig` is at once what users edit (``configs/*.yaml``), the Prefect flow's parameter
(so the Prefect UI renders it as a form with these descriptions) and, as JSON, the wire format
to torchrun and what MLflow logs as params. Every model forbids unknown keys and validates on
creation, so a bad value fails before any work and the error names the dotted field.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import typing
import zoneinfo
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from genpar_models.errors import ConfigError

__all__ = ["ConfigError", "PipelineConfig", "load_config", "build_config", "dump_config"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


BUILTIN_SOURCES = ("digits", "mnist5k")


class DataConfig(_Section):
    """Where the images come from and how they are turned into shards."""

    source: Literal["digits", "mnist5k", "folder", "array", "table"] = Field(
        "digits",
        description="digits / mnist5k: built-in datasets shipped inside installed packages; "
        "folder: a directory of PNG/JPEG images (class subfolders become labels); "
        "array: a .npy or .npz file; table: a Parquet or CSV file with pixel columns.",
    )
    path: str | None = Field(
        None, description="File or folder for the folder/array/table sources; unused for built-ins."
    )
    image_size: int = Field(
        8, description="Side of the square images the model sees, in pixels (even, 8 to 64)."
    )
    channels: Literal[1, 3] = Field(1, description="1 = grayscale, 3 = RGB.")
    resize: Literal["center_crop", "pad", "stretch"] = Field(
        "center_crop", description="How non-square images become square before resizing."
    )
    alpha_background: Literal["black", "white"] = Field(
        "black", description="Colour that transparent pixels are composited onto."
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

    @field_validator("image_size")
    @classmethod
    def _check_size(cls, v: int) -> int:
        if not 8 <= v <= 64 or v % 2:
            raise ValueError(f"must be an even number from 8 to 64, got {v}")
        return v

    @model_validator(mode="after")
    def _check_source(self) -> DataConfig:
        if self.source not in BUILTIN_SOURCES and not self.path:
            raise ValueError(f"data.path is required for source {self.source!r}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "data.val_fraction + data.test_fraction must be below 0.9, got "
                f"{self.val_fraction + self.test_fraction:g}"
            )
        return self


class ModelConfig(_Section):
    """Which generative model to build, by registry name, and its size."""

    name: Literal["vae", "dcgan"] = Field(
        "vae", description="vae: convolutional VAE; dcgan: DCGAN-style GAN."
    )
    latent_dim: int = Field(16, ge=1, le=1024, description="Size of the latent vector z.")
    base_channels: int = Field(
        32, ge=4, le=512, description="Channels of the first conv layer; doubled per level."
    )
    likelihood: Literal["bernoulli", "gaussian"] = Field(
        "bernoulli",
        description="VAE decoder: bernoulli (pixel intensities as probabilities) or gaussian "
        "(discretised over 256 levels with a learned per-channel scale).",
    )


class TrainConfig(_Section):
    """The torchrun training job."""

    max_steps: int = Field(2000, ge=1, description="Optimizer steps in total (all epochs).")
    batch_size_per_rank: int = Field(64, ge=1, le=65536, description="Samples per step per rank.")
    lr: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate (VAE, GAN generator).")
    lr_discriminator: float | None = Field(
        None, gt=0, le=1.0, description="GAN discriminator learning rate (default: lr)."
    )
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    kl_weight: float = Field(1.0, ge=0, description="VAE: weight of the KL term (beta-VAE).")
    grad_clip_norm: float | None = Field(None, gt=0, description="Clip gradients to this norm.")
    checkpoint_every_steps: int = Field(
        200, ge=1, description="Rank 0 writes a checkpoint (and commits metrics) this often."
    )
    keep_checkpoints: int = Field(3, ge=1, le=100, description="Newest checkpoints kept on disk.")
    log_every_steps: int = Field(20, ge=1, description="Print and record train metrics this often.")
    val_every_steps: int = Field(
        200, ge=1, description="Evaluate on the validation split this often."
    )
    max_restarts: int = Field(
        1, ge=0, le=10, description="torchrun --max-restarts: elastic restarts after a rank dies."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU."
    )
    resume: bool = Field(
        True,
        description="Continue an interrupted run of the same config and data from its newest "
        "valid checkpoint instead of starting over.",
    )
    init_from: str | None = Field(
        None,
        description="Initialise the weights (not the optimizer) from this model when no "
        "checkpoint exists: a run id, models:/NAME/VERSION, NAME@ALIAS or a model directory. "
        "The nightly retrain sets it to the champion's version when retrain.warm_start is on.",
    )


class EvaluateConfig(_Section):
    """Evaluation: the sample-quality scorecard and, for VAEs, likelihood on the test split."""

    num_samples: int = Field(
        1000, ge=10, description="Generated samples scored against the real reference set."
    )
    batch_size: int = Field(
        256, ge=1, description="Batch size of evaluation passes (results do not depend on it)."
    )
    iw_samples: int = Field(
        64, ge=0, le=100_000, description="VAE: K of the importance-weighted bound (0 = skip)."
    )
    max_test_samples: int | None = Field(
        None, ge=10, description="VAE likelihood: use at most this many test samples."
    )
    seed: int = Field(
        0,
        ge=0,
        description="Seed of the evaluation's latent noise and resampling; part of the "
        "protocol, independent of the training seed so runs of different seeds compare.",
    )
    extractor: Literal["auto", "classifier", "autoencoder", "inception"] = Field(
        "auto",
        description="Feature space of FID/KID/precision/recall: auto = a small classifier "
        "when the data has labels, else an autoencoder's encoder (either trained once per "
        "dataset and cached); inception = torch-fidelity's Inception, only if its weights are "
        "already on this machine (never downloaded).",
    )
    extractor_steps: int = Field(
        500, ge=1, description="Training steps of the feature extractor (once per dataset)."
    )
    feature_dim: int = Field(64, ge=2, le=2048, description="Width of the feature space.")
    reference_split: Literal["test", "val", "train"] = Field(
        "test", description="Real images that generated samples are compared with."
    )
    max_real_samples: int | None = Field(
        5000, ge=10, description="Use at most this many real reference images."
    )
    kid_subsets: int = Field(100, ge=1, description="KID: number of random subsets.")
    kid_subset_size: int = Field(
        1000,
        ge=2,
        description="KID: samples per subset (capped at the smaller of the two set sizes).",
    )
    nearest_k: int = Field(
        5, ge=1, description="Precision/recall/density/coverage: k of the k-NN balls."
    )
    bootstrap: int = Field(
        200, ge=0, description="Bootstrap resamples for the FID/KID intervals (0 = none)."
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="Level of the bootstrap intervals.")
    parallel: Literal["auto", "local", "dask"] = Field(
        "auto",
        description="Where generated samples are drawn and featurised: local = batched in this "
        "process (on the GPU when there is one); dask = chunks on Dask workers; auto = dask "
        "when compute.dask_address names a cluster, else local.",
    )
    log_to: Literal["auto", "run", "child"] = Field(
        "auto",
        description="`genpar evaluate`: run = the model's own run; child = a new child run; "
        "auto = the model's run unless it already holds a scorecard of another protocol.",
    )


class GenerateConfig(_Section):
    """Parallel sample generation after training."""

    num_samples: int = Field(1000, ge=1, description="Samples to generate.")
    chunk_size: int = Field(
        250, ge=1, description="Samples per Dask task; each chunk is seeded by (seed, index)."
    )
    grid_rows: int = Field(8, ge=1, le=32, description="The PNG grid shows rows x rows samples.")
    seed: int | None = Field(None, ge=0, description="Generation seed (default: the run seed).")


Variant = Literal["fp32", "bf16", "fp16", "compile", "int8", "prune30", "prune50", "prune70"]
VARIANTS: tuple[str, ...] = typing.get_args(Variant)


class CompressConfig(_Section):
    """Inference compression of the decoder/generator (`genpar compress`)."""

    variants: tuple[Variant, ...] = Field(
        VARIANTS,
        description="Variants to build and measure: fp32 (baseline), bf16, fp16 (CUDA only), "
        "compile (torch.compile), int8 (dynamic quantization of linear layers), "
        "prune30/50/70 (global magnitude pruning to that sparsity).",
    )
    finetune_steps: int = Field(
        0, ge=0, description="Fine-tune steps after magnitude pruning (0 = none)."
    )
    max_fid_increase: float = Field(
        1.0,
        ge=0,
        description="Quality budget: the best variant may raise eval/fid by at most "
        "this much over fp32.",
    )
    latency_repeats: int = Field(
        50,
        ge=5,
        le=100_000,
        description="Timed batch-1 calls per variant (p50/p95 latency); variants are timed "
        "in interleaved rounds so load changes hit all alike.",
    )
    throughput_batches: int = Field(
        5, ge=1, le=10_000, description="Timed batch-256 calls per variant (throughput)."
    )

    @field_validator("variants")
    @classmethod
    def _baseline_first(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        # Every quality change is measured against fp32, so the baseline is always built.
        return ("fp32", *dict.fromkeys(x for x in v if x != "fp32"))


class RetrainConfig(_Section):
    """The scheduled retrain and its promotion rule (`nightly-retrain` deployment)."""

    cron: str = Field(
        "0 2 * * *",
        description="When the nightly retrain runs: a 5-field cron expression "
        "(minute hour day-of-month month day-of-week), read by `genpar serve`.",
    )
    timezone: str = Field(
        "UTC", description="IANA timezone of the cron schedule, e.g. Europe/Berlin."
    )
    primary_metric: str = Field(
        "eval/fid", description="Metric that decides promotion to the champion alias."
    )
    higher_is_better: bool = Field(False, description="Direction of the primary metric.")
    min_improvement: float = Field(
        0.0,
        ge=0,
        description="A challenger must beat the champion on the primary metric by more than "
        "this margin (in the metric's units) to take the champion alias.",
    )
    warm_start: bool = Field(
        False,
        description="Initialise the challenger's weights (not its optimizer) from the "
        "champion's model; off: train from scratch.",
    )
    force_preprocess: bool = Field(
        False,
        description="Rebuild the shard set even when the source fingerprint is unchanged "
        "(default: unchanged input reuses its shards).",
    )

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, v: str) -> str:
        fields = v.split()
        if len(fields) != 5 or not all(re.fullmatch(r"[\d*/,\-A-Za-z?LW#]+", f) for f in fields):
            raise ValueError(
                f"must be a 5-field cron expression like '0 2 * * *' "
                f"(minute hour day-of-month month day-of-week), got {v!r}"
            )
        return " ".join(fields)

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown IANA timezone {v!r} (examples: UTC, Europe/Berlin, America/New_York)"
            ) from None
        return v


class TrackingConfig(_Section):
    """Where runs are recorded."""

    uri: str | None = Field(
        None,
        description="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI if set, else a SQLite "
        "store under the genpar home directory.",
    )
    experiment: str | None = Field(
        None, description="MLflow experiment (default: the pipeline name)."
    )
    registered_model: str | None = Field(
        None,
        description="MLflow registered model that every run's model is added to as a "
        "version (default: the pipeline name).",
    )


class ComputeConfig(_Section):
    """Processes, devices and clusters."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: every visible GPU if there is one, else CPU processes."
    )
    cpu_procs: int = Field(2, ge=1, le=256, description="Training processes on CPU (gloo).")
    threads_per_proc: int | None = Field(
        None, ge=1, description="Torch threads per CPU training process (default: cores / procs)."
    )
    dask_address: str | None = Field(
        None, description="Scheduler address of an existing Dask cluster (tcp://host:8786)."
    )
    dask_workers: int | None = Field(
        None, ge=1, description="Workers of the local Dask cluster (default: one per core)."
    )
    nnodes: int = Field(1, ge=1, description="torchrun nodes; >1 needs rdzv_endpoint.")
    rdzv_endpoint: str | None = Field(None, description="host:port of the c10d rendezvous.")
    rdzv_id: str | None = Field(None, description="Rendezvous job id shared by all nodes.")

    @model_validator(mode="after")
    def _check_nodes(self) -> ComputeConfig:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("compute.rdzv_endpoint is required when compute.nnodes > 1")
        return self


class PipelineConfig(_Section):
    """One pipeline: data -> preprocess -> train -> evaluate -> generate, tracked in MLflow."""

    name: str = Field(
        "genpar",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        description="Pipeline name; names the MLflow experiment and the Prefect run.",
    )
    seed: int = Field(0, ge=0, description="Seed for weights, data order, noise and generation.")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    generate: GenerateConfig = GenerateConfig()
    tracking: TrackingConfig = TrackingConfig()
    compute: ComputeConfig = ComputeConfig()
    compress: CompressConfig = CompressConfig()
    retrain: RetrainConfig = RetrainConfig()

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def registered_model_name(self) -> str:
        return self.tracking.registered_model or self.name

    def flat(self) -> dict[str, Any]:
        """The config as {dotted.key: value}, the form MLflow logs as params (no secrets)."""
        return flatten(self.redacted().model_dump(mode="json"))

    def redacted(self) -> PipelineConfig:
        """A copy safe to log or store as an artifact: credentials in URIs masked."""
        uri = self.tracking.uri
        if uri is None or redact_uri(uri) == uri:
            return self
        return self.model_copy(
            update={"tracking": self.tracking.model_copy(update={"uri": redact_uri(uri)})}
        )

    def train_key(self, shards_key: str) -> str:
        """Identity of a training job: what decides the weights (not eval/generate/compute)."""
        payload = self.model_dump(mode="json", include={"name", "seed", "model", "train"})
        payload["retrain"] = {"warm_start": self.retrain.warm_start}
        payload["train"].pop("resume", None)
        payload["train"].pop("max_restarts", None)
        payload["shards"] = shards_key
        return stable_hash(payload)[:16]


def redact_uri(uri: str) -> str:
    """Hide credentials in a URI (scheme://user:password@host -> scheme://***@host)."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", uri)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of obj."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def _known_fields(
    model: type[BaseModel], parts: list[str], override: str
) -> type[BaseModel] | None:
    """Walk `parts` through the model tree; raise ConfigError for an unknown key."""
    current: type[BaseModel] | None = model
    for depth, part in enumerate(parts):
        if current is None:
            raise ConfigError(f"override {override!r}: {'.'.join(parts[:depth])} is not a section")
        fields = current.model_fields
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            hint = difflib.get_close_matches(part, list(fields), n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"override {override!r}: unknown key {part!r} in {where}{suggestion} "
                f"(known: {', '.join(fields)})"
            )
        ann = fields[part].annotation
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return current


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides (values parsed as YAML) to a plain config dict."""
    tree = json.loads(json.dumps(tree))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key.path=value, e.g. train.lr=3e-4")
        parts = key.strip().split(".")
        _known_fields(PipelineConfig, parts, item)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return tree


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(tree).__name__}")
    return tree


def build_config(tree: dict[str, Any], origin: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin)) from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> PipelineConfig:
    """Read a YAML config (or the defaults when path is None), apply overrides, validate.

    Raises:
        ConfigError: naming the file, the dotted field and the allowed values.
    """
    tree = read_config_file(path) if path else {}
    tree = apply_overrides(tree, overrides or [])
    origin = str(path) if path else "defaults"
    if overrides:
        origin += " with " + " ".join(overrides)
    return build_config(tree, origin)


def dump_config(cfg: PipelineConfig) -> str:
    """The config as YAML, in the same shape the files in configs/ have."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _type_name(annotation: Any) -> str:
    """Readable type for the reference table: Literal values, `X or None`."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return " / ".join(json.dumps(a) for a in args)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in rest) + " or null"
    return getattr(annotation, "__name__", str(annotation))


def config_reference() -> str:
    """A Markdown table of every config field: dotted key, type, default, description."""
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for section, field in PipelineConfig.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            for name, sub in ann.model_fields.items():
                default = json.dumps(sub.default)
                desc = (sub.description or "").replace("|", "\\|")
                lines.append(
                    f"| `{section}.{name}` | {_type_name(sub.annotation)} | `{default}` | {desc} |"
                )
        else:
            lines.append(
                f"| `{section}` | {_type_name(ann)} | `{json.dumps(field.default)}` | "
                f"{field.description or ''} |"
            )
    return "\n".join(lines) + "\n"
