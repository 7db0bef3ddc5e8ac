"""Drives the pure rooms model: feeds it the clock, drains its events, keeps its one timer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from sipbridge.rooms import RoomRegistry
from sipbridge.rooms import events as ev
from sipbridge.server.api.webhooks import WebhookNotifier
from sipbridge.server.deadline import DeadlineTimer

log = logging.getLogger(__name__)

Listener = Callable[[ev.RoomEvent], None]


class RoomsRuntime:
    """Call `commit()` after every change to the registry; listeners see the events in order:
    every event for those in `listeners`, only those of the kinds they named for those given
    with `listen`."""

    def __init__(
        self, registry: RoomRegistry, notifier: WebhookNotifier, clock: Callable[[], float]
    ) -> None:
        self.registry = registry
        self.notifier = notifier
        self.clock = clock
        self.listeners: list[Listener] = []
        # Listener -> the event types it is told of (`listen`); a listener not in it is told
        # of every event. Each event went to every listener, most of them interpreted and
        # passing over most events: 10-11 events a call with a room each, to 7 listeners
        # (issue 18). Who hears a type is worked out once (`_route`), again when one is added.
        self.kinds: dict[Listener, frozenset[type]] = {}
        self._routes: dict[type, list[Listener]] = {}
        self._routed_for = 0  # how many listeners `_routes` was worked out for
        # Told when a commit has handed every event to the listeners (what they gathered over
        # it goes out then: the signal server's participant updates, rtc/updates.py).
        self.settled: list[Callable[[], None]] = []
        self._timer = DeadlineTimer(clock, self._on_timer)  # the rooms' closing deadlines

    def now(self) -> float:
        return self.clock()

    def listen(self, listener: Listener, kinds: Iterable[type]) -> None:
        """`listener` is told of the events of these types only, in order with the others."""
        self.kinds[listener] = frozenset(kinds)
        self.listeners.append(listener)

    def _route(self, kind: type) -> list[Listener]:
        """The listeners told of events of type `kind`, in the order they were added."""
        listeners = self.listeners
        if self._routed_for != len(listeners):  # (listeners are only ever added)
            self._routes.clear()
            self._routed_for = len(listeners)
        route = self._routes.get(kind)
        if route is None:
            kinds = self.kinds
            route = [
                listener
                for listener in listeners
                if (wanted := kinds.get(listener)) is None or kind in wanted
            ]
            self._routes[kind] = route
        return route

    def commit(self) -> None:
        notifier = self.notifier
        while (event := self.registry.next_event()) is not None:
            if notifier.receivers:  # (no webhook receivers: nothing to match the event for)
                self._webhook(event)
            for listener in self._route(type(event)):
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
