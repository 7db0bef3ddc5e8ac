"""sip/deadlines.py: the earliest current deadline among many owners that move their own."""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass

from sipbridge.sip.deadlines import DeadlineHeap


@dataclass(eq=False)
class Owner:
    deadline: float | None

    def get_timer(self) -> float | None:
        return self.deadline


def test_moved_and_cleared_deadlines_are_not_reported() -> None:
    heap: DeadlineHeap[Owner] = DeadlineHeap()
    a, b, c = Owner(5.0), Owner(3.0), Owner(None)
    for owner in (a, b, c):
        heap.schedule(owner)
    assert len(heap) == 2  # nothing to keep for an owner without a deadline
    assert heap.earliest() == 3.0
    b.deadline = 9.0  # moved without telling: its old entry is stale
    assert heap.earliest() == 5.0
    heap.schedule(b)
    a.deadline = None
    assert heap.earliest() == 9.0
    assert list(heap.due(8.0)) == []
    assert list(heap.due(9.0)) == [b]
    assert heap.earliest() is None and len(heap) == 0


def test_due_owners_in_deadline_then_scheduling_order_and_rescheduled_ones_too() -> None:
    heap: DeadlineHeap[Owner] = DeadlineHeap()
    first, second, later = Owner(1.0), Owner(1.0), Owner(2.0)
    for owner in (first, second, later):
        heap.schedule(owner)
    seen = []
    for owner in heap.due(2.0):
        seen.append(owner)
        if owner is first and owner.deadline == 1.0:  # handled, it sets one still due
            owner.deadline = 1.5
            heap.schedule(owner)
        else:
            owner.deadline = None
    assert seen == [first, second, first, later]


def test_lingers_of_two_lengths_interleaved_stay_out_of_the_heap() -> None:
    # An endpoint that became crowded: its transactions linger 32 s, then T4 (5 s) from some
    # moment on, while the 32 s ones are still there; and a 0.5 s retransmission now and then.
    # Each delay keeps a lane of its own: the heap holds nothing, and what is due comes out in
    # deadline order.
    heap: DeadlineHeap[Owner] = DeadlineHeap()
    owners = []
    now = 0.0
    for step in range(3000):
        now += 0.01
        delay = 32.0 if step < 1000 else (0.5 if step % 10 == 0 else 5.0)
        owner = Owner(now + delay)
        owners.append(owner)
        heap.schedule(owner)
    assert heap.heaped() == 0 and len(heap) == 3000
    out = [owner.deadline for owner in heap.due(now + 40.0)]
    assert out == sorted(o.deadline for o in owners)


class OneHeap:
    """The reference: every entry in one heap, as the heap alone kept them before the queue of
    deadlines scheduled in order (sip/deadlines.py)."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, int, Owner]] = []
        self.seq = 0

    def schedule(self, owner: Owner) -> None:
        if owner.deadline is not None:
            heapq.heappush(self.entries, (owner.deadline, self.seq, owner))
            self.seq += 1

    def earliest(self) -> float | None:
        while self.entries and self.entries[0][2].deadline != self.entries[0][0]:
            heapq.heappop(self.entries)
        return self.entries[0][0] if self.entries else None

    def due(self, now: float) -> Iterator[Owner]:
        while self.entries and self.entries[0][0] <= now:
            owner = heapq.heappop(self.entries)[2]
            if owner.deadline is not None and owner.deadline <= now:
                yield owner


def handle(
    due: Iterator[Owner],
    heap: DeadlineHeap[Owner] | OneHeap,
    side: int,
    *,
    rng: random.Random,
    pairs: list[tuple[Owner, Owner]],
    now: float,
) -> list[int]:
    """Each owner due handled: its deadline cleared, or (one in five) set again to `now` and
    scheduled from within; which pair each was, in order."""
    seen = []
    for owner in due:
        seen.append(next(i for i, pair in enumerate(pairs) if pair[side] is owner))
        owner.deadline = None
        if rng.random() < 0.2:
            owner.deadline = now
            heap.schedule(owner)
    return seen


def test_the_queue_of_deadlines_in_order_and_the_heap_give_what_one_heap_gives() -> None:
    # Mostly in order (a transaction's linger after another's), some earlier (a retransmission
    # due before them), moved, cleared, equal; handled as they fall due, some scheduled again
    # from within: the same owners in the same order as from one heap, the same earliest.
    rng = random.Random(17)
    for _ in range(200):
        heap: DeadlineHeap[Owner] = DeadlineHeap()
        model = OneHeap()
        pairs = [(Owner(None), Owner(None)) for _ in range(12)]
        now = 0.0
        for _ in range(400):
            mine, theirs = rng.choice(pairs)
            what = rng.random()
            if what < 0.6:
                linger = 32.0 if rng.random() < 0.5 else 5.0  # (a crowded endpoint's: T4)
                at = now + (linger if rng.random() < 0.7 else rng.choice([0.5, 1.0, 4.0, 32.0]))
                mine.deadline = theirs.deadline = round(at, 1)
                heap.schedule(mine)
                model.schedule(theirs)
            elif what < 0.7:
                mine.deadline = theirs.deadline = None  # cleared without telling
            elif what < 0.8:
                assert heap.earliest() == model.earliest()
            else:
                now += rng.choice([0.5, 1.0, 8.0, 40.0])
                seed = rng.random()
                seen = handle(heap.due(now), heap, 0, rng=random.Random(seed), pairs=pairs, now=now)
                expected = handle(
                    model.due(now), model, 1, rng=random.Random(seed), pairs=pairs, now=now
                )
                assert seen == expected
            assert len(heap) == len(model.entries)
        assert heap.earliest() == model.earliest()
