"""The offline halving simulation (benchmarks/halving_schedules.py): 9 -> 3 -> 1 with keep 0.34
on full-grid curves, as genpar's own survivors rule decides it."""

from __future__ import annotations

from benchmarks.halving_schedules import schedules, simulate, spend


def _trials(curves: list[dict[int, float]]) -> dict[str, dict]:
    return {f"t{i:03d}-s0": {"lr": str(i), "curve": c} for i, c in enumerate(curves)}


def test_halving_keeps_three_then_one_and_ends_with_the_survivor() -> None:
    # trial 8 leads at the first rung and falls back; trial 0 is best at the end but sixth at
    # the first rung, so halving never sees its finish
    curves = [{500: -10.0 + i, 1500: -5.0 + i, 3000: -1.0 + (i == 7)} for i in range(9)]
    curves[0][3000] = 0.0
    curves[6][1500] = -20.0  # kept at 500 (third), last of the three at 1500
    assert simulate(_trials(curves), (500, 1500)) == "8"


def test_ties_at_a_rung_go_to_the_lower_trial_id() -> None:
    curves = [{250: -1.0, 750: -1.0, 3000: -1.0} for _ in range(9)]
    assert simulate(_trials(curves), (250, 750)) == "0"


def test_a_rung_between_validations_reads_the_nearest_one() -> None:
    curves = [{250: float(i), 500: float(-i), 1000: float(-i), 3000: 0.0} for i in range(9)]
    assert simulate(_trials(curves), (330, 990)) == "6"  # 330 reads 250 (6, 7, 8), 990 reads 1000


def test_spend_and_the_schedules_within_the_budget() -> None:
    assert spend(330, 990) == 6960  # the first benchmark's steps per seed
    assert spend(500, 1500) == 9000
    found = schedules(250)
    assert (750, 1500) in found and (750, 1750) not in found  # 10,500 vs 11,000 > 10,800
    assert all(spend(a, b) <= 0.4 * 9 * 3000 for a, b in found) and len(found) == 20
