"""The sweep file: a base config, a search space over its dotted fields, and how to search it.

`genpar sweep SWEEP.yaml` reads one of these (see configs/tiny-sweep.yaml and the README's
"Sweeps" section). Like the pipeline config it is a frozen pydantic tree that refuses unknown
keys, and a bad file fails before any work with an error naming the field: the space's keys
are checked against the config tree (with did-you-mean), early-stopping rungs must increase
inside (0, 1), and every trial's config is validated when the trials are planned
(genpar_models/sweep/plan.py), naming the trial's values when the config rejects them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from genpar_models.config.base import Section
from genpar_models.errors import ConfigError


class Range(Section):
    """A continuous (or integer) range, for random and TPE search."""

    low: float
    high: float
    log: bool = Field(False, description="Sample on a log scale (low must be > 0).")
    int_: bool = Field(False, alias="int", description="Integers from low to high inclusive.")

    model_config = {**Section.model_config, "populate_by_name": True}

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low must be below high (got low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got low={self.low})")
        return self


class Choices(Section):
    """A set of values to pick from (random and TPE search)."""

    choices: list[Any] = Field(min_length=1)


Dimension = list[Any] | Range | Choices


class Objective(Section):
    metric: str = Field(
        "eval/fid", description="The metric that ranks trials (an eval/ or val/ key)."
    )
    direction: Literal["minimize", "maximize"] = "minimize"


class EarlyStopping(Section):
    """Synchronous successive halving (Jamieson & Talwalkar 2016; Li et al. 2018, ASHA's
    synchronous form): at each rung every live trial has trained the same number of steps,
    and the best `keep` fraction goes on."""

    metric: str = Field(description="The metric compared at each rung (a val/ key).")
    direction: Literal["minimize", "maximize"] = "minimize"
    rungs: list[float] = Field(
        min_length=1, description="Fractions of train.max_steps at which trials are compared."
    )
    keep: float = Field(0.5, gt=0, lt=1, description="Fraction of trials kept at each rung.")

    @field_validator("rungs")
    @classmethod
    def _increasing(cls, rungs: list[float]) -> list[float]:
        for r in rungs:
            if not 0 < r < 1:
                raise ValueError(f"every rung must lie in (0, 1), got {r}")
        if any(b <= a for a, b in zip(rungs, rungs[1:], strict=False)):
            raise ValueError(f"rungs must be strictly increasing, got {rungs}")
        return rungs


class TrialCompute(Section):
    """What one trial trains on; the same whatever `concurrency` is, so a trial trains the
    same numbers whatever runs beside it."""

    cpu_procs: int = Field(1, ge=1, description="CPU training ranks per trial (gloo).")
    threads_per_proc: int = Field(1, ge=1, description="Torch threads per CPU rank.")
    gpus: int = Field(1, ge=1, description="GPUs per trial on a GPU machine.")


class SweepConfig(Section):
    """A hyperparameter sweep over one base pipeline config."""

    name: str = Field(
        "sweep", min_length=1, description="Names the MLflow parent run and the Prefect run."
    )
    base: str | dict[str, Any] = Field(
        description="The base pipeline config: a YAML file (relative to the sweep file) or an "
        "inline config. `genpar sweep` resolves a file into the inline form."
    )
    search: Literal["grid", "random", "tpe"] = Field(
        "grid",
        description="grid: every combination of the lists; random: Optuna's seeded "
        "RandomSampler; tpe: Optuna's TPE in seeded rounds of `concurrency` proposals.",
    )
    trials: int | None = Field(
        None, ge=1, description="random/tpe: how many; grid: the first N combinations."
    )
    concurrency: int | None = Field(
        None, ge=1, description="Trials training at once (default: what the machine fits)."
    )
    seed: int = Field(0, description="Seeds the search (random/tpe proposals).")
    space: dict[str, Dimension] = Field(
        description="Dotted config field -> a list of values (grid values / choices), "
        "{low, high, log, int} or {choices: [...]}."
    )
    seeds: list[int] | None = Field(
        None, min_length=1, description="Train each configuration once per seed (sets `seed`)."
    )
    objective: Objective = Field(
        Objective(), description="The metric that ranks finished trials, and its direction."
    )
    early_stopping: EarlyStopping | None = Field(
        None,
        description="Synchronous successive halving: the metric compared at each rung, the "
        "rungs (fractions of train.max_steps) and the fraction kept; none: every trial trains "
        "to the end.",
    )
    trial_compute: TrialCompute = Field(
        TrialCompute(),
        description="One trial's ranks and threads (CPU) or GPUs; never depends on concurrency.",
    )
    fail_fast: bool = Field(False, description="Stop the sweep at the first failed trial.")
    promote: bool = Field(
        False,
        description="Give the best trial's version the champion alias if it beats the "
        "champion by the base config's retrain.rule.",
    )

    @field_validator("space")
    @classmethod
    def _not_empty(cls, space: dict[str, Any]) -> dict[str, Any]:
        if not space:
            raise ValueError("the search space is empty: name at least one field to vary")
        for key, dim in space.items():
            if isinstance(dim, list) and not dim:
                raise ValueError(f"{key}: an empty list of values")
        return space

    @model_validator(mode="after")
    def _search_fits_space(self) -> SweepConfig:
        if self.search == "grid":
            for key, dim in self.space.items():
                if isinstance(dim, Range):
                    raise ValueError(
                        f"space.{key}: grid search needs a list of values, got a range "
                        f"({dim.low}..{dim.high}); use search: random or tpe"
                    )
        elif self.trials is None:
            raise ValueError(f"trials: search {self.search} needs the number of trials")
        return self

    def dimension(self, key: str) -> Range | Choices:
        """A space entry as a range or a set of choices (a plain list is its choices)."""
        dim = self.space[key]
        return Choices(choices=dim) if isinstance(dim, list) else dim


def resolve_base(sweep: SweepConfig) -> SweepConfig:
    """The sweep with a `base` file name (relative to the working directory: a deployment's
    form) loaded into the inline config the trials are built from."""
    if isinstance(sweep.base, dict):
        return sweep
    from genpar_models.config.loading import load_config

    return sweep.model_copy(update={"base": load_config(sweep.base).model_dump(mode="json")})


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """Read a sweep file; its `base` (a file relative to the sweep file, or inline) is loaded
    as a pipeline config with `overrides` applied (migrated, validated) and stored inline.

    Raises:
        ConfigError: naming the sweep file and the field.
    """
    from genpar_models.config.loading import (
        apply_overrides,
        build_config,
        format_validation_error,
        load_config,
        read_config_file,
    )

    path = Path(path)
    tree = read_config_file(path)
    base = tree.get("base")
    if isinstance(base, str):
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: base={base!r}: no such config file ({base_path})")
        config = load_config(base_path, overrides or [])
    elif isinstance(base, dict):
        config = build_config(apply_overrides(base, overrides or []), f"{path}: base")
    else:
        raise ConfigError(f"{path}: base: expected a config file name or an inline config")
    tree["base"] = config.model_dump(mode="json")
    try:
        return SweepConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
