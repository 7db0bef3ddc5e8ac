"""One `loop.call_at` at a sans-IO object's next deadline: how every driver here keeps time.

The object says when it next needs the time (`get_timer()`), in its own clock; `arm` keeps one
timer for it, moved only when that deadline moves, and `fire` hands the time back to the object
(`handle_timer(now)`) when it comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class DeadlineTimer:
    """`lazy`: a deadline that moves later, or goes, leaves the timer where it is - it wakes
    early once and `fire` (which then finds nothing due) re-arms at the real deadline. For
    objects whose deadline comes and goes many times a second (the SIP drivers: every answered
    call sets one and its ACK clears it): one wake-up in a while instead of a timer cancelled
    and made per call. `fire` must then tolerate a wake-up with nothing due."""

    def __init__(
        self, clock: Callable[[], float], fire: Callable[[], None], *, lazy: bool = False
    ) -> None:
        self.clock = clock  # the object's clock, which its deadlines are in
        self.fire = fire
        self.lazy = lazy
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    def arm(self, deadline: float | None) -> None:
        """Wake at `deadline` (None: never); a deadline that did not move costs nothing."""
        at = self._at
        if deadline == at:
            return
        if self.lazy and at is not None and (deadline is None or deadline > at):
            return  # the armed wake-up comes first; `fire` re-arms then
        self.cancel()
        self._at = deadline
        if deadline is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # (a driver used outside a loop, in a test: nothing to wake)
                self._at = None
                return
            delay = max(0.0, deadline - self.clock())
            self._handle = loop.call_at(loop.time() + delay, self._wake)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._at = None

    def _wake(self) -> None:
        self._handle = self._at = None
        self.fire()
