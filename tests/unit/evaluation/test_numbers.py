"""Numbers for people: no scientific notation, changes absolute and in percent, round axis ticks."""

from __future__ import annotations

import pytest

from workers.evaluation.numbers import delta, human, nice_step, nice_ticks, percent_change, signed


def test_human_never_writes_scientific_notation() -> None:
    assert human(24650.0) == "24,650"
    assert human(2.465e4) == "24,650" and "e+" not in human(1.23e9)
    assert human(246.54) == "246.5"
    assert human(9.613) == "9.61"
    assert human(0.6) == "0.600"
    assert human(20) == "20" and human(20.0) == "20"
    assert human(0.000012) == "0.000"
    assert human(None) == "–" and human(float("nan")) == "–"
    assert human(0.5, 3) == "0.500" and human(1234.5678, 1) == "1,234.6"


def test_delta_is_absolute_and_percent_of_the_baseline() -> None:
    assert delta(0.9, 0.95, 3) == "+0.050 (+5.6%)"
    assert delta(9600.0, 24650.0, 0) == "+15,050 (+156.8%)"
    assert delta(100.0, 80.0, 0) == "-20 (-20.0%)"
    assert delta(0.0, 0.2, 3) == "+0.200"  # no percent of 0
    assert delta(5.0, 5.0, 0) == "±0"
    assert delta(None, 1.0) == ""
    assert percent_change(200.0, 300.0) == 50.0 and percent_change(0.0, 1.0) is None
    assert signed(-1200.0) == "-1,200"


def test_ticks_fall_on_round_values() -> None:
    assert nice_ticks(23_400) == [0, 5000, 10000, 15000, 20000, 25000]
    assert nice_ticks(1.0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(7, 5) == [0, 2, 4, 6, 8]
    assert nice_ticks(0) == [0.0, 1.0]
    assert nice_step(9.0, 3) == 5 and nice_step(0.33, 5) == pytest.approx(0.1)
    for hi in (3.3, 47.0, 1234.0, 98_765.0):
        ticks = nice_ticks(hi)
        step = ticks[1] - ticks[0]
        assert ticks[-1] >= hi and 3 <= len(ticks) <= 11
        assert str(step).rstrip("0").rstrip(".")[-1] in "125"  # 1, 2 or 5 times a power of ten
