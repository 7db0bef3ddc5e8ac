"""SIGTERM and SIGINT to the drain machine (`telephony/drain.py`), the asyncio side.

`serve` installs the handlers before the node starts and waits in `wait_stopped()`: while the
node serves, nothing happens here; once it drains, the calls it holds are counted every
`POLL_S` and the deadline checked, until the machine says stop. The node then shuts down as it
always did (`Server.stop`: BYE to the calls left, 503 to calls not answered yet) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable

from sipbridge.telephony.drain import Drain, DrainInput, DrainStarted, NodeStopped

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a draining node counts its calls
SIGNALS = {signal.SIGTERM: DrainInput.TERM, signal.SIGINT: DrainInput.INT}


class DrainDriver:
    """Feeds signals, the call count and time to `drain`; `on_drain` runs as draining begins."""

    def __init__(
        self,
        drain: Drain,
        *,
        calls: Callable[[], int],
        on_drain: Callable[[DrainStarted], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.drain = drain
        self.calls = calls
        self.on_drain = on_drain
        self.clock = clock
        self.stopped: NodeStopped | None = None
        self._wake = asyncio.Event()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, what in SIGNALS.items():
            loop.add_signal_handler(sig, self.signal, what)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)

    def signal(self, what: DrainInput) -> None:
        now = self.clock()
        self.drain.calls(self.calls(), now)
        self.drain.signal(what, now)
        self._events()
        self._wake.set()  # wait_stopped looks again now

    async def wait_stopped(self) -> NodeStopped:
        """Until the node should exit (a signal, then its calls ended or its time ran out)."""
        while self.stopped is None:
            deadline = self.drain.get_timer()
            wait = None if deadline is None else max(0.0, min(POLL_S, deadline - self.clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()
            if self.drain.get_timer() is not None:
                now = self.clock()
                self.drain.calls(self.calls(), now)
                self.drain.handle_timer(now)
                self._events()
        return self.stopped

    def _events(self) -> None:
        while (event := self.drain.next_event()) is not None:
            if isinstance(event, DrainStarted):
                log.info(
                    "draining: new calls refused; %d call(s) may run for %g s more",
                    event.calls,
                    self.drain.timeout,
                )
                self.on_drain(event)
            else:
                self.stopped = event
                if event.hang_up:
                    log.info("stopping (%s): hanging up the calls left", event.cause.value)
                else:
                    log.info("stopping (%s)", event.cause.value)
