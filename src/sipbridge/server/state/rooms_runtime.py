"""Drives the pure rooms model: feeds it the clock, drains its events, keeps its one timer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sipbridge.rooms import RoomRegistry
from sipbridge.rooms import events as ev
from sipbridge.server.api.webhooks import WebhookNotifier
from sipbridge.server.deadline import DeadlineTimer

log = logging.getLogger(__name__)

Listener = Callable[[ev.RoomEvent], None]


class RoomsRuntime:
    """Call `commit()` after every change to the registry; listeners see every event in order."""

    def __init__(
        self, registry: RoomRegistry, notifier: WebhookNotifier, clock: Callable[[], float]
    ) -> None:
        self.registry = registry
        self.notifier = notifier
        self.clock = clock
        self.listeners: list[Listener] = []
        # Told when a commit has handed every event to the listeners (what they gathered over
        # it goes out then: the signal server's participant updates, rtc/updates.py).
        self.settled: list[Callable[[], None]] = []
        self._timer = DeadlineTimer(clock, self._on_timer)  # the rooms' closing deadlines

    def now(self) -> float:
        return self.clock()

    def commit(self) -> None:
        while (event := self.registry.next_event()) is not None:
            self._webhook(event)
            for listener in self.listeners:
                try:
                    listener(event)
                except Exception:
                    log.exception("room event listener failed on %s", type(event).__name__)
        for settled in self.settled:
            try:
                settled()
            except Exception:
                log.exception("room commit listener failed")
        self._arm_timer()

    def _arm_timer(self) -> None:
        self._timer.arm(self.registry.next_deadline())

    def _on_timer(self) -> None:
        self.registry.handle_timer(self.clock())
        self.commit()

    def close(self) -> None:
        self._timer.cancel()

    def _webhook(self, event: ev.RoomEvent) -> None:
        notify = self.notifier.notify
        match event:
            case ev.RoomStarted(room=room):
                notify("room_started", room=room)
            case ev.RoomFinished(room=room):
                notify("room_finished", room=room)
            case ev.ParticipantJoined(room=room, participant=p):
                notify("participant_joined", room=room, participant=p)
            case ev.ParticipantLeft(room=room, participant=p):
                notify("participant_left", room=room, participant=p)
            case ev.TrackPublished(room=room, participant=p, track=t):
                notify("track_published", room=room, participant=p, track=t)
            case ev.TrackUnpublished(room=room, participant=p, track=t):
                notify("track_unpublished", room=room, participant=p, track=t)
            case _:
                pass


def wall_clock() -> float:
    return time.time()
