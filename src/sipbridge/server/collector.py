"""The cyclic garbage collector's settings for a serving process (`sipbridge serve`, and the
bare SIP user agent `bench/sip.py` measures).

What a call allocates (its SIP messages and transactions, kept for their 32 s linger by RFC 3261
s17, its state, its RTP leg, its participant) is freed by reference counting: no call leaves a
reference cycle behind (issue 18, checked with `DEBUG_SAVEALL`). Yet CPython's collector walks
every object it tracks that survived a collection again in its middle and old generations: at
300 calls/s into one room (bench/inbound.py) a middle-generation collection every few seconds
held the event loop 70-170 ms, a full one 100-300 ms, and the young ones grew to 5-25 ms as the
middle generation filled - none of them found anything to free, and each of them delayed every
datagram waiting behind it (INVITE->100 p99).

So what survives a collection is frozen (`gc.freeze`: out of every later collection; a frozen
object whose last reference goes is still freed at once), as everything loaded before serving
is: each collection walks only what was allocated since the one before, a pause that stays in
proportion to the young generation, never to the calls up. The young generation is collected
every 5,000 net container allocations (CPython: 700; a call allocates about that many), which
keeps those pauses to a few ms on the 2-core machine.

A cycle that outlives one young collection is not lost, only freed later: a full collection
over everything (`Collector.sweep`) runs whenever the memory in Python's small blocks
(`sys.getallocatedblocks`: the objects, and the small buffers they hold) has doubled since the
last one, and is more than SWEEP_FLOOR blocks (5 million, about a million frozen objects; the
bare UAS of bench/sip.py starts at 100,000 and holds 2.8 million at a steady 6,000 calls/s).
Garbage in cycles can thus at most double that memory before it is freed, the bound CPython's
own full collections keep with a factor of 1.25 on the objects they track.

The blocks are looked at every SWEEP_CHECK_EVERY collections: a look adds up a counter per
pool of 16 KB (under a millisecond for a few million blocks). What the collector did before,
counting the frozen objects (`gc.get_freeze_count`), walks them all, one cache miss each: it
kept an estimate of them to count only when the estimate passed the limit, but the estimate
cannot see frozen objects freed, so with calls lingering in a steady state it passed the limit
every few seconds - 85-93 ms a walk of 570,000 objects at 6,000 calls/s, the only pauses over
50 ms left there (issue 18).

The young generation is also collected every YOUNG_EVERY (50 ms) from the loop, whatever its
count says. CPython counts tracked allocations minus deallocations, of any generation: a frozen
object freed takes one off the young generation's count. Once calls linger in a steady state
(their transactions, issue 18), about as many frozen objects are freed as new ones survive, so
the count hardly grows while the young generation does: bench/sip.py's UAS at a steady 6,000
calls/s collected it every 60 ms on average but in pauses of up to 345 ms (p99 96 ms), which
overflowed the SIP reader's queue (2,172 datagrams dropped in 40 s, each one a retransmission
later). Collected every 50 ms as well: p99 17 ms, the longest 111 ms, none dropped, and 20%
less time in the collector (each survivor is walked once either way; the long pauses walked
more of the frozen objects' references, cold in the cache by then).
"""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any

YOUNG_THRESHOLD = 5_000
SWEEP_GROWTH = 2.0  # a full collection when the small blocks doubled since the last one
SWEEP_FLOOR = 5_000_000  # ... and are at least this many (module docstring)
SWEEP_CHECK_EVERY = 16  # collections between two looks at the blocks
YOUNG_EVERY = 0.05  # seconds between two collections of the young generation from the loop


class Collector:
    """Freezes the survivors of every collection; sweeps (full collection) on growth."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sweeps = 0  # full collections run
        self.swept = 0  # objects they freed
        self._limit = max(SWEEP_FLOOR, int(sys.getallocatedblocks() * SWEEP_GROWTH))
        self._sweep_due = False
        self._collections = 0
        self._young: asyncio.TimerHandle | None = None  # the next `_collect_young`

    def start(self) -> None:
        """Collect the young generation every YOUNG_EVERY from now on (module docstring)."""
        if self._young is None and not self.loop.is_closed():
            self._young = self.loop.call_later(YOUNG_EVERY, self._collect_young)

    def _collect_young(self) -> None:
        gc.collect(0)  # (its survivors frozen by `on_collection`)
        self._young = self.loop.call_later(YOUNG_EVERY, self._collect_young)

    def on_collection(self, phase: str, info: dict[str, Any]) -> None:
        """`gc.callbacks`: after a collection, its survivors out of every later one. (It may
        run in any thread that allocated: the loop is told thread-safely.)"""
        if phase != "stop":
            return
        gc.freeze()
        self._collections += 1
        if self._sweep_due or self._collections % SWEEP_CHECK_EVERY:
            return
        if sys.getallocatedblocks() <= self._limit or self.loop.is_closed():
            return
        self._sweep_due = True
        self.loop.call_soon_threadsafe(self.sweep)

    def sweep(self) -> int:
        """A full collection over everything frozen since startup; the objects it freed."""
        gc.unfreeze()
        freed = gc.collect()  # (its survivors frozen again by `on_collection`)
        self.sweeps += 1
        self.swept += freed
        self._limit = max(SWEEP_FLOOR, int(sys.getallocatedblocks() * SWEEP_GROWTH))
        self._sweep_due = False  # (not before: the collection above must not ask again)
        return freed

    def remove(self) -> None:
        """Its callback out of `gc.callbacks`, its timer cancelled (the server stopped; tests)."""
        if self._young is not None:
            self._young.cancel()
            self._young = None
        if self.on_collection in gc.callbacks:
            gc.callbacks.remove(self.on_collection)


def tune_collector() -> Collector:
    """Freeze what is loaded now, collect the young generation less often by count and every
    YOUNG_EVERY by time, and freeze what survives each collection from then on (called in the
    serving event loop)."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    collector = Collector(asyncio.get_running_loop())
    gc.callbacks.append(collector.on_collection)
    collector.start()
    return collector
