"""The sections of operating genpar: the nightly `retrain` and where runs are `tracking`ed."""

from __future__ import annotations

import re
import zoneinfo

from pydantic import Field, field_validator

from genpar_models.config.base import Section


class RetrainConfig(Section):
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


class TrackingConfig(Section):
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
