"""Each running call's media quality (`media/quality.py`) kept in the call log: every
QUALITY_S while calls run (one timer for all of them), and once more as each call ends.

The timer runs SLICES times per QUALITY_S and takes one slice of the calls each time (by a hash
of the call id): with 1,600 calls, a pass over all of them at once (about 30 us a call: the
E-model, the dictionary, its JSON) held the event loop for tens of milliseconds every 5 s, which
the relayed audio felt as latency."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from livekit.protocol import sip as proto

from sipbridge.media.quality import leg_quality
from sipbridge.server.media.leg_driver import CallMedia
from sipbridge.server.state.call_log import CallLog

QUALITY_S = 5.0  # how often a running call's quality is written to the call log
SLICES = 10  # the calls are taken a tenth at a time, every QUALITY_S / SLICES


class QualityWriter:
    def __init__(
        self,
        call_log: CallLog,
        now: Callable[[], float],
        running: Callable[[], Iterable[tuple[proto.SIPCallInfo, CallMedia | None]]],
    ) -> None:
        self.call_log = call_log
        self.now = now
        self.running = running  # the calls in progress: their record and media leg
        self._timer: asyncio.TimerHandle | None = None
        self._turn = 0

    def _snapshot(self, info: proto.SIPCallInfo, leg: CallMedia | None) -> dict[str, Any] | None:
        """The call's quality now, once its media has flowed either way."""
        if leg is None or not info.call_id:
            return None
        leg.sync()
        if leg.receiver.ssrc is None and not leg.sender.packets_sent:
            return None
        return leg_quality(leg, self.now()).as_dict()

    def record(self, info: proto.SIPCallInfo, leg: CallMedia | None) -> None:
        """The call's quality now, once its media has flowed either way."""
        quality = self._snapshot(info, leg)
        if quality is not None:
            self.call_log.record_quality(info.call_id, quality)

    def watch(self) -> None:
        """A call's media is up: make sure the timer runs."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(QUALITY_S / SLICES, self._due)

    def _due(self) -> None:
        self._timer = None
        self._turn = turn = (self._turn + 1) % SLICES
        calls = list(self.running())
        for info, leg in calls:
            if hash(info.call_id) % SLICES == turn:
                self.record(info, leg)
        if calls:
            self.watch()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
