"""The halving benchmark's floor: how often a pick made without a seed's own full-budget grid
finds that seed's best, from the other seeds' grids."""

from __future__ import annotations

import pytest

from benchmarks.halving_bench import hindsight


def test_a_configuration_best_on_every_seed_is_found_from_the_other_seeds() -> None:
    grids = {s: {"0.001": -20.0 + s, "0.01": -25.0 + s, "0.1": -40.0} for s in range(4)}
    hits, ((first, second), mean, std) = hindsight(grids)
    assert hits == 4 and (first, second) == ("0.001", "0.01")
    assert mean == pytest.approx(5.0) and std == pytest.approx(0.0)


def test_a_best_that_flips_with_the_seed_is_never_found_by_hindsight() -> None:
    # two near-equal configurations whose order flips with the seed: the other seeds' mean
    # favours the one this seed ranks second, so no seed is hit
    grids = {0: {"a": -20.0, "b": -21.0}, 1: {"a": -21.0, "b": -20.0}}
    hits, ((_, _), mean, std) = hindsight(grids)
    assert hits == 0
    assert abs(mean) < std


def test_one_seed_has_no_floor() -> None:
    assert hindsight({0: {"a": -1.0, "b": -2.0}}) == (None, None)
