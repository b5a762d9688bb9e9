"""The nightly retrain's promotion rule and the `retrain` config section."""

from __future__ import annotations

import math

import pytest

from genpar_models.config import ConfigError, PipelineConfig, RetrainConfig, load_config
from genpar_models.eval.promotion import challenger_config, decide, improvement


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
