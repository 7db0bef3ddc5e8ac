"""The rooms runtime hands each room event to the listeners that want it, in the order they
were added: every event to those in `listeners`, only the named types to those given `listen`."""

from __future__ import annotations

from sipbridge.rooms import RoomRegistry
from sipbridge.rooms import events as ev
from sipbridge.server.api.webhooks import WebhookNotifier
from sipbridge.server.state.rooms_runtime import RoomsRuntime

KEYS = {"key": "secret-secret-secret-secret-secret"}


def runtime() -> RoomsRuntime:
    return RoomsRuntime(RoomRegistry(), WebhookNotifier([], "key", KEYS["key"]), lambda: 1.0)


def test_a_listener_given_kinds_hears_only_those_and_all_in_order() -> None:
    rooms = runtime()
    heard: list[tuple[str, str]] = []
    rooms.listeners.append(lambda event: heard.append(("all", type(event).__name__)))
    rooms.listen(
        lambda event: heard.append(("rooms", type(event).__name__)),
        (ev.RoomStarted, ev.RoomFinished),
    )
    rooms.listen(
        lambda event: heard.append(("joins", type(event).__name__)), (ev.ParticipantJoined,)
    )
    rooms.registry.create("r", 1.0)
    rooms.registry.join("r", "a", 1.0)
    rooms.commit()
    assert heard == [
        ("all", "RoomStarted"),
        ("rooms", "RoomStarted"),
        ("all", "ParticipantJoined"),
        ("joins", "ParticipantJoined"),
    ]


def test_a_listener_added_later_is_told_of_the_next_events() -> None:
    rooms = runtime()
    heard: list[str] = []
    rooms.listen(lambda event: heard.append("first"), (ev.ParticipantJoined,))
    rooms.registry.create("r", 1.0)
    rooms.registry.join("r", "a", 1.0)
    rooms.commit()  # (who hears a ParticipantJoined is worked out here)
    rooms.listen(lambda event: heard.append("second"), (ev.ParticipantJoined,))
    rooms.listeners.append(lambda event: heard.append("every"))
    rooms.registry.join("r", "b", 1.0)
    rooms.commit()
    assert heard == ["first", "first", "second", "every"]
