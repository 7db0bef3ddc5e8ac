"""server/deadline.py: a lazy DeadlineTimer keeps its wake-up when the deadline moves later or
goes, wakes once early, and is re-armed by its owner at the real deadline."""

from __future__ import annotations

import asyncio

from sipbridge.server.deadline import DeadlineTimer
from tests.harness import eventually


async def test_lazy_timer_keeps_its_wake_up_and_the_owner_rearms_at_the_real_deadline() -> None:
    loop = asyncio.get_running_loop()
    deadline: list[float | None] = [None]
    wakes: list[float] = []

    def fire() -> None:  # the owner: handles what is due (nothing, when early), re-arms
        now = loop.time()
        wakes.append(now)
        if deadline[0] is not None and deadline[0] <= now:
            deadline[0] = None
        timer.arm(deadline[0])

    timer = DeadlineTimer(loop.time, fire, lazy=True)
    first = loop.time() + 0.05
    deadline[0] = first
    timer.arm(first)
    handle = timer._handle
    assert handle is not None
    deadline[0] = first + 0.1  # later: the wake-up armed stays
    timer.arm(deadline[0])
    assert timer._handle is handle
    deadline[0] = None  # gone: it stays too
    timer.arm(None)
    assert timer._handle is handle
    later = loop.time() + 0.15
    deadline[0] = later
    timer.arm(later)
    assert timer._handle is handle
    await eventually(lambda: len(wakes) >= 1, "the early wake-up", timeout=2)
    assert wakes[0] >= first - 0.01 and deadline[0] == later  # early: nothing was due
    await eventually(lambda: len(wakes) >= 2, "the wake-up at the deadline", timeout=2)
    assert wakes[1] >= later - 0.01 and deadline[0] is None  # then at the real deadline
    assert timer._handle is None


async def test_lazy_timer_moves_to_an_earlier_deadline_and_an_eager_one_always_moves() -> None:
    loop = asyncio.get_running_loop()
    lazy = DeadlineTimer(loop.time, lambda: None, lazy=True)
    lazy.arm(loop.time() + 10)
    far = lazy._handle
    lazy.arm(loop.time() + 5)
    assert lazy._handle is not far and far is not None and far.cancelled()
    eager = DeadlineTimer(loop.time, lambda: None)
    eager.arm(loop.time() + 5)
    near = eager._handle
    eager.arm(loop.time() + 10)
    assert eager._handle is not near and near is not None and near.cancelled()
    eager.arm(None)
    assert eager._handle is None
    lazy.cancel()
