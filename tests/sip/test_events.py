"""The layers' event queue (`sip/events.py`): first in, first out, however appends and takes
interleave, and emptied once everything was taken."""

from __future__ import annotations

from sipbridge.sip.events import EventQueue


def test_events_come_out_in_order_of_appending_however_interleaved() -> None:
    queue: EventQueue[int] = EventQueue()
    assert queue.take() is None and len(queue) == 0
    out = []
    for n in range(10):
        queue.append(2 * n)
        queue.append(2 * n + 1)
        taken = queue.take()
        assert taken is not None
        out.append(taken)
    assert len(queue) == 10
    while (event := queue.take()) is not None:
        out.append(event)
    assert out == list(range(20))
    assert len(queue) == 0 and queue.take() is None


def test_a_queue_taken_to_the_end_holds_nothing_more() -> None:
    queue: EventQueue[str] = EventQueue()
    for _ in range(3):
        queue.append("a")
        queue.append("b")
        assert (queue.take(), queue.take(), queue.take()) == ("a", "b", None)
        assert queue._items == [] and queue._taken == 0  # (the list does not grow)
