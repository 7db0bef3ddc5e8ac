"""`round_half_even` (media/timeline.py) is `round` for every float the stream clock can meet:
ties, the floats either side of a tie, integers, negatives, and random values."""

from __future__ import annotations

import math
import random

import pytest

from sipbridge.media.timeline import Timeline, round_half_even


@pytest.mark.parametrize(
    "value",
    [0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 159.5, 160.5, 160.0, -160.0, 1e15 + 0.5],
)
def test_ties_and_integers_as_round(value: float) -> None:
    assert round_half_even(value) == round(value)


def test_next_to_ties_as_round() -> None:
    for whole in range(-50, 50):
        for tie in (whole + 0.5, whole - 0.5):
            for value in (math.nextafter(tie, -math.inf), tie, math.nextafter(tie, math.inf)):
                assert round_half_even(value) == round(value), value


def test_random_values_as_round() -> None:
    rng = random.Random(18)
    for _ in range(20_000):
        value = rng.uniform(-1e6, 1e6) if rng.random() < 0.5 else rng.uniform(-400, 400)
        assert round_half_even(value) == round(value), value


def test_frames_made_follow_the_wall_clock() -> None:
    """The timestamps of frames made 20 ms apart, late and early, as with `round`."""
    line = Timeline(8000, 160, 1000)
    assert line.made(10.0) == (1000, True)
    assert line.made(10.02) == (1160, False)
    assert line.made(10.0500625) == (1160 + 240, False)  # 30.0625 ms late: 240.5 ticks, to 240
    assert line.made(10.051) == (1400 + 160, False)  # early: a frame at least
    assert line.now(10.0710625) == 1560 + 160  # 20.0625 ms: 160.5 ticks, to 160
