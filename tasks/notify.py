"""Tell someone: the nightly retrain's webhook (`retrain.notify_url`), for the nights in
`retrain.notify_on` (default: failed, skipped and promoting nights).

One JSON POST per night::

    {"event": "promoted" | "kept" | "skipped" | "failed",
     "text": "one line for chat tools (Slack, Mattermost and Teams show `text`)",
     "pipeline": ..., "registered_model": ...,
     "decision": {"action", "reason", "rule", "metric"} | null,
     "scores": {"challenger", "champion", "improvement", "challenger_ci_low",
                "challenger_ci_high"} | null,
     "versions": {"challenger", "champion_before", "champion"},
     "links": {"prefect_flow_run", "challenger_run", "champion_run", "compare"},
     "error": "the failed night's error" | null, "flow_run_id": ...}

The URL is read when sending: `env:NAME` names an environment variable holding it (so a token
never enters the config, Prefect parameters or MLflow), a literal URL is used as given. Logs
show it as scheme://host/*** only. A failed POST is retried, then logged as an error: it
never fails the night, whose decision is already recorded in MLflow.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from prefect import runtime, task
from prefect.cache_policies import NO_CACHE

from genpar_models.config import PipelineConfig
from genpar_models.config.identity import redact_webhook
from genpar_models.errors import ConfigError
from tasks.common import retry_unless_user_error, run_logger

EVENTS = {"promoted": "promoted", "kept champion": "kept", "skipped": "skipped"}
TIMEOUT_S = 10


class NotifyError(ConnectionError):
    """The webhook could not be reached or refused the notification (retried: not a
    GenparError, which marks bad input)."""


def webhook_url(config: PipelineConfig) -> str | None:
    """The URL to POST to (an `env:NAME` reference resolved now), or None when not set.

    Raises:
        ConfigError: `env:NAME` names a variable that is not set.
    """
    url = config.retrain.notify_url
    if url is None or not url.startswith("env:"):
        return url
    name = url.removeprefix("env:")
    if not os.environ.get(name):
        raise ConfigError(
            f"retrain.notify_url={url!r}: environment variable {name} is not set in the "
            "process that runs the nightly retrain"
        )
    return os.environ[name]


def send(url: str, payload: dict[str, Any], *, timeout_s: float = TIMEOUT_S) -> int:
    """POST `payload` as JSON; return the HTTP status.

    Raises:
        NotifyError: unreachable or a non-2xx answer (the URL shown redacted).
    """
    body = json.dumps(payload, default=str).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    shown = redact_webhook(url)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.status
    except urllib.error.HTTPError as e:  # its text repeats the URL: say the status only
        raise NotifyError(f"webhook {shown} answered {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise NotifyError(f"webhook {shown} is unreachable: {reason}") from None


def night_payload(
    config: PipelineConfig, event: str, facts: dict[str, Any], decision: dict[str, Any] | None
) -> dict[str, Any]:
    """The JSON of one night (see the module docstring); `facts` as the nightly gathers them."""
    champion, challenger = facts.get("champion"), facts.get("challenger")
    before = champion["version"] if champion else None
    ours = challenger["model_version"] if challenger else None
    now = ours if decision and decision["promote"] else before
    text = f"genpar nightly {config.name}: {event}"
    if decision:
        text += f": {decision['reason']}"
    if facts.get("error"):
        text += f": {facts['error']}"
    scores = None
    if decision and not decision["skipped"]:
        keys = ("challenger", "champion", "improvement", "challenger_ci_low", "challenger_ci_high")
        scores = {k: decision[k] for k in keys}
    return {
        "event": event,
        "text": text[:3000],
        "pipeline": config.name,
        "registered_model": config.registered_model_name,
        "decision": {k: decision[k] for k in ("action", "reason", "rule", "metric")}
        if decision
        else None,
        "scores": scores,
        "versions": {"challenger": ours, "champion_before": before, "champion": now},
        "links": facts.get("links", {}),
        "error": facts.get("error"),
        "flow_run_id": facts.get("flow_run_id"),
    }


def deliver(config: PipelineConfig, event: str, payload: dict[str, Any]) -> bool:
    """Send when the config asks for this event; False when it does not."""
    url = webhook_url(config)
    if url is None or event not in config.retrain.notify_on:
        return False
    status = send(url, payload)
    run_logger().info("notified %s of %s (HTTP %d)", redact_webhook(url), event, status)
    return True


@task(
    name="notify",
    task_run_name="notify-{config.name}",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def notify_night(config: PipelineConfig, facts: dict[str, Any], decision: dict[str, Any]) -> bool:
    """POST the night's decision to retrain.notify_url when notify_on includes it."""
    event = EVENTS[decision["action"]]
    links = {**facts.get("links", {}), "prefect_flow_run": runtime.flow_run.ui_url}
    facts = {**facts, "flow_run_id": str(runtime.flow_run.id or ""), "links": links}
    return deliver(config, event, night_payload(config, event, facts, decision))


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow state hook of the nightly: a failed or crashed night notifies (never raises)."""
    from prefect.settings import PREFECT_UI_URL

    log = run_logger()
    try:
        config = PipelineConfig.model_validate(flow_run.parameters.get("config") or {})
        ui = PREFECT_UI_URL.value()
        facts = {
            "error": str(state.message)[:2000],
            "flow_run_id": str(flow_run.id),
            "links": {"prefect_flow_run": f"{ui}/flow-runs/flow-run/{flow_run.id}" if ui else None},
        }
        deliver(config, "failed", night_payload(config, "failed", facts, None))
    except Exception as e:  # noqa: BLE001 - a hook must never raise over the night's own error
        log.error("could not send the failure notification: %s", e)
