"""Benchmark result records: a target is met, missed, or missed below a measured floor."""

from __future__ import annotations

from benchmarks.common import Result


def _row(ratio: float, floor: tuple[float, str] | None = None, kind: str = "min") -> Result:
    return Result("s", "n", 1.0, "x/s", "base", ratio, 1.7, kind, floor=floor)


def test_a_target_is_met_or_missed_by_its_ratio() -> None:
    assert _row(1.8).status == "met"
    assert _row(1.36).status == "MISSED"
    assert _row(0.9, kind="max").status == "met"
    assert _row(2.0, kind="max").status == "MISSED"


def test_a_floor_that_misses_the_target_too_is_named_but_never_makes_it_met() -> None:
    status = _row(1.36, floor=(1.52, "the script in 2 processes")).status
    assert status.startswith("MISSED;") and "1.52x" in status and "script in 2" in status
    # a floor that would pass leaves a plain miss: the implementation, not the machine, fails
    assert _row(1.36, floor=(1.8, "ceiling")).status == "MISSED"
    assert _row(1.8, floor=(1.2, "floor")).status == "met"
