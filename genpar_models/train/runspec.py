"""The run spec: the one JSON file the training task hands to every torchrun rank.

Processes talk through files: the task writes `spec.json`, every rank reads it, rank 0 writes
`result.json` next to it. Nothing is parsed out of logs.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from genpar_models.config import PipelineConfig
from genpar_models.errors import ConfigError
from genpar_models.util import atomic


class TrackingTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str
    run_id: str


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    config: PipelineConfig
    shards_dir: str
    run_dir: str
    train_key: str
    tracking: TrackingTarget | None = None
    threads_per_proc: int | None = None
    # Warm start: weights (not optimizer state) from this exported model when no checkpoint
    # exists yet; a checkpoint, once written, always wins (resume precedence).
    init_model_dir: str | None = None
    # A sweep's rung: train up to this step (checkpointed, validated, exported as at the end)
    # and stop; the same run resumed with a later stop continues as if never stopped, since
    # the learning-rate schedule, data order and noise depend on train.max_steps and the step.
    stop_at_step: int | None = None

    @property
    def end_step(self) -> int:
        steps = self.config.train.max_steps
        return min(self.stop_at_step, steps) if self.stop_at_step else steps

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.run_dir) / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return Path(self.run_dir) / "model"

    @property
    def result_path(self) -> Path:
        return Path(self.run_dir) / "result.json"


def write_spec(spec: RunSpec, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, spec.model_dump(mode="json"))
    return path


def read_spec(path: str | Path) -> RunSpec:
    path = Path(path)
    try:
        return RunSpec.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ConfigError(f"run spec not found: {path}") from None
    except (json.JSONDecodeError, ValidationError) as e:
        raise ConfigError(f"{path}: invalid run spec: {e}") from None
