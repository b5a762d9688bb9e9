"""The sections of the stages after training: `evaluate`, `generate` and `compress`."""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import Field, field_validator

from genpar_models.config.base import Section


class EvaluateConfig(Section):
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
    posthoc_steps: int = Field(
        2000,
        ge=1,
        le=1_000_000,
        description="sequences: training steps (batch 128) of the post-hoc GRU classifier and "
        "predictor behind eval/discriminative_score and eval/predictive_mae (TimeGAN: 2000 "
        "and 5000).",
    )
    reference_split: Literal["test", "val", "train"] = Field(
        "test", description="Real images that generated samples are compared with."
    )
    max_real_samples: int | None = Field(
        5000, ge=10, description="Use at most this many real reference images."
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


class GenerateConfig(Section):
    """Parallel sample generation after training."""

    num_samples: int = Field(1000, ge=1, description="Samples to generate.")
    chunk_size: int = Field(
        250, ge=1, description="Samples per Dask task; each chunk is seeded by (seed, index)."
    )
    grid_rows: int = Field(8, ge=1, le=32, description="The PNG grid shows rows x rows samples.")
    seed: int | None = Field(None, ge=0, description="Generation seed (default: the run seed).")
    label: int | None = Field(
        None,
        ge=0,
        description="A conditional model (model.conditional): every sample of this class "
        "(`genpar generate --label K`); refused for an unconditional model or a class out of "
        "range. null: a conditional model samples every class, balanced (sample i of class i "
        "mod K). The labels are recorded beside the samples (samples-<i>.labels.npy).",
    )
    balanced_labels: bool = Field(
        False,
        description="A conditional model: a balanced set over all classes (`genpar generate "
        "--labels`; what it samples anyway without generate.label), insisted on: refused for "
        "an unconditional model.",
    )
    parallel: Literal["auto", "local", "dask"] = Field(
        "auto",
        description="Where the chunks are sampled (the samples are the same either way): "
        "dask (compute.dask_address, else the flow run's one LocalCluster, started by the "
        "first stage that needs it), local (in this "
        "process, chunk after chunk), auto (dask when compute.dask_address names a cluster; "
        "otherwise the first chunk in this process, and the rest on a LocalCluster only when "
        "the time it measured says the cluster's start-up pays for itself).",
    )
    max_samples_per_request: int = Field(
        4096,
        ge=1,
        description="The most samples one request row may ask of the served model (`mlflow "
        "models serve`); larger `n` is refused with a 400 naming the field.",
    )


Variant = Literal["fp32", "bf16", "fp16", "compile", "int8", "prune30", "prune50", "prune70"]
VARIANTS: tuple[str, ...] = typing.get_args(Variant)


class CompressConfig(Section):
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
