"""RoomLimits (server/calls/room_limits.py): callers per room and joins per second, with time
passed in."""

from __future__ import annotations

from livekit.protocol import models

from sipbridge.rooms import RoomRegistry
from sipbridge.server.calls.room_limits import RoomLimits

SIP = models.ParticipantInfo.Kind.SIP


def room_with(*identities: str, kind: int = SIP) -> RoomRegistry:
    registry = RoomRegistry()
    registry.create("r", 0.0)
    for identity in identities:
        registry.join("r", identity, 0.0, kind=kind)
    return registry


def test_callers_are_capped_and_a_duplicate_is_not_a_new_caller() -> None:
    limits = RoomLimits(max_callers=2)
    registry = room_with("sip_a", "sip_b")
    room = registry.find("r")
    assert limits.refuse("r", room, "sip_c", 0.0) == "room_full_of_callers"
    assert limits.refuse("r", room, "sip_a", 0.0) is None  # it replaces itself
    agents_only = room_with("agent", kind=models.ParticipantInfo.Kind.AGENT).find("r")
    assert limits.refuse("r", agents_only, "sip_c", 0.0) is None  # only SIP participants count
    assert limits.refuse("new", None, "sip_c", 0.0) is None  # a room that does not exist yet


def test_joins_per_second_with_a_burst_of_twice_the_rate() -> None:
    limits = RoomLimits(join_rate=1.0, capacity=1)
    room = room_with().find("r")
    assert [limits.refuse("r", room, f"sip_{n}", 0.0) for n in range(3)] == [
        None,
        None,
        "room_join_rate",
    ]
    assert limits.refuse("r", room, "sip_x", 1.0) is None  # a second later, one more
    other = RoomRegistry()
    other.create("s", 0.0)
    assert limits.refuse("s", other.find("s"), "sip_y", 1.0) is None  # its own bucket (r forgotten)
    assert RoomLimits().refuse("r", room, "sip_z", 0.0) is None  # no limits: never refused
