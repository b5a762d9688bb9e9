"""Every random stream keeps the seed genpar 0.1 gave it (values computed by that version), so a
seed gives the same weights, noise and samples before and after the layout change."""

from __future__ import annotations

from genpar_models.util import seeding


def test_streams_are_those_of_genpar_0_1() -> None:
    assert seeding.training_noise(0, 0, 1) == 2973576761047142606
    assert seeding.training_noise(7, 1, 123) == 3598652420055165764
    assert seeding.validation_noise(3) == 1900211182803884901
    assert seeding.chunk(0, 0) == 7896617691693857887
    assert seeding.chunk(5, 9) == 3463469359243423475
    assert seeding.evaluation(0) == 7529308171022261468
    assert seeding.evaluation(11) == 7862754606558293267
    assert seeding.floor_subset(4) == 5


def test_streams_are_distinct_and_63_bit() -> None:
    seeds = [seeding.training_noise(0, r, s) for r in range(2) for s in range(1, 200)]
    seeds += [seeding.chunk(0, i) for i in range(200)] + [seeding.evaluation(0)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)
