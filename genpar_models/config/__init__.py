"""The pipeline's configuration: one frozen pydantic tree, read from YAML with dotted overrides.

    base.py        the frozen, extra-forbidding base of every section
    data.py …      one module per group of sections: data, model, train (+ compute),
                   stages (evaluate, generate, compress), operate (retrain, tracking)
    pipeline.py    PipelineConfig, the whole tree, with its schema `version`
    loading.py     YAML files, `--set` overrides with did-you-mean, validation errors by field
    migrate.py     schema versions and the steps between them
    identity.py    stable hashes, the training job's key, redaction
    reference.py   the Markdown reference of every field (README, `genpar config --reference`)

Every section forbids unknown keys and validates on creation, so a bad value fails before any
work and the error names the dotted field. Importing this package never imports torch.
"""

from genpar_models.config.data import BUILTIN_SOURCES, DataConfig
from genpar_models.config.identity import flatten, redact_uri, stable_hash
from genpar_models.config.loading import (
    apply_overrides,
    build_config,
    dump_config,
    format_validation_error,
    load_config,
    read_config_file,
)
from genpar_models.config.migrate import CONFIG_VERSION
from genpar_models.config.model import SHARED_FIELDS, ModelConfig
from genpar_models.config.operate import RetrainConfig, TrackingConfig
from genpar_models.config.pipeline import PipelineConfig
from genpar_models.config.reference import config_reference
from genpar_models.config.stages import VARIANTS, CompressConfig, EvaluateConfig, GenerateConfig
from genpar_models.config.train import ComputeConfig, TrainConfig
from genpar_models.errors import ConfigError

__all__ = [
    "BUILTIN_SOURCES",
    "CONFIG_VERSION",
    "SHARED_FIELDS",
    "VARIANTS",
    "CompressConfig",
    "ComputeConfig",
    "ConfigError",
    "DataConfig",
    "EvaluateConfig",
    "GenerateConfig",
    "ModelConfig",
    "PipelineConfig",
    "RetrainConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "config_reference",
    "dump_config",
    "flatten",
    "format_validation_error",
    "load_config",
    "read_config_file",
    "redact_uri",
    "stable_hash",
]
