"""`PipelineConfig`: the one tree of every section, with the schema version and the run's names.

It is at once what users edit (``configs/*.yaml``), the Prefect flow's parameter (so the UI
renders it as a form with these descriptions) and, as JSON, the wire format to torchrun and
what MLflow logs as params. `version` is the schema version: a tree written under an older
one is migrated on validation (genpar_models/config/migrate.py), so stored specs and
deployment parameters keep loading after a rename.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from genpar_models.config import identity
from genpar_models.config.base import Section
from genpar_models.config.data import DataConfig
from genpar_models.config.migrate import CONFIG_VERSION, migrate
from genpar_models.config.model import ModelConfig
from genpar_models.config.operate import RetrainConfig, TrackingConfig
from genpar_models.config.stages import CompressConfig, EvaluateConfig, GenerateConfig
from genpar_models.config.train import ComputeConfig, TrainConfig


class PipelineConfig(Section):
    """One pipeline: data -> preprocess -> train -> evaluate -> generate, tracked in MLflow."""

    version: int = Field(
        CONFIG_VERSION,
        ge=1,
        le=CONFIG_VERSION,
        description="Schema version of this config. Files without one are version 1; older "
        "versions are migrated on load (`genpar config FILE` prints the migrated form).",
    )
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

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        # A tree that names an older version (a stored run spec, a deployment's parameters)
        # is brought up to date; one without a version is taken as current. Files without a
        # version are version 1: `load_config` says so before validating.
        version = data.get("version") if isinstance(data, dict) else None
        if isinstance(version, int) and version < CONFIG_VERSION:
            return migrate(data)[0]
        return data

    @model_validator(mode="after")
    def _check_precision(self) -> PipelineConfig:
        if self.train.precision != "fp16":
            return self
        if self.compute.device == "cpu":
            raise ValueError(
                "train.precision=fp16 needs CUDA (float16 with a gradient scaler), but "
                "compute.device is cpu; use fp32 or bf16 on CPU"
            )
        if self.model.gan_loss == "wgan_gp" or self.train.r1_gamma > 0:
            raise ValueError(
                "train.precision=fp16 cannot train gradient penalties (model.gan_loss=wgan_gp, "
                "train.r1_gamma > 0): their inner gradient is not loss-scaled; use bf16"
            )
        return self

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def registered_model_name(self) -> str:
        return self.tracking.registered_model or self.name

    def flat(self) -> dict[str, Any]:
        """The config as {dotted.key: value}, the form MLflow logs as params (no secrets).

        The schema version is left out: it is not a hyperparameter, and config.yaml holds it.
        """
        return identity.flatten(self.redacted().model_dump(mode="json", exclude={"version"}))

    def redacted(self) -> PipelineConfig:
        """A copy safe to log or store as an artifact: credentials in URIs masked, a literal
        webhook URL cut to its host (its path or query may hold a token)."""
        update: dict[str, Any] = {}
        uri, hook = self.tracking.uri, self.retrain.notify_url
        if uri is not None and identity.redact_uri(uri) != uri:
            update["tracking"] = self.tracking.model_copy(update={"uri": identity.redact_uri(uri)})
        if hook is not None and identity.redact_webhook(hook) != hook:
            update["retrain"] = self.retrain.model_copy(
                update={"notify_url": identity.redact_webhook(hook)}
            )
        return self.model_copy(update=update) if update else self

    def run_identity(self) -> str:
        """Identity of the whole run, compute included (see `identity.run_identity`)."""
        return identity.run_identity(self)

    def train_key(self, shards_key: str) -> str:
        """Identity of the training job (see `identity.train_key`)."""
        return identity.train_key(self, shards_key)
