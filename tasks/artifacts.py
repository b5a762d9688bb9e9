"""Prefect markdown artifacts: what a run did, in words, with links into MLflow.

Every pipeline run and every nightly retrain leaves one markdown artifact on its flow run:
the key metrics, the decision taken, and links to its MLflow run and to MLflow's comparison
of it with the champion. Artifacts are keyed per pipeline (`<name>-pipeline`,
`<name>-nightly-retrain`), so Prefect's Artifacts page keeps each one's history. Links
point at the tracking server's UI when tracking is a server, else at `genpar ui`'s default
address. Rendering is plain functions; the tasks only gather inputs and publish.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from genpar_models.config import PipelineConfig
from genpar_models.eval.protocol import protocol_kind
from tasks import mlflow_store as store
from tasks import registry
from tasks.common import run_logger
from tasks.promotion import ALIAS, read_protocols

LOCAL_UI = "http://127.0.0.1:5000"  # where `genpar ui` serves a SQLite store
MAX_ROWS = 14


def ui_base(uri: str) -> str:
    """The MLflow UI for a tracking URI (credentials dropped): the server itself, or genpar ui."""
    if not uri.startswith(("http://", "https://")):
        return LOCAL_UI
    parts = urlsplit(uri)
    netloc = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def compare_url(base: str, experiment_ids: list[str], run_ids: list[str]) -> str:
    """MLflow's side-by-side comparison of runs (its UI takes JSON lists in the hash query)."""
    runs = quote(json.dumps(run_ids, separators=(",", ":")))
    exps = quote(json.dumps(sorted(set(experiment_ids)), separators=(",", ":")))
    return f"{base}/#/compare-runs?runs={runs}&experiments={exps}"


def artifact_key(name: str, kind: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "genpar"
    return f"{slug}-{kind}"


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def key_metrics(metrics: dict[str, float], primary: str) -> list[str]:
    """The primary metric first, then the evaluation figures, then throughput."""
    rest = sorted(k for k in metrics if k.startswith("eval/") and k != primary)
    tail = [k for k in ("gen/samples_per_s", "train/wall_s") if k in metrics]
    return ([primary] if primary in metrics else []) + rest[: MAX_ROWS - len(tail) - 1] + tail


def _label(key: str, config: PipelineConfig) -> str:
    if key != config.retrain.primary_metric:
        return f"`{key}`"
    better = "higher" if config.retrain.higher_is_better else "lower"
    return f"**`{key}`** (primary, {better} is better)"


def pipeline_markdown(
    config: PipelineConfig, summary: dict[str, Any], champion: dict[str, str] | None, base: str
) -> str:
    """The pipeline run's report: metrics, what happened to its model, links."""
    name, version = config.registered_model_name, summary.get("model_version")
    here = run_url(base, summary["experiment_id"], summary["run_id"])
    lines = [f"# {config.name}: {config.model.name} on {config.data.source}", ""]
    decision = f"registered as version {version} of `{name}`" if version else "not registered"
    if champion is None:
        decision += f"; `{name}` has no `@{ALIAS}` yet (the nightly retrain promotes)"
    elif champion["version"] == version:
        decision += f"; it is the `@{ALIAS}`"
    else:
        decision += (
            f"; `@{ALIAS}` is version {champion['version']} (promotion is the nightly retrain's "
            "decision)"
        )
    lines += [f"**Decision:** {decision}.", "", "| metric | value |", "|---|---|"]
    metrics = summary["metrics"]
    lines += [
        f"| {_label(k, config)} | {_fmt(metrics[k])} |"
        for k in key_metrics(metrics, config.retrain.primary_metric)
    ]
    lines += ["", f"- [MLflow run {summary['run_id'][:12]}]({here})"]
    if champion and champion["version"] != version:
        both = compare_url(
            base,
            [summary["experiment_id"], champion["experiment_id"]],
            [summary["run_id"], champion["run_id"]],
        )
        lines.append(f"- [Compare with the champion (version {champion['version']})]({both})")
    return "\n".join(lines) + "\n"


def retrain_markdown(
    config: PipelineConfig, facts: dict[str, Any], decision: dict[str, Any], base: str
) -> str:
    """The nightly retrain's report: decision and reason, both scores side by side, links."""
    if decision.get("skipped"):
        return _skipped_markdown(config, facts, decision, base)
    challenger, champion = facts["challenger"], facts["champion"]
    defending = (facts.get("defending") or {}).get("metrics", {})
    name = config.registered_model_name
    verdict = "promoted" if decision["promote"] else "kept the champion"
    lines = [f"# Nightly retrain of {config.name}: {verdict}", ""]
    target = f"version {challenger['model_version']} of `{name}`"
    if decision["promote"]:
        lines.append(f"**Decision: promoted** {target} to `@{ALIAS}`. {decision['reason']}.")
    else:
        kept = f"version {champion['version']}" if champion else "none"
        lines.append(f"**Decision: kept** `@{ALIAS}` on {kept}; {target} was not promoted. ")
        lines[-1] += f"{decision['reason']}."
    champ_col = f"champion (v{champion['version']})" if champion else "champion"
    lines += ["", f"| metric | challenger (v{challenger['model_version']}) | {champ_col} |"]
    lines.append("|---|---|---|")
    ours = challenger["metrics"]
    for k in key_metrics(ours, decision["metric"]):
        lines.append(f"| {_label(k, config)} | {_fmt(ours[k])} | {_fmt(defending.get(k))} |")
    lines += ["", _rule_line(decision)]
    if facts.get("changes"):
        lines.append("- trained because: " + "; ".join(facts["changes"]))
    elif champion and "changes" in facts:  # nothing changed: only retrain.force trains then
        lines.append("- trained because: retrain.force: true (nothing changed since the champion)")
    data = facts["data"]
    lines.append(
        f"- data: fingerprint `{data['fingerprint'][:12]}`, "
        + ("shard set reused" if data["reused"] else "shard set rebuilt")
        + _data_vs_champion(data, champion)
    )
    init = facts["challenger_config"]["train"].get("init_from")
    lines.append(f"- warm start: from `{init}`" if init else "- warm start: off (trained afresh)")
    lines += _protocol_lines(facts.get("protocols", {}))
    lines += _retrain_links(challenger, champion, base)
    return "\n".join(lines) + "\n"


def _rule_line(decision: dict[str, Any]) -> str:
    gain, margin = decision["improvement"], decision["min_improvement"]
    if decision.get("rule") == "interval":
        low, high = decision.get("challenger_ci_low"), decision.get("challenger_ci_high")
        return (
            f"- rule: interval: the challenger's bootstrap interval [{_fmt(low)}, {_fmt(high)}] "
            f"must lie entirely on the better side of the champion's {_fmt(decision['champion'])}"
            f" (by more than {_fmt(margin)})"
        )
    return f"- rule: margin: improvement {_fmt(gain)}, required: more than {_fmt(margin)}"


def _skipped_markdown(
    config: PipelineConfig, facts: dict[str, Any], decision: dict[str, Any], base: str
) -> str:
    champion, data = facts["champion"], facts["data"]
    lines = [f"# Nightly retrain of {config.name}: nothing to do", ""]
    lines.append(f"**Decision: skipped**: {decision['reason']}.")
    lines += ["", f"- `@{ALIAS}` stays on version {champion['version']}; nothing was registered"]
    lines.append(f"- data: fingerprint `{data['fingerprint'][:12]}`, unchanged")
    theirs = run_url(base, champion["experiment_id"], champion["run_id"])
    lines += ["", f"- [champion's MLflow run]({theirs})"]
    record = facts.get("decision_run")
    if record:
        lines.append(
            f"- [this night's decision in MLflow]"
            f"({run_url(base, record['experiment_id'], record['run_id'])})"
        )
    return "\n".join(lines) + "\n"


def night_links(
    uri: str, challenger: dict[str, Any] | None, champion: dict[str, Any] | None
) -> dict[str, str]:
    """The MLflow links of one night: the challenger's run, the champion's, and both compared."""
    base, links = ui_base(uri), {}
    if challenger:
        links["challenger_run"] = run_url(base, challenger["experiment_id"], challenger["run_id"])
    if champion:
        links["champion_run"] = run_url(base, champion["experiment_id"], champion["run_id"])
    if challenger and champion:
        links["compare"] = compare_url(
            base,
            [challenger["experiment_id"], champion["experiment_id"]],
            [challenger["run_id"], champion["run_id"]],
        )
    return links


def _protocol_lines(protocols: dict[str, dict | None]) -> list[str]:
    def fmt(p: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in p.items())

    ours, theirs = protocols.get("challenger"), protocols.get("champion")
    if ours and (theirs is None or theirs == ours):
        both = "both models" if theirs else "challenger"
        return [f"- evaluation protocol ({both}): {fmt(ours)}"]
    out = [f"- challenger's evaluation protocol: {fmt(ours)}"] if ours else []
    return out + ([f"- champion's evaluation protocol: {fmt(theirs)}"] if theirs else [])


def _data_vs_champion(data: dict[str, Any], champion: dict[str, Any] | None) -> str:
    if not champion or not champion.get("source_fingerprint"):
        return ""
    same = champion["source_fingerprint"] == data["fingerprint"]
    return "; same data as the champion's" if same else "; the data changed since the champion"


def _retrain_links(challenger: dict, champion: dict | None, base: str) -> list[str]:
    ours = run_url(base, challenger["experiment_id"], challenger["run_id"])
    out = ["", f"- [challenger's MLflow run]({ours})"]
    if champion:
        theirs = run_url(base, champion["experiment_id"], champion["run_id"])
        both = compare_url(
            base,
            [challenger["experiment_id"], champion["experiment_id"]],
            [challenger["run_id"], champion["run_id"]],
        )
        out += [
            f"- [champion's MLflow run]({theirs})",
            f"- [Compare challenger and champion in MLflow]({both})",
        ]
    return out


def current_champion(uri: str, name: str) -> dict[str, str] | None:
    """{version, run_id, experiment_id} of the champion, or None."""
    client = store.connect(uri)
    version = registry.alias_version(client, name, ALIAS)
    if version is None:
        return None
    run_id = client.get_model_version(name, version).run_id
    exp = client.get_run(run_id).info.experiment_id
    return {"version": version, "run_id": run_id, "experiment_id": exp}


_IO = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "cache_policy": NO_CACHE,
}


@task(name="publish-run-report", task_run_name="report-{config.name}", **_IO)
def publish_run_report(config: PipelineConfig, summary: dict[str, Any]) -> str:
    """The pipeline run's markdown artifact; returns its markdown."""
    uri = store.resolve_uri(config)
    champion = current_champion(uri, config.registered_model_name)
    text = pipeline_markdown(config, summary, champion, ui_base(uri))
    create_markdown_artifact(
        text,
        key=artifact_key(config.name, "pipeline"),
        description=f"{config.name}: metrics, registered version and MLflow links",
    )
    run_logger().info(
        "MLflow run: %s", run_url(ui_base(uri), summary["experiment_id"], summary["run_id"])
    )
    return text


@task(name="publish-retrain-report", task_run_name="report-nightly-{config.name}", **_IO)
def publish_retrain_report(
    config: PipelineConfig, uri: str, facts: dict[str, Any], decision: dict[str, Any]
) -> str:
    """The nightly retrain's markdown artifact (decision, both scores, links)."""
    kind = protocol_kind(decision["metric"])
    protocols = {}
    if facts.get("challenger") and kind:
        report = Path(facts["challenger"]["run_dir"]) / "eval" / "report.json"
        protocols["challenger"] = read_protocols(report).get(kind)
        protocols["champion"] = ((facts.get("defending") or {}).get("protocols") or {}).get(kind)
    text = retrain_markdown(config, {**facts, "protocols": protocols}, decision, ui_base(uri))
    create_markdown_artifact(
        text,
        key=artifact_key(config.name, "nightly-retrain"),
        description=f"{config.name}: {decision['action']}",
    )
    return text
