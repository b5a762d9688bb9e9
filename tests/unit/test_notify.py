"""The nightly's webhook payload and delivery, and the champion history read as a stack."""

from __future__ import annotations

import socket

import pytest

from genpar_models.config import ConfigError, PipelineConfig, load_config
from genpar_models.eval.promotion import decide, unchanged
from tasks.champion import rollback_target
from tasks.notify import NotifyError, night_payload, send, webhook_url


def test_env_reference_is_read_when_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(None, ["retrain.notify_url=env:GENPAR_HOOK_T"])
    monkeypatch.delenv("GENPAR_HOOK_T", raising=False)
    with pytest.raises(ConfigError, match="environment variable GENPAR_HOOK_T is not set"):
        webhook_url(cfg)
    monkeypatch.setenv("GENPAR_HOOK_T", "http://127.0.0.1:9/x")
    assert webhook_url(cfg) == "http://127.0.0.1:9/x"
    assert webhook_url(PipelineConfig()) is None


def test_a_failed_post_names_the_host_not_the_token() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with ends: nothing listens there
    with pytest.raises(NotifyError, match=rf"http://127.0.0.1:{port}/\*\*\* is unreachable") as e:
        send(f"http://127.0.0.1:{port}/hooks/TOKEN42", {"event": "failed"}, timeout_s=2)
    assert "TOKEN42" not in str(e.value)


def test_payload_carries_decision_scores_versions_and_links(tiny: PipelineConfig) -> None:
    decision = decide(9.0, 10.0, tiny.retrain, interval=(8.0, 9.5)).as_dict()
    facts = {
        "champion": {"version": "3"},
        "challenger": {"model_version": "4"},
        "links": {"compare": "http://mlflow/#/compare-runs?runs=x"},
    }
    payload = night_payload(tiny, "promoted", facts, decision)
    assert payload["event"] == "promoted" and payload["pipeline"] == "tiny"
    assert payload["scores"]["challenger"] == 9.0 and payload["scores"]["champion"] == 10.0
    assert payload["scores"]["challenger_ci_high"] == 9.5
    assert payload["versions"] == {"challenger": "4", "champion_before": "3", "champion": "4"}
    assert payload["decision"]["action"] == "promoted" and payload["text"].startswith(
        "genpar nightly tiny: promoted: "
    )
    skipped = unchanged("3", "f" * 64, "id", tiny.retrain).as_dict()
    quiet = night_payload(tiny, "skipped", {"champion": {"version": "3"}}, skipped)
    assert quiet["scores"] is None and quiet["versions"]["champion"] == "3"
    failed = night_payload(tiny, "failed", {"error": "boom"}, None)
    assert failed["decision"] is None and failed["error"] == "boom" and "boom" in failed["text"]


def _moves(*pairs: tuple[str, str]) -> list[dict]:
    return [{"action": a, "version": v} for a, v in pairs]


def test_rollback_walks_the_history_back() -> None:
    history = _moves(("nightly", "1"), ("nightly", "2"), ("nightly", "3"))
    assert rollback_target(history, "3") == "2"
    history += _moves(("rollback", "2"))
    assert rollback_target(history, "2") == "1"  # twice: two champions back
    history += _moves(("rollback", "1"))
    assert rollback_target(history, "1") is None  # nothing before the first
    assert rollback_target(_moves(("nightly", "1"), ("promote", "5")), "5") == "1"
    assert rollback_target(_moves(("nightly", "1")), "7") == "1"  # alias set outside genpar
    assert rollback_target([], "1") is None
    repeated = _moves(("nightly", "1"), ("promote", "2"), ("promote", "2"))
    assert rollback_target(repeated, "2") == "1"
