"""Lambda schedules for loss coefficients, with XLM's `'0:1,1000:0.5'` syntax (reference §A4.5)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass


class ScheduleSyntaxError(ValueError):
    """A lambda schedule string that does not follow `VALUE` or `STEP:VALUE,STEP:VALUE,...`."""


@dataclass(frozen=True)
class LambdaSchedule:
    """A piecewise-linear coefficient over optimizer steps.

    `points` are `(step, value)` pairs with strictly increasing steps. Before the first point the
    first value holds, after the last point the last value holds, in between values are linearly
    interpolated: exactly XLM's `get_lambda_value`.
    """

    points: tuple[tuple[int, float], ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise ScheduleSyntaxError("a lambda schedule needs at least one point")
        steps = [s for s, _ in self.points]
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ScheduleSyntaxError(f"lambda schedule steps must strictly increase, got {steps}")

    @classmethod
    def parse(cls, spec: str | float | int) -> LambdaSchedule:
        """Parse `3`, `"0.5"` (constant) or `"0:1,1000:0.5"` (points); raise `ScheduleSyntaxError`."""
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls(((0, float(spec)),))
        text = str(spec).strip()
        if ":" not in text:
            return cls(((0, _parse_float(text, text)),))
        points = []
        for item in text.split(","):
            step, sep, value = item.partition(":")
            if not sep or not step.strip().isdigit():
                raise ScheduleSyntaxError(f"bad lambda schedule {text!r}: item {item!r} is not STEP:VALUE")
            points.append((int(step), _parse_float(value, text)))
        return cls(tuple(points))

    def __call__(self, step: int) -> float:
        """Return the coefficient at optimizer step `step`."""
        steps = [s for s, _ in self.points]
        i = bisect.bisect_right(steps, step)
        if i == 0:
            return self.points[0][1]
        if i == len(steps):
            return self.points[-1][1]
        (s0, v0), (s1, v1) = self.points[i - 1], self.points[i]
        return v0 + (v1 - v0) * (step - s0) / (s1 - s0)


def _parse_float(value: str, whole: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ScheduleSyntaxError(f"bad lambda schedule {whole!r}: {value!r} is not a number") from None
