"""The collector settings of a serving process (src/sipbridge/server/collector.py)."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from sipbridge.server import collector as collector_module
from sipbridge.server.collector import YOUNG_THRESHOLD, Collector, tune_collector
from tests.harness import eventually


class Node:
    """A container that can be part of a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    callbacks = list(gc.callbacks)
    try:
        yield
    finally:
        gc.callbacks[:] = callbacks
        gc.set_threshold(*before)
        gc.unfreeze()
        gc.collect()


async def tuned() -> Collector:
    return tune_collector()


def test_startup_objects_frozen_and_the_young_generation_collected_less_often(
    restore_gc: None,
) -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    kept = [object() for _ in range(10)]  # something alive to freeze
    asyncio.run(tuned())
    assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
    assert gc.get_freeze_count() > frozen
    assert kept


def test_survivors_of_a_collection_are_frozen_and_still_freed_by_reference_counting(
    restore_gc: None,
) -> None:
    asyncio.run(tuned())
    frozen = gc.get_freeze_count()
    survivors = [[i] for i in range(1000)]  # young containers, alive
    gc.collect(0)
    assert gc.get_freeze_count() >= frozen + 1000  # out of every later collection
    assert not gc.get_objects(generation=1)  # nothing left for an older collection
    del survivors  # frozen objects still go when their last reference does
    assert gc.get_freeze_count() < frozen + 1000


def test_a_cycle_that_outlived_a_collection_is_freed_by_the_sweep_on_growth(
    restore_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> tuple[int, int, bool]:
        collector = tune_collector()
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle, alive through `a` for now
        gc.collect(0)  # ... so frozen
        gone = asyncio.Event()

        def freed() -> None:
            gone.set()

        weakref.finalize(a, freed)
        del a, b  # garbage now, but frozen: no young collection reaches it
        gc.collect(0)
        assert not gone.is_set()
        # The small blocks grow past the limit (set low here): the loop sweeps.
        collector._limit = sys.getallocatedblocks() + 500
        grown = [[i] for i in range(1000)]
        gc.collect(0)
        await asyncio.wait_for(gone.wait(), 5)
        assert grown
        return collector.sweeps, collector.swept, gone.is_set()

    monkeypatch.setattr(collector_module, "SWEEP_FLOOR", 0)
    monkeypatch.setattr(collector_module, "SWEEP_CHECK_EVERY", 1)
    sweeps, swept, freed = asyncio.run(scenario())
    assert freed and sweeps == 1 and swept >= 2


def test_a_sweep_is_decided_by_the_small_blocks_never_by_walking_the_frozen_objects(
    restore_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting the frozen objects walks them all (85-93 ms for 570,000 of them at a steady
    6,000 calls/s of bench/sip.py, every few seconds): the collector never does, and looks at
    the small blocks (a counter per pool) once every SWEEP_CHECK_EVERY collections."""
    walks = [0]
    looks = [0]
    real_blocks = sys.getallocatedblocks

    def walking() -> int:
        walks[0] += 1
        return 0

    def looking() -> int:
        looks[0] += 1
        return real_blocks()

    async def scenario() -> int:
        monkeypatch.setattr(collector_module.gc, "get_freeze_count", walking)
        monkeypatch.setattr(collector_module.sys, "getallocatedblocks", looking)
        collector = tune_collector()
        collector.remove()  # (only the collections below: none from the timer)
        gc.callbacks.append(collector.on_collection)
        kept: list[list[int]] = []
        for round_ in range(64):  # survivors and garbage, some of it in cycles
            kept.extend([i] for i in range(300))
            for _ in range(100):
                a, b = Node(), Node()
                a.other, b.other = b, a
            if round_ % 3 == 0:
                del kept[:250]  # frozen objects freed by reference counting
            gc.collect(0)
        return collector.sweeps

    monkeypatch.setattr(collector_module, "SWEEP_CHECK_EVERY", 8)
    sweeps = asyncio.run(scenario())
    assert walks[0] == 0
    assert looks[0] == 1 + 64 // 8  # (the first when made)
    assert sweeps == 0  # the default floor, 5 million blocks, not reached


def test_the_young_generation_is_collected_on_a_timer_whatever_its_count(
    restore_gc: None,
) -> None:
    """A steady state of lingering calls frees about as many frozen objects as new ones survive,
    and CPython's young count (allocations minus deallocations, any generation) then hardly
    grows: the loop collects the young generation every YOUNG_EVERY anyway. Here the count's
    threshold is out of reach, so only that timer can freeze the survivors; `remove` stops it."""

    async def scenario() -> tuple[bool, bool]:
        collector = tune_collector()
        gc.set_threshold(1_000_000_000)  # no collection by count
        frozen = gc.get_freeze_count()
        survivors = [[i] for i in range(1000)]
        await eventually(
            lambda: gc.get_freeze_count() >= frozen + 1000, "the timer's collection", timeout=30
        )
        collected = bool(survivors)
        timer = collector._young
        collector.remove()
        return collected, timer is not None and timer.cancelled() and collector._young is None

    collected, stopped = asyncio.run(scenario())
    assert collected and stopped
