"""The sections of operating genpar: the nightly `retrain` and where runs are `tracking`ed."""

from __future__ import annotations

import re
import zoneinfo
from typing import Literal

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
    rule: Literal["margin", "interval"] = Field(
        "margin",
        description="How the challenger must beat the champion on the primary metric: "
        "`margin`: its score by more than min_improvement; `interval`: its whole bootstrap "
        "interval (`<metric>_ci_low`..`_ci_high`) on the better side of the champion's score "
        "(by more than min_improvement); a metric without an interval never promotes under it.",
    )
    force: bool = Field(
        False,
        description="Train a challenger even when nothing changed since the champion (same "
        "data fingerprint, run identity and lineage); off: such a night trains nothing.",
    )
    notify_url: str | None = Field(
        None,
        description="Webhook that receives a JSON POST (decision, scores, links) for the "
        "nights in notify_on. `env:NAME` reads the URL from environment variable NAME when "
        "sending, so a token in it stays out of configs, Prefect parameters and MLflow; a "
        "literal URL is shown as scheme://host/*** wherever genpar logs or records it.",
    )
    notify_on: tuple[Literal["failed", "skipped", "promoted", "kept"], ...] = Field(
        ("failed", "skipped", "promoted"),
        description="Which nights notify: failed, skipped (nothing changed, nothing trained), "
        "promoted (a new champion), kept (a challenger lost).",
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

    @field_validator("notify_url")
    @classmethod
    def _check_notify_url(cls, v: str | None) -> str | None:
        if v is None or re.fullmatch(r"https?://[^\s/?#]+([/?#]\S*)?", v):
            return v
        if re.fullmatch(r"env:[A-Za-z_][A-Za-z0-9_]*", v):
            return v
        raise ValueError(
            "must be an http(s):// URL or env:NAME (an environment variable holding the URL)"
        )

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


INLINE_CREDENTIALS = re.compile(r"^[A-Za-z][\w+.-]*://[^/@\s]+@")


class TrackingConfig(Section):
    """Where runs are recorded. Credentials never go here: they come from the environment."""

    uri: str | None = Field(
        None,
        description="MLflow tracking URI, without credentials. Default: $MLFLOW_TRACKING_URI "
        "if set, else a SQLite store under the genpar home directory. A server's user and "
        "password come from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.",
    )
    experiment: str | None = Field(
        None, description="MLflow experiment (default: the pipeline name)."
    )
    registered_model: str | None = Field(
        None,
        description="MLflow registered model that every run's model is added to as a "
        "version (default: the pipeline name).",
    )
    password_secret: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding the MLflow tracking password, "
        "read into MLFLOW_TRACKING_PASSWORD when a flow run starts and that variable is not "
        "set (for deployments whose workers cannot hold it in their environment).",
    )

    @field_validator("uri")
    @classmethod
    def _no_inline_credentials(cls, v: str | None) -> str | None:
        if v is not None and INLINE_CREDENTIALS.match(v):
            raise ValueError(
                "holds credentials (user:password@), which genpar would store in the run "
                "spec, MLflow params and the deployments' parameters (the Prefect UI form); "
                "give the URI without them and set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD in the environment (for deployments: "
                "tracking.password_secret names a Prefect Secret block)"
            )
        return v
