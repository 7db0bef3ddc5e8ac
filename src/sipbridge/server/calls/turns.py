"""Work spread over the event loop's turns: one item a turn, in the order it came.

A datagram's handler that has a call's whole setup or aftermath to do holds the loop - the
media clock, other calls' 100s and 200s - for all of it; a burst of them for all of theirs.
`OnePerTurn` queues the work instead and runs one item on each later turn (`loop.call_soon`),
so the handler returns (and its response leaves) at once and the loop is never held for more
than one item (issue 17: a burst of INVITEs held it 150 ms; issue 18: a burst of BYEs).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T", bound=Hashable)


class OnePerTurn(Generic[T]):
    """Items for `run`, one a turn of the running loop, first come first run; an item already
    waiting is not queued twice. `run` raising is logged and counted in `failed`."""

    def __init__(self, run: Callable[[T], None], what: str) -> None:
        self._run = run
        self._what = what
        self._queue: deque[T] = deque()
        self._waiting: set[T] = set()
        self.failed = 0

    def __len__(self) -> int:
        return len(self._queue)

    def __contains__(self, item: object) -> bool:
        return item in self._waiting

    def add(self, item: T) -> None:
        if item in self._waiting:
            return
        self._queue.append(item)
        self._waiting.add(item)
        if len(self._queue) == 1:
            asyncio.get_running_loop().call_soon(self._next)

    def drain(self) -> None:
        """Run every waiting item now (the server stops: nothing may be left behind)."""
        while self._queue:
            self._one()

    def _next(self) -> None:
        if not self._queue:  # (drained meanwhile)
            return
        if len(self._queue) > 1:
            asyncio.get_running_loop().call_soon(self._next)
        self._one()

    def _one(self) -> None:
        item = self._queue.popleft()
        self._waiting.discard(item)
        try:
            self._run(item)
        except Exception:
            self.failed += 1
            log.exception("%s: failed", self._what)
