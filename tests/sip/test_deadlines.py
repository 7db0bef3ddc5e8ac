"""sip/deadlines.py: the earliest current deadline among many owners that move their own."""

from __future__ import annotations

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
