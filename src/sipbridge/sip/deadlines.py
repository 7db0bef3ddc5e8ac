"""The earliest of many deadlines: a heap with lazy deletion, shared by the endpoint (its
transactions) and the user agent (its sessions).

Each owner says its own deadline (`get_timer()`); the heap keeps one entry per time an owner was
scheduled and trusts only those still equal to the owner's deadline, so moving or clearing a
deadline costs nothing here: stale entries are dropped when they reach the top.

Most deadlines come in the order of their times: every transaction lingers the same 32 s after
its final response (RFC 3261 Timers J, L), every answered call's 2xx is first resent after the
same T1. A deadline at or after the last one of a lane (a queue of deadlines scheduled in order)
joins that lane, in and out in constant time; only the others go to the heap, which thus stays
small. At thousands of calls a second the heap held every linger of the last 32 s, hundreds of
thousands of entries, and each one that expired was taken out past twenty levels of them (issue
18). There are a few lanes, not one, because a few delays interleave: once the endpoint is
crowded its new transactions linger T4 (5 s), each deadline earlier than the 32 s lingers
scheduled before it, and with one lane all of them went to the heap for 32 s (2% of the bare
UAS's CPU in heap sifts, 3% in comparing their tuples, at a steady 6,000 calls/s). A deadline
joins the lane whose last is the latest not after it (the fullest fit, so that each delay keeps
its own lane), an empty lane, or a new one up to MAX_LANES; the heap takes the rest. Entries
leave in the order of (deadline, scheduling): the lanes' and the heap's merged, as one heap
would give them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from math import inf
from typing import Generic, Protocol, TypeVar


class HasDeadline(Protocol):
    def get_timer(self) -> float | None: ...


T = TypeVar("T", bound=HasDeadline)

# A lane's taken entries are let go (their slots emptied at once, the list cut) once this many,
# and at least half of it.
_QUEUE_CUT = 1024
MAX_LANES = 4


class _Lane(Generic[T]):
    """Deadlines scheduled in order, taken from `head` on (before it: taken, the owner's slot
    emptied). Kept as three lists side by side, not as a list of (deadline, scheduling, owner)
    tuples: a tuple holding an owner is one more object for the cyclic collector to walk and
    freeze, and to unlink from its list, cold, when it goes 32 s later (two a call in the bare
    UAS, issue 18)."""

    __slots__ = ("deadlines", "head", "owners", "seqs")

    def __init__(self) -> None:
        self.deadlines: list[float] = []
        self.seqs: list[int] = []
        self.owners: list[T | None] = []
        self.head = 0

    def __len__(self) -> int:
        return len(self.owners) - self.head

    def add(self, deadline: float, seq: int, owner: T) -> None:
        self.deadlines.append(deadline)
        self.seqs.append(seq)
        self.owners.append(owner)

    def take(self) -> T:
        """The first entry's owner, taken (the lane must not be empty)."""
        owners = self.owners
        head = self.head
        owner = owners[head]
        assert owner is not None
        owners[head] = None
        head += 1
        if head == len(owners):
            owners.clear()
            self.deadlines.clear()
            self.seqs.clear()
            head = 0
        elif head >= _QUEUE_CUT and 2 * head >= len(owners):
            del owners[:head]
            del self.deadlines[:head]
            del self.seqs[:head]
            head = 0
        self.head = head
        return owner


class DeadlineHeap(Generic[T]):
    """The earliest of the deadlines of owners of type T (module docstring). A heap of one kind
    of owner says how to ask one for its deadline (`deadline_of`) with its type known: compiled,
    that is a direct call, where `get_timer` of an owner of any type is a method looked up by
    name each time (ten a call of bench/sip.py, issue 18)."""

    __slots__ = ("_entries", "_lanes", "_seq")

    def __init__(self) -> None:
        self._entries: list[tuple[float, int, T]] = []
        self._lanes: list[_Lane[T]] = []
        self._seq = 0  # ties in time pop in the order they were scheduled

    def deadline_of(self, owner: T) -> float | None:
        """The owner's deadline; heaps of one kind of owner override it (see the class)."""
        return owner.get_timer()

    def __len__(self) -> int:
        return len(self._entries) + sum(len(lane) for lane in self._lanes)

    def heaped(self) -> int:
        """How many entries are in the heap, not in a lane."""
        return len(self._entries)

    def schedule(self, owner: T) -> None:
        """`owner`'s deadline may have changed: keep its current one (if any)."""
        deadline = self.deadline_of(owner)
        if deadline is None:
            return
        seq = self._seq
        self._seq = seq + 1
        best: _Lane[T] | None = None
        best_last = -inf
        empty: _Lane[T] | None = None
        for lane in self._lanes:
            if lane.head == len(lane.owners):
                if empty is None:
                    empty = lane
                continue
            last = lane.deadlines[-1]
            if best_last < last <= deadline:
                best = lane
                best_last = last
        if best is None:
            best = empty
        if best is None and len(self._lanes) < MAX_LANES:
            best = _Lane()
            self._lanes.append(best)
        if best is not None:
            best.add(deadline, seq, owner)
        else:
            heapq.heappush(self._entries, (deadline, seq, owner))

    def _first_lane(self) -> _Lane[T] | None:
        """The lane whose first entry leaves first, by (deadline, scheduling); None: all empty."""
        found: _Lane[T] | None = None
        found_at = inf
        found_seq = 0
        for lane in self._lanes:
            head = lane.head
            if head == len(lane.owners):
                continue
            at = lane.deadlines[head]
            if found is None or at < found_at or (at == found_at and lane.seqs[head] < found_seq):
                found = lane
                found_at = at
                found_seq = lane.seqs[head]
        return found

    def _next(self) -> tuple[_Lane[T] | None, float]:
        """Where the first entry to leave is, a lane or (None) the heap, and its deadline (inf:
        there is none)."""
        entries = self._entries
        lane = self._first_lane()
        if lane is not None:
            at = lane.deadlines[lane.head]
            if entries:
                top = entries[0]
                if top[0] < at or (top[0] == at and top[1] < lane.seqs[lane.head]):
                    return None, top[0]
            return lane, at
        if entries:
            return None, entries[0][0]
        return None, inf

    def earliest(self) -> float | None:
        """The earliest deadline still current, dropping stale entries on the way."""
        entries = self._entries
        while True:
            lane, at = self._next()
            if at == inf:
                return None
            if lane is not None:
                owner = lane.owners[lane.head]
                assert owner is not None
                if self.deadline_of(owner) == at:
                    return at
                lane.take()
            else:
                if self.deadline_of(entries[0][2]) == at:
                    return at
                heapq.heappop(entries)

    def due(self, now: float) -> Iterator[T]:
        """The owners whose current deadline is `now` or earlier, each taken off the heap
        before it is yielded (handling one may schedule it, or others, again)."""
        entries = self._entries
        while True:
            lane, at = self._next()
            if at > now:
                return
            owner = lane.take() if lane is not None else heapq.heappop(entries)[2]
            deadline = self.deadline_of(owner)
            if deadline is not None and deadline <= now:
                yield owner
