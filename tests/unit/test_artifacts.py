"""The run reports' markdown and their MLflow links (pure rendering, no server)."""

from __future__ import annotations

import json
from urllib.parse import unquote

from genpar_models.config import PipelineConfig
from genpar_models.eval.promotion import decide
from tasks.artifacts import (
    artifact_key,
    compare_url,
    key_metrics,
    pipeline_markdown,
    retrain_markdown,
    ui_base,
)

BASE = "http://127.0.0.1:5000"


def test_links_point_at_the_mlflow_ui() -> None:
    assert ui_base("https://user:secret@mlflow.example:8443/prefix/") == (
        "https://mlflow.example:8443/prefix"
    )
    assert ui_base("sqlite:////home/me/.genpar/mlflow/mlflow.db") == BASE  # genpar ui
    url = compare_url(BASE, ["1", "1"], ["a" * 32, "b" * 32])
    runs, exps = unquote(url.split("runs=")[1]).split("&experiments=")
    assert json.loads(runs) == ["a" * 32, "b" * 32] and json.loads(exps) == ["1"]
    assert artifact_key("Digits_VAE.v2", "pipeline") == "digits-vae-v2-pipeline"


def test_key_metrics_put_the_primary_first() -> None:
    metrics = {"eval/b": 1.0, "eval/fid": 2.0, "train/loss": 3.0, "gen/samples_per_s": 4.0}
    assert key_metrics(metrics, "eval/fid") == ["eval/fid", "eval/b", "gen/samples_per_s"]


def _summary(run_id: str, version: str) -> dict:
    return {
        "run_id": run_id,
        "experiment_id": "1",
        "run_dir": "/nonexistent",
        "model_version": version,
        "metrics": {"eval/fid": 3.5, "eval/elbo": -29.5},
    }


def test_pipeline_report_says_what_happened(tiny: PipelineConfig) -> None:
    champion = {"version": "1", "run_id": "c" * 32, "experiment_id": "1"}
    text = pipeline_markdown(tiny, _summary("r" * 32, "2"), champion, BASE)
    assert "**Decision:** registered as version 2 of `tiny`; `@champion` is version 1" in text
    assert f"{BASE}/#/experiments/1/runs/{'r' * 32}" in text
    assert "Compare with the champion (version 1)" in text
    first = pipeline_markdown(tiny, _summary("r" * 32, "1"), None, BASE)
    assert "has no `@champion` yet" in first and "Compare" not in first


def test_retrain_report_shows_both_scores_and_the_reason(tiny: PipelineConfig) -> None:
    metric = tiny.retrain.primary_metric
    decision = decide(3.5, 3.0, tiny.retrain).as_dict()
    champion = {"version": "1", "run_id": "c" * 32, "experiment_id": "1"}
    facts = {
        "data": {"fingerprint": "f" * 64, "reused": True},
        "champion": {**champion, "source_fingerprint": "f" * 64},
        "challenger": _summary("r" * 32, "2") | {"metrics": {metric: 3.5}},
        "defending": {"metrics": {metric: 3.0}},
        "challenger_config": tiny.model_dump(mode="json"),
        "protocols": {"challenger": {"split": "test"}, "champion": {"split": "test"}},
    }
    text = retrain_markdown(tiny, facts, decision, BASE)
    assert "# Nightly retrain of tiny: kept the champion" in text
    assert "**Decision: kept** `@champion` on version 1" in text and decision["reason"] in text
    assert "| 3.5 | 3 |" in text  # challenger and champion side by side
    assert "same data as the champion's" in text and "warm start: off" in text
    assert "evaluation protocol (both models): split=test" in text
    assert "#/compare-runs?runs=" in text


def test_skipped_night_report_says_nothing_was_trained(tiny: PipelineConfig) -> None:
    from genpar_models.eval.promotion import unchanged

    decision = unchanged("4", "f" * 64, "abc123", tiny.retrain).as_dict()
    champion = {"version": "4", "run_id": "c" * 32, "experiment_id": "1"}
    facts = {
        "data": {"fingerprint": "f" * 64, "reused": True},
        "champion": champion,
        "challenger": None,
        "decision_run": {"run_id": "d" * 32, "experiment_id": "1"},
    }
    text = retrain_markdown(tiny, facts, decision, BASE)
    assert "# Nightly retrain of tiny: nothing to do" in text
    assert "**Decision: skipped**: unchanged since the champion, version 4" in text
    assert "stays on version 4; nothing was registered" in text
    assert f"runs/{'d' * 32}" in text and f"runs/{'c' * 32}" in text


def test_retrain_report_states_the_interval_rule(tiny: PipelineConfig) -> None:
    rule = tiny.retrain.model_copy(update={"rule": "interval"})
    decision = decide(3.0, 3.5, rule, interval=(2.8, 3.6)).as_dict()
    facts = {
        "data": {"fingerprint": "f" * 64, "reused": False},
        "champion": {"version": "1", "run_id": "c" * 32, "experiment_id": "1"},
        "challenger": _summary("r" * 32, "2") | {"metrics": {"eval/fid": 3.0}},
        "defending": {"metrics": {"eval/fid": 3.5}},
        "changes": ["data: source fingerprint aaa -> bbb"],
        "challenger_config": tiny.model_dump(mode="json"),
    }
    text = retrain_markdown(tiny, facts, decision, BASE)
    assert "kept the champion" in text and "does not lie entirely below" in text
    assert "rule: interval: the challenger's bootstrap interval [2.8, 3.6]" in text
    assert "trained because: data: source fingerprint aaa -> bbb" in text


def test_forced_night_report_says_why_it_trained(tiny: PipelineConfig) -> None:
    decision = decide(3.5, 3.5, tiny.retrain).as_dict()
    facts = {
        "data": {"fingerprint": "f" * 64, "reused": True},
        "champion": {"version": "1", "run_id": "c" * 32, "experiment_id": "1"},
        "challenger": _summary("r" * 32, "2") | {"metrics": {"eval/fid": 3.5}},
        "defending": {"metrics": {"eval/fid": 3.5}},
        "changes": [],  # nothing changed, yet it trained: retrain.force
        "challenger_config": tiny.model_dump(mode="json"),
    }
    text = retrain_markdown(tiny, facts, decision, BASE)
    assert "trained because: retrain.force: true (nothing changed since the champion)" in text
    del facts["changes"]  # a report without the nightly's comparison claims nothing
    assert "trained because" not in retrain_markdown(tiny, facts, decision, BASE)
