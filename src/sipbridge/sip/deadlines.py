"""The earliest of many deadlines: a heap with lazy deletion, shared by the endpoint (its
transactions) and the user agent (its sessions).

Each owner says its own deadline (`get_timer()`); the heap keeps one entry per time an owner was
scheduled and trusts only those still equal to the owner's deadline, so moving or clearing a
deadline costs nothing here: stale entries are dropped when they reach the top.

Most deadlines come in the order of their times: every transaction lingers the same 32 s after
its final response (RFC 3261 Timers J, L), every answered call's 2xx is first resent after the
same T1. A deadline at or after the last one scheduled in order joins a queue instead of the
heap, in and out in constant time; only the others (a retransmission due before the lingers
scheduled already) go to the heap, which thus stays small. At thousands of calls a second the
heap held every linger of the last 32 s, hundreds of thousands of entries, and each one that
expired was taken out past twenty levels of them (issue 18). Entries leave in the order of
(deadline, scheduling): the queue's and the heap's merged, as one heap would give them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class HasDeadline(Protocol):
    def get_timer(self) -> float | None: ...


T = TypeVar("T", bound=HasDeadline)

# The queue's taken entries are let go (their slots emptied at once, the list cut) once this
# many, and at least half of it.
_QUEUE_CUT = 1024


class DeadlineHeap(Generic[T]):
    """The earliest of the deadlines of owners of type T (module docstring). A heap of one kind
    of owner says how to ask one for its deadline (`deadline_of`) with its type known: compiled,
    that is a direct call, where `get_timer` of an owner of any type is a method looked up by
    name each time (ten a call of bench/sip.py, issue 18)."""

    __slots__ = ("_entries", "_head", "_queue", "_seq")

    def __init__(self) -> None:
        self._entries: list[tuple[float, int, T]] = []
        # the deadlines scheduled in order, from `_head` on (before it: taken, emptied)
        self._queue: list[tuple[float, int, T] | None] = []
        self._head = 0
        self._seq = 0  # ties in time pop in the order they were scheduled

    def deadline_of(self, owner: T) -> float | None:
        """The owner's deadline; heaps of one kind of owner override it (see the class)."""
        return owner.get_timer()

    def __len__(self) -> int:
        return len(self._entries) + len(self._queue) - self._head

    def schedule(self, owner: T) -> None:
        """`owner`'s deadline may have changed: keep its current one (if any)."""
        deadline = self.deadline_of(owner)
        if deadline is None:
            return
        seq = self._seq
        self._seq = seq + 1
        entry = (deadline, seq, owner)
        queue = self._queue
        last = queue[-1] if len(queue) > self._head else None
        if last is None or last[0] <= deadline:
            queue.append(entry)
        else:
            heapq.heappush(self._entries, entry)

    def _first_queued(self) -> tuple[float, int, T] | None:
        queue = self._queue
        return queue[self._head] if self._head < len(queue) else None

    def _take_queued(self) -> None:
        """The queue's first entry is taken."""
        queue = self._queue
        head = self._head
        queue[head] = None
        head += 1
        if head == len(queue):
            queue.clear()
            head = 0
        elif head >= _QUEUE_CUT and 2 * head >= len(queue):
            del queue[:head]
            head = 0
        self._head = head

    def earliest(self) -> float | None:
        """The earliest deadline still current, dropping stale entries on the way."""
        entries = self._entries
        while True:
            top = entries[0] if entries else None
            first = self._first_queued()
            if first is not None and (top is None or _before(first, top)):
                deadline, _, owner = first
                if self.deadline_of(owner) == deadline:
                    return deadline
                self._take_queued()
            elif top is not None:
                deadline, _, owner = top
                if self.deadline_of(owner) == deadline:
                    return deadline
                heapq.heappop(entries)
            else:
                return None

    def due(self, now: float) -> Iterator[T]:
        """The owners whose current deadline is `now` or earlier, each taken off the heap
        before it is yielded (handling one may schedule it, or others, again)."""
        entries = self._entries
        while True:
            top = entries[0] if entries else None
            first = self._first_queued()
            if first is not None and first[0] <= now and (top is None or _before(first, top)):
                self._take_queued()
                _, _, owner = first
            elif top is not None and top[0] <= now:
                _, _, owner = heapq.heappop(entries)
            else:
                return
            deadline = self.deadline_of(owner)
            if deadline is not None and deadline <= now:
                yield owner


def _before(entry: tuple[float, int, T], other: tuple[float, int, T]) -> bool:
    """Whether `entry` leaves before `other`: by deadline, then by scheduling."""
    return entry[0] < other[0] or (entry[0] == other[0] and entry[1] < other[1])
