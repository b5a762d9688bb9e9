"""The nightly retrain's promotion rules, what changed since the champion, the run identity
and the `retrain` config section."""

from __future__ import annotations

import math

import pytest

from genpar_models.config import (
    ConfigError,
    PipelineConfig,
    RetrainConfig,
    dump_config,
    load_config,
)
from genpar_models.eval.promotion import (
    challenger_config,
    changes,
    decide,
    find_interval,
    improvement,
    unchanged,
)
from genpar_models.eval.protocol import protocol_id


def rule(**kw) -> RetrainConfig:
    return RetrainConfig(primary_metric="eval/fid", **kw)


def test_first_challenger_promotes_whatever_the_margin() -> None:
    d = decide(50.0, None, rule(min_improvement=1e9))
    assert d.promote and "no champion yet" in d.reason and d.champion is None


@pytest.mark.parametrize(
    ("challenger", "champion", "higher", "margin", "promote"),
    [
        (9.0, 10.0, False, 0.0, True),  # lower is better: 1.0 better
        (10.0, 10.0, False, 0.0, False),  # a tie never promotes
        (11.0, 10.0, False, 0.0, False),  # worse
        (9.0, 10.0, False, 1.0, False),  # exactly the margin is not *more* than it
        (8.9, 10.0, False, 1.0, True),
        (0.8, 0.7, True, 0.05, True),  # higher is better
        (0.8, 0.7, True, 0.2, False),
        (0.6, 0.7, True, 0.0, False),
    ],
)
def test_challenger_must_beat_champion_by_more_than_the_margin(
    challenger: float, champion: float, higher: bool, margin: float, promote: bool
) -> None:
    d = decide(challenger, champion, rule(higher_is_better=higher, min_improvement=margin))
    assert d.promote is promote
    assert d.improvement == pytest.approx(improvement(challenger, champion, higher))
    assert "eval/fid" in d.reason and f"{margin:g}" in d.reason
    assert d.action == ("promoted" if promote else "kept champion")


def test_non_finite_scores() -> None:
    assert not decide(math.nan, 10.0, rule()).promote
    assert not decide(math.inf, None, rule()).promote  # even with no champion
    assert decide(5.0, math.nan, rule()).promote  # a broken champion score loses


def test_decision_as_dict_is_what_gets_logged() -> None:
    d = decide(9.0, 10.0, rule(min_improvement=0.5)).as_dict()
    assert d["action"] == "promoted" and d["challenger"] == 9.0 and d["champion"] == 10.0
    assert d["improvement"] == 1.0 and d["min_improvement"] == 0.5 and d["metric"] == "eval/fid"


def test_warm_start_points_the_challenger_at_the_champion(tiny: PipelineConfig) -> None:
    assert challenger_config(tiny, "models:/tiny/3") is tiny  # warm_start off
    warm = tiny.model_copy(update={"retrain": tiny.retrain.model_copy(update={"warm_start": True})})
    assert challenger_config(warm, None) is warm  # no champion yet
    assert challenger_config(warm, "models:/tiny/3").train.init_from == "models:/tiny/3"
    assert tiny.train_key("s") != challenger_config(warm, "models:/tiny/3").train_key("s")


def test_schedule_is_validated_and_changeable_without_code() -> None:
    cfg = load_config(None, ["retrain.cron=30 3 * * 1-5", "retrain.timezone=Europe/Berlin"])
    assert (cfg.retrain.cron, cfg.retrain.timezone) == ("30 3 * * 1-5", "Europe/Berlin")
    with pytest.raises(ConfigError, match=r"retrain.cron: .*5-field cron"):
        load_config(None, ["retrain.cron=every night"])
    with pytest.raises(ConfigError, match=r"retrain.timezone: unknown IANA timezone 'Mars/Base'"):
        load_config(None, ["retrain.timezone=Mars/Base"])
    with pytest.raises(ConfigError, match="retrain.min_improvement"):
        load_config(None, ["retrain.min_improvement=-1"])


def test_interval_rule_needs_the_whole_interval_on_the_better_side() -> None:
    lower = rule(rule="interval")
    win = decide(90.0, 120.0, lower, interval=(85.0, 110.0))
    assert win.promote and "lies entirely below it" in win.reason and win.rule == "interval"
    assert (win.challenger_ci_low, win.challenger_ci_high) == (85.0, 110.0)
    overlap = decide(90.0, 100.0, lower, interval=(85.0, 105.0))  # better point, wide interval
    assert not overlap.promote and "does not lie entirely below" in overlap.reason
    assert decide(90.0, 100.0, rule(), interval=(85.0, 105.0)).promote  # margin: it would
    # the margin applies on top: the interval's worse end must clear it
    strict, mild = (
        rule(rule="interval", min_improvement=15),
        rule(rule="interval", min_improvement=5),
    )
    assert not decide(90.0, 120.0, strict, interval=(85, 110)).promote  # 120 - 110 = 10 < 15
    assert decide(90.0, 120.0, mild, interval=(85, 110)).promote
    higher = rule(rule="interval", higher_is_better=True)
    assert decide(0.8, 0.6, higher, interval=(0.7, 0.9)).promote
    assert not decide(0.8, 0.75, higher, interval=(0.7, 0.9)).promote
    assert "lies entirely above it" in decide(0.8, 0.6, higher, interval=(0.7, 0.9)).reason


def test_interval_rule_without_an_interval_never_promotes() -> None:
    d = decide(-80.0, -90.0, rule(rule="interval", higher_is_better=True), interval=None)
    assert not d.promote and "eval/fid_ci_low/eval/fid_ci_high" in d.reason
    assert "use rule: margin" in d.reason
    assert decide(5.0, None, rule(rule="interval")).promote  # the first run needs no interval


def test_intervals_are_found_by_the_metric_name() -> None:
    metrics = {"eval/fid": 3.0, "eval/fid_ci_low": 2.0, "eval/fid_ci_high": 4.0}
    assert find_interval(metrics, "eval/fid") == (2.0, 4.0)
    kid = {"eval/kid_mean": 0.1, "eval/kid_ci_low": 0.05, "eval/kid_ci_high": 0.2}
    assert find_interval(kid, "eval/kid_mean") == (0.05, 0.2)
    assert find_interval({"eval/elbo": -80.0}, "eval/elbo") is None


def test_scores_under_different_protocols_are_never_compared() -> None:
    ours, theirs = {"split": "test", "real": 100}, {"split": "test", "real": 200}
    d = decide(1.0, 50.0, rule(), protocols=(ours, theirs))
    assert not d.promote and d.improvement is None
    assert "different quality protocols" in d.reason and "real: 100 vs 200" in d.reason
    same = decide(1.0, 50.0, rule(), protocols=(ours, dict(ours)))
    assert same.promote and same.protocol == protocol_id(ours)
    assert not decide(1.0, 50.0, rule(), protocols=(ours, None)).promote  # champion unrecorded
    unknown = decide(1.0, 50.0, rule(), protocols=(None, None))  # alike only in being unknown
    assert not unknown.promote and "neither score's quality protocol was recorded" in unknown.reason
    assert decide(1.0, None, rule(), protocols=(ours, None)).promote  # no champion: no check


def test_changes_say_what_differs_from_the_champion() -> None:
    lin = {"genpar": "0.1.0", "torch": "2.13.0"}
    today = {"fingerprint": "a" * 64, "identity": "id1", "lineage": lin}
    assert changes(dict(today), today) == []
    assert changes({**today, "fingerprint": "b" * 64}, today) == [
        f"data: source fingerprint {'b' * 12} -> {'a' * 12}"
    ]
    assert changes({**today, "identity": "id0"}, today) == ["config: run identity id0 -> id1"]
    newer = {**today, "lineage": {**lin, "torch": "2.14.0"}}
    assert changes(today, newer) == ["code: torch 2.13.0 -> 2.14.0"]
    older = {"fingerprint": "a" * 64, "identity": None, "lineage": {}}
    assert changes(older, today) == [
        "config: run identity not recorded -> id1",
        "code: the champion's lineage was not recorded",
    ]


def test_an_unchanged_night_is_skipped_with_its_reason() -> None:
    d = unchanged("7", "f" * 64, "abc", rule())
    assert d.action == "skipped" and not d.promote and d.skipped
    assert d.reason.startswith("unchanged since the champion, version 7")
    assert "retrain.force" in d.reason


def test_run_identity_includes_compute_but_not_where_runs_are_recorded(
    tiny: PipelineConfig,
) -> None:
    def with_(**changes) -> PipelineConfig:
        return load_config(None, [f"{k}={v}" for k, v in changes.items()]) if changes else base

    base = load_config(None, [])
    assert with_(**{"compute.cpu_procs": 1}).run_identity() != base.run_identity()
    assert with_(**{"compute.cpu_procs": 1}).train_key("s") == base.train_key("s")
    assert with_(**{"evaluate.num_samples": 10}).run_identity() != base.run_identity()
    assert with_(**{"retrain.warm_start": True}).run_identity() != base.run_identity()
    for same in (
        {"tracking.experiment": "elsewhere"},
        {"retrain.rule": "interval"},
        {"retrain.min_improvement": 3},
        {"compute.dask_address": "tcp://10.0.0.1:8786"},
        {"train.resume": False},
        {"compress.max_fid_increase": 9},
    ):
        assert with_(**same).run_identity() == base.run_identity(), same


def test_webhook_url_is_checked_and_never_shown_whole() -> None:
    url = "https://hooks.example.com/services/T0/B0/TOKEN123?x=1"
    cfg = load_config(None, [f"retrain.notify_url={url}"])
    assert cfg.flat()["retrain.notify_url"] == "https://hooks.example.com/***"
    assert cfg.retrain.notify_url == url  # the real one is only used to send
    assert "TOKEN123" not in dump_config(cfg.redacted())
    assert (
        load_config(None, ["retrain.notify_url=env:MY_HOOK"]).flat()["retrain.notify_url"]
        == "env:MY_HOOK"
    )
    with pytest.raises(ConfigError, match=r"retrain.notify_url: .*http\(s\):// URL or env:NAME"):
        load_config(None, ["retrain.notify_url=hooks.example.com/services/TOKEN123"])
    with pytest.raises(ConfigError) as bad:
        load_config(None, ["retrain.notify_url=hooks.example.com/services/TOKEN123"])
    assert "TOKEN123" not in str(bad.value)
    with pytest.raises(ConfigError, match="retrain.rule"):
        load_config(None, ["retrain.rule=vibes"])
    with pytest.raises(ConfigError, match="retrain.notify_on"):
        load_config(None, ["retrain.notify_on=[sometimes]"])
