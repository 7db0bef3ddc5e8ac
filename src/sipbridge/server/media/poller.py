"""Media sockets read in batches: one wake-up of the event loop for many datagrams.

With a reader per socket the loop wakes once per datagram: a call's socket gets one every 20 ms,
so at a few hundred calls every datagram is its own wake-up - the kernel's context switch, the
loop's turn (timers, ready handles, the poll) - and that, not the datagram, was most of what a
relayed packet cost (measured: 22-27 us a relayed packet at 50 relayed calls against 8-9 us for
its two system calls and the Python that handles it).

Here every media socket is in one epoll set of our own, and the loop watches only that set's
descriptor. When it becomes readable the loop stops watching it, reads every socket that has
something (level-triggered, so nothing is left behind), and looks again `BATCH_S` later, when
the datagrams of that millisecond have gathered: a busy server wakes about once a millisecond
whatever its number of calls, each wake-up reading a few dozen sockets. A look that finds
nothing ready goes back to watching the set, so an idle server does not poll, and the first
datagram after a pause is read at once. The price is the wait: at most `BATCH_S` (plus the
loop's timer resolution) of added latency on a busy server. A socket flooded faster than that
(its drain stopped at its limit) gets the next look at once, in the loop's next turn, as a
reader of its own would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
from typing import Protocol

log = logging.getLogger(__name__)

BATCH_S = 0.001  # how long datagrams gather between two reads of a busy set
MAX_EVENTS = 4096  # sockets read per look (the rest stay ready for the next one)


class Readable(Protocol):
    def _readable(self) -> bool:
        """Read what is there; True when it stopped at its limit with more perhaps waiting."""
        ...


class MediaPoller:
    """The media sockets of one event loop, read in batches (the module doc)."""

    def __init__(self, batch_s: float = BATCH_S) -> None:
        self.batch_s = batch_s
        self._epoll = select.epoll()
        self._sockets: dict[int, Readable] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watching = False  # the loop watches the set (idle), else a look is scheduled
        self._timer: asyncio.TimerHandle | None = None
        self.wakeups = 0  # looks that found something to read
        self.reads = 0  # sockets read in them

    def add(self, fd: int, socket: Readable, loop: asyncio.AbstractEventLoop) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        self._sockets[fd] = socket
        if self._loop is None:
            self._loop = loop
        if not self._watching and self._timer is None:
            self._watch()

    def discard(self, fd: int) -> None:
        if self._sockets.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def _watch(self) -> None:
        assert self._loop is not None
        self._loop.add_reader(self._epoll.fileno(), self._ready)
        self._watching = True

    def _ready(self) -> None:
        """The set became readable: stop watching it and read what is there."""
        assert self._loop is not None
        self._loop.remove_reader(self._epoll.fileno())
        self._watching = False
        self._look()

    def _look(self) -> None:
        self._timer = None
        events = self._epoll.poll(0, MAX_EVENTS)
        if not events:
            if self._sockets:
                self._watch()
            return
        self.wakeups += 1
        self.reads += len(events)
        sockets = self._sockets
        flooded = False
        for fd, _ in events:
            socket = sockets.get(fd)
            if socket is not None:
                try:
                    flooded |= socket._readable()
                except Exception:
                    # As the loop does for a reader's callback: logged, the others still read.
                    log.exception("reading media socket %d failed", fd)
        assert self._loop is not None
        if flooded:  # a socket fills faster than a look a millisecond drains: look again now
            self._timer = self._loop.call_at(self._loop.time(), self._look)
        else:
            self._timer = self._loop.call_later(self.batch_s, self._look)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watching and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._epoll.fileno())
            self._watching = False
        self._sockets.clear()
        self._epoll.close()
