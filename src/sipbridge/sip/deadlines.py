"""The earliest of many deadlines: a heap with lazy deletion, shared by the endpoint (its
transactions) and the user agent (its sessions).

Each owner says its own deadline (`get_timer()`); the heap keeps one entry per time an owner was
scheduled and trusts only those still equal to the owner's deadline, so moving or clearing a
deadline costs nothing here: stale entries are dropped when they reach the top.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class HasDeadline(Protocol):
    def get_timer(self) -> float | None: ...


T = TypeVar("T", bound=HasDeadline)


class DeadlineHeap(Generic[T]):
    __slots__ = ("_entries", "_seq")

    def __init__(self) -> None:
        self._entries: list[tuple[float, int, T]] = []
        self._seq = itertools.count()  # ties in time pop in the order they were scheduled

    def __len__(self) -> int:
        return len(self._entries)

    def schedule(self, owner: T) -> None:
        """`owner`'s deadline may have changed: keep its current one (if any)."""
        deadline = owner.get_timer()
        if deadline is not None:
            heapq.heappush(self._entries, (deadline, next(self._seq), owner))

    def earliest(self) -> float | None:
        """The earliest deadline still current, dropping stale entries on the way."""
        entries = self._entries
        while entries:
            deadline, _, owner = entries[0]
            if owner.get_timer() == deadline:
                return deadline
            heapq.heappop(entries)
        return None

    def due(self, now: float) -> Iterator[T]:
        """The owners whose current deadline is `now` or earlier, each taken off the heap
        before it is yielded (handling one may schedule it, or others, again)."""
        entries = self._entries
        while entries and entries[0][0] <= now:
            _, _, owner = heapq.heappop(entries)
            deadline = owner.get_timer()
            if deadline is not None and deadline <= now:
                yield owner
