"""Lambda schedule parsing and interpolation (XLM §A4.5)."""

from __future__ import annotations

import pytest

from xlmtrain.objectives.schedule import LambdaSchedule, ScheduleSyntaxError


def test_constant() -> None:
    assert LambdaSchedule.parse("3")(0) == 3.0
    assert LambdaSchedule.parse(0.5)(10**6) == 0.5


def test_points_interpolate_and_hold() -> None:
    s = LambdaSchedule.parse("0:1,1000:0.5")
    assert [s(0), s(500), s(1000), s(5000)] == [1.0, 0.75, 0.5, 0.5]
    ae = LambdaSchedule.parse("0:1,100000:0.1,300000:0")
    assert ae(200000) == pytest.approx(0.05)
    assert ae(300001) == 0.0
    late = LambdaSchedule.parse("100:0,200:1")
    assert late(0) == 0.0 and late(150) == 0.5


@pytest.mark.parametrize("bad", ["", "a", "0:1,x:2", "0:1,1000", "10:1,5:2", "0:1,0:2", "-1:1"])
def test_bad_syntax_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ScheduleSyntaxError, match="lambda schedule"):
        LambdaSchedule.parse(bad)
