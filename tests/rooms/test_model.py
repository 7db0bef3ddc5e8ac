"""The rooms model: rooms, participants, tracks, subscriptions and data, with time passed in.

No clock anywhere: every call takes `now`, events are drained with `next_event()`, and rooms close
when `handle_timer(now)` runs past `next_deadline()` (LiveKit's empty/departure timeouts).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import models
from livekit.protocol.agent_dispatch import RoomAgentDispatch

from sipbridge.errors import ApiError
from sipbridge.rooms import Participant, Room, RoomRegistry
from sipbridge.rooms import events as ev
from sipbridge.rooms.model import (
    DEFAULT_DEPARTURE_TIMEOUT,
    DEFAULT_EMPTY_TIMEOUT,
    MAX_ATTRIBUTES_BYTES,
    MAX_DATA_BYTES,
    MAX_IDENTITY,
    MAX_METADATA,
    MAX_ROOM_NAME,
    room_name_problem,
)

Reason = models.DisconnectReason
Kind = models.ParticipantInfo.Kind
State = models.ParticipantInfo.State

T0 = 1_700_000_000.25  # any Unix time; the model never reads a clock


def drain(reg: RoomRegistry) -> list[ev.RoomEvent]:
    out = []
    while (event := reg.next_event()) is not None:
        out.append(event)
    return out


def names(events: list[ev.RoomEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


def api_error(code: str, fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ApiError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value
    return info.value.message


@pytest.fixture
def reg() -> RoomRegistry:
    return RoomRegistry()


@pytest.fixture
def room(reg: RoomRegistry) -> Room:
    """A room "r" created at T0, its RoomStarted already drained."""
    created, _ = reg.create("r", T0)
    drain(reg)
    return created


def mic(name: str = "mic", sid: str = "") -> models.TrackInfo:
    return models.TrackInfo(sid=sid, name=name, type=models.TrackType.AUDIO)


# -- rooms ----------------------------------------------------------------------------------------


def test_create_room(reg: RoomRegistry) -> None:
    room, created = reg.create("support", T0)
    assert created
    assert room.name == "support"
    assert room.sid.startswith("RM_") and len(room.sid) > 3
    assert room.created_at == T0
    assert room.empty_timeout == DEFAULT_EMPTY_TIMEOUT == 300
    assert room.departure_timeout == DEFAULT_DEPARTURE_TIMEOUT == 20
    assert room.participants == {}
    assert not room.closed
    assert len(reg) == 1
    assert reg.get("support") is room
    assert reg.find("support") is room
    [started] = drain(reg)
    assert isinstance(started, ev.RoomStarted)
    assert started.room.name == "support"
    assert started.room.sid == room.sid
    assert started.room.empty_timeout == 300
    assert started.room.departure_timeout == 20
    assert started.room.creation_time == int(T0)
    assert started.room.creation_time_ms == int(T0 * 1000)


def test_create_room_with_options(reg: RoomRegistry) -> None:
    agents = [RoomAgentDispatch(agent_name="receptionist")]
    room, _ = reg.create(
        "r",
        T0,
        empty_timeout=5,
        departure_timeout=7,
        max_participants=3,
        metadata="m" * MAX_METADATA,
        agents=agents,
    )
    assert (room.empty_timeout, room.departure_timeout, room.max_participants) == (5, 7, 3)
    assert room.metadata == "m" * MAX_METADATA
    assert [a.agent_name for a in room.agents] == ["receptionist"]
    proto = room.to_proto()
    assert (proto.empty_timeout, proto.departure_timeout, proto.max_participants) == (5, 7, 3)


def test_create_existing_room_returns_it_unchanged(reg: RoomRegistry, room: Room) -> None:
    again, created = reg.create("r", T0 + 5, empty_timeout=1, metadata="other")
    assert not created
    assert again is room
    assert room.empty_timeout == 300
    assert room.metadata == ""
    assert drain(reg) == []
    assert len(reg) == 1


def test_rooms_lists_all_or_by_name(reg: RoomRegistry) -> None:
    for name in ("a", "b", "c"):
        reg.create(name, T0)
    assert sorted(r.name for r in reg.rooms()) == ["a", "b", "c"]
    assert sorted(r.name for r in reg.rooms(["c", "a", "missing"])) == ["a", "c"]
    assert reg.rooms(["missing"]) == []


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "room name must be set"),
        ("x" * (MAX_ROOM_NAME + 1), "room name too long"),
        ("a\x00b", "contains control characters"),
        ("a\nb", "contains control characters"),
        ("room\n", "contains control characters"),
        ("\x1f", "contains control characters"),
        ("a\x7fb", "contains control characters"),
        ("a\tb", "contains control characters"),
    ],
)
def test_create_refuses_bad_names(reg: RoomRegistry, name: str, fragment: str) -> None:
    assert fragment in api_error("invalid_argument", reg.create, name, T0)
    assert len(reg) == 0
    assert drain(reg) == []


@pytest.mark.parametrize(
    "name",
    [
        "x" * MAX_ROOM_NAME,
        "Room with spaces",
        "ünïcode",
        "a.b-c_d",
        # LiveKit allows URL separators in room names: only length and control characters count.
        "a/b",
        "a\\b",
        "a?b",
        "a#b",
        "a%b",
        "team/sales?x=1#top%20",
    ],
)
def test_create_accepts_names(reg: RoomRegistry, name: str) -> None:
    room, created = reg.create(name, T0)
    assert created
    assert room.name == name
    assert reg.get(name) is room


def test_room_name_problem_messages() -> None:
    assert room_name_problem("a/b?c#d%e\\f") is None
    assert room_name_problem("") is None  # "must be set" is the caller's rule (CreateRoom)
    assert room_name_problem("x" * MAX_ROOM_NAME) is None
    assert room_name_problem("x" * (MAX_ROOM_NAME + 1)) == (
        f"room name too long (max {MAX_ROOM_NAME} characters)"
    )
    assert room_name_problem("a\nb") == "room name 'a\\nb' contains control characters"
    assert room_name_problem("\x7f") == "room name '\\x7f' contains control characters"
    assert room_name_problem(" ~\x80ü") is None  # only C0 controls and DEL


def test_create_refuses_long_metadata(reg: RoomRegistry) -> None:
    message = api_error("invalid_argument", reg.create, "r", T0, metadata="m" * (MAX_METADATA + 1))
    assert message.startswith("metadata: too long")
    assert len(reg) == 0


def test_get_unknown_room(reg: RoomRegistry) -> None:
    assert "'nope'" in api_error("not_found", reg.get, "nope")
    assert reg.find("nope") is None


def test_delete_room_removes_everyone(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "alice", T0)
    reg.join("r", "bob", T0)
    track = reg.publish_track("r", "alice", mic())
    drain(reg)
    reg.delete("r", T0 + 10)
    events = drain(reg)
    assert names(events) == [
        "TrackUnpublished",
        "ParticipantLeft",
        "ParticipantLeft",
        "RoomFinished",
    ]
    assert events[0].track.sid == track  # type: ignore[union-attr]
    left = [e for e in events if isinstance(e, ev.ParticipantLeft)]
    assert [e.participant.identity for e in left] == ["alice", "bob"]
    for e in left:
        assert e.participant.state == State.DISCONNECTED
        assert e.participant.disconnect_reason == Reason.ROOM_DELETED
    assert left[-1].room.num_participants == 0
    finished = events[-1]
    assert isinstance(finished, ev.RoomFinished)
    assert finished.room.sid == room.sid
    assert room.closed
    assert len(reg) == 0
    api_error("not_found", reg.get, "r")
    assert reg.next_deadline() is None


def test_delete_unknown_room(reg: RoomRegistry) -> None:
    api_error("not_found", reg.delete, "nope", T0)


def test_room_name_is_free_again_after_delete(reg: RoomRegistry, room: Room) -> None:
    reg.delete("r", T0)
    again, created = reg.create("r", T0 + 1)
    assert created
    assert again is not room
    assert again.sid != room.sid


def test_update_metadata(reg: RoomRegistry, room: Room) -> None:
    assert reg.update_metadata("r", "hello") is room
    assert room.metadata == "hello"
    [changed] = drain(reg)
    assert isinstance(changed, ev.RoomMetadataChanged)
    assert changed.room.metadata == "hello"
    api_error("invalid_argument", reg.update_metadata, "r", "m" * (MAX_METADATA + 1))
    assert room.metadata == "hello"
    api_error("not_found", reg.update_metadata, "nope", "x")


# -- participants ---------------------------------------------------------------------------------


def test_join(reg: RoomRegistry, room: Room) -> None:
    attributes = {"sip.callStatus": "ringing"}
    p = reg.join(
        "r",
        "sip_+15105550100",
        T0 + 1.5,
        name="Phone +15105550100",
        kind=Kind.SIP,
        metadata="md",
        attributes=attributes,
    )
    attributes["later"] = "change"  # the participant keeps its own copy
    assert p.sid.startswith("PA_")
    assert p.identity == "sip_+15105550100"
    assert p.name == "Phone +15105550100"
    assert p.kind == Kind.SIP
    assert p.state == State.JOINED
    assert p.metadata == "md"
    assert p.attributes == {"sip.callStatus": "ringing"}
    assert p.joined_at == T0 + 1.5
    assert p.version == 1
    assert p.permission.can_subscribe and p.permission.can_publish and p.permission.can_publish_data
    assert room.participants == {"sip_+15105550100": p}
    assert reg.participant("r", "sip_+15105550100") is p
    [joined] = drain(reg)
    assert isinstance(joined, ev.ParticipantJoined)
    assert joined.room.num_participants == 1
    assert joined.participant.identity == "sip_+15105550100"
    assert joined.participant.kind == Kind.SIP
    assert joined.participant.sid == p.sid
    assert joined.participant.joined_at == int(T0 + 1.5)
    assert joined.participant.joined_at_ms == int((T0 + 1.5) * 1000)
    assert dict(joined.participant.attributes) == {"sip.callStatus": "ringing"}


def test_join_with_permission(reg: RoomRegistry, room: Room) -> None:
    perm = models.ParticipantPermission(can_subscribe=True, hidden=True)
    p = reg.join("r", "recorder", T0, permission=perm)
    assert p.permission.hidden
    assert not p.permission.can_publish
    # hidden participants are not counted
    assert room.to_proto().num_participants == 0


def test_join_keeps_the_clients_protocol(reg: RoomRegistry, room: Room) -> None:
    # others' SDKs choose the RPC transport by it (data packets, or data streams from 1)
    assert reg.join("r", "sdk", T0, client_protocol=1).to_proto().client_protocol == 1
    assert reg.join("r", "phone", T0).to_proto().client_protocol == 0


@pytest.mark.parametrize(
    ("identity", "attributes", "fragment"),
    [
        ("", None, "identity: must be 1-256 characters"),
        ("x" * (MAX_IDENTITY + 1), None, "identity: must be 1-256 characters"),
        ("ok", {"": "v"}, "attributes: empty attribute name"),
        ("ok", {"k": "v" * MAX_ATTRIBUTES_BYTES}, "attributes: too large"),
    ],
)
def test_join_refuses(
    reg: RoomRegistry, room: Room, identity: str, attributes: dict[str, str] | None, fragment: str
) -> None:
    message = api_error("invalid_argument", reg.join, "r", identity, T0, attributes=attributes)
    assert fragment in message
    assert room.participants == {}
    assert drain(reg) == []


def test_join_accepts_limits(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "x" * MAX_IDENTITY, T0, attributes={"k": "v" * (MAX_ATTRIBUTES_BYTES - 1)})


def test_join_unknown_room(reg: RoomRegistry) -> None:
    api_error("not_found", reg.join, "nope", "alice", T0)


def test_duplicate_identity_replaces_the_old_participant(reg: RoomRegistry, room: Room) -> None:
    old = reg.join("r", "alice", T0, name="first")
    reg.join("r", "bob", T0)
    old_track = reg.publish_track("r", "alice", mic())
    reg.update_subscriptions("r", "bob", [old_track], True)
    drain(reg)

    new = reg.join("r", "alice", T0 + 3, name="second")
    events = drain(reg)
    assert names(events) == ["TrackUnpublished", "ParticipantLeft", "ParticipantJoined"]
    left = events[1]
    assert isinstance(left, ev.ParticipantLeft)
    assert left.participant.sid == old.sid
    assert left.participant.disconnect_reason == Reason.DUPLICATE_IDENTITY
    assert left.participant.state == State.DISCONNECTED
    joined = events[2]
    assert isinstance(joined, ev.ParticipantJoined)
    assert joined.participant.sid == new.sid != old.sid
    assert joined.participant.name == "second"
    assert joined.participant.tracks == []
    assert room.participants["alice"] is new
    assert len(room.participants) == 2
    assert old.state == State.DISCONNECTED
    assert old.disconnect_reason == Reason.DUPLICATE_IDENTITY
    # bob no longer receives the old participant's track
    assert reg.participant("r", "bob").subscriptions == set()


def test_duplicate_identity_of_the_only_participant_keeps_the_room(
    reg: RoomRegistry, room: Room
) -> None:
    reg.join("r", "alice", T0)
    reg.join("r", "alice", T0 + 1)
    assert reg.next_deadline() is None
    reg.handle_timer(T0 + 10_000)
    assert reg.find("r") is room


def test_max_participants(reg: RoomRegistry) -> None:
    reg.create("small", T0, max_participants=2)
    reg.join("small", "a", T0)
    reg.join("small", "b", T0)
    drain(reg)
    assert "is full" in api_error("resource_exhausted", reg.join, "small", "c", T0)
    assert drain(reg) == []
    # replacing a present identity is not a new participant
    reg.join("small", "b", T0 + 1)
    # once someone leaves there is room again
    reg.remove("small", "a", T0 + 2, Reason.CLIENT_INITIATED)
    reg.join("small", "c", T0 + 3)
    assert sorted(reg.get("small").participants) == ["b", "c"]


def test_zero_max_participants_means_unlimited(reg: RoomRegistry, room: Room) -> None:
    for i in range(50):
        reg.join("r", f"p{i}", T0)
    assert len(room.participants) == 50


def test_remove(reg: RoomRegistry, room: Room) -> None:
    alice = reg.join("r", "alice", T0)
    reg.join("r", "bob", T0)
    drain(reg)
    reg.remove("r", "alice", T0 + 4, Reason.PARTICIPANT_REMOVED)
    [left] = drain(reg)
    assert isinstance(left, ev.ParticipantLeft)
    assert left.participant.identity == "alice"
    assert left.participant.disconnect_reason == Reason.PARTICIPANT_REMOVED
    assert left.participant.version == alice.version == 2
    assert left.room.num_participants == 1
    assert list(room.participants) == ["bob"]
    assert room.last_left_at is None  # bob is still there
    reg.remove("r", "bob", T0 + 6, Reason.CLIENT_INITIATED)
    assert room.last_left_at == T0 + 6


def test_remove_unknown_participant(reg: RoomRegistry, room: Room) -> None:
    message = api_error("not_found", reg.remove, "r", "ghost", T0, Reason.CLIENT_INITIATED)
    assert "'ghost'" in message and "'r'" in message
    api_error("not_found", reg.remove, "nope", "ghost", T0, Reason.CLIENT_INITIATED)
    api_error("not_found", reg.participant, "r", "ghost")


def test_remove_unpublishes_tracks_and_drops_subscriptions(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "caller", T0)
    reg.join("r", "agent", T0)
    caller_track = reg.publish_track("r", "caller", mic())
    agent_track = reg.publish_track("r", "agent", mic())
    reg.update_subscriptions("r", "agent", [caller_track], True)
    reg.update_subscriptions("r", "caller", [agent_track], True)
    drain(reg)
    reg.remove("r", "caller", T0 + 1, Reason.CLIENT_INITIATED)
    events = drain(reg)
    assert names(events) == ["TrackUnpublished", "ParticipantLeft"]
    unpublished = events[0]
    assert isinstance(unpublished, ev.TrackUnpublished)
    assert unpublished.track.sid == caller_track
    assert unpublished.participant.identity == "caller"
    assert reg.participant("r", "agent").subscriptions == set()
    # the agent's own track is untouched
    assert agent_track in reg.participant("r", "agent").tracks


def test_update_participant(reg: RoomRegistry, room: Room) -> None:
    p = reg.join("r", "alice", T0, name="Alice", metadata="md", attributes={"a": "1", "b": "2"})
    drain(reg)
    same = reg.update_participant("r", "alice", attributes={"a": "", "b": "3", "c": "4"})
    assert same is p
    # empty name and metadata leave the values as they are
    assert p.name == "Alice"
    assert p.metadata == "md"
    assert p.attributes == {"b": "3", "c": "4"}
    assert p.version == 2
    [updated] = drain(reg)
    assert isinstance(updated, ev.ParticipantUpdated)
    assert dict(updated.participant.attributes) == {"b": "3", "c": "4"}
    assert updated.participant.version == 2

    reg.update_participant("r", "alice", name="Alicia", metadata="new")
    assert (p.name, p.metadata, p.version) == ("Alicia", "new", 3)
    assert p.attributes == {"b": "3", "c": "4"}


def test_update_participant_permission(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "pub", T0)
    sub = reg.join("r", "sub", T0)
    track = reg.publish_track("r", "pub", mic())
    reg.update_subscriptions("r", "sub", [track], True)
    assert sub.subscriptions == {track}
    reg.update_participant("r", "sub", permission=models.ParticipantPermission(can_publish=True))
    assert not sub.permission.can_subscribe
    assert sub.subscriptions == set()
    # a permission that keeps can_subscribe keeps subscriptions
    reg.update_participant("r", "sub", permission=models.ParticipantPermission(can_subscribe=True))
    reg.update_subscriptions("r", "sub", [track], True)
    reg.update_participant(
        "r", "sub", permission=models.ParticipantPermission(can_subscribe=True, hidden=True)
    )
    assert sub.subscriptions == {track}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"metadata": "m" * (MAX_METADATA + 1)}, "metadata: too long"),
        ({"name": "n" * (MAX_IDENTITY + 1)}, "name: too long"),
        ({"attributes": {"": "x"}}, "attributes: empty attribute name"),
        ({"attributes": {"big": "v" * MAX_ATTRIBUTES_BYTES}}, "attributes: too large"),
    ],
)
def test_update_participant_refuses_and_changes_nothing(
    reg: RoomRegistry, room: Room, kwargs: dict[str, Any], fragment: str
) -> None:
    p = reg.join("r", "alice", T0, name="Alice", attributes={"a": "1"})
    drain(reg)
    message = api_error(
        "invalid_argument", reg.update_participant, "r", "alice", **({"name": "New"} | kwargs)
    )
    assert fragment in message
    assert (p.name, p.attributes, p.version) == ("Alice", {"a": "1"}, 1)
    assert drain(reg) == []


def test_update_participant_deleting_keeps_attributes_within_limits(
    reg: RoomRegistry, room: Room
) -> None:
    half = "v" * (MAX_ATTRIBUTES_BYTES // 2)
    p = reg.join("r", "alice", T0, attributes={"a": half})
    # replacing the big value with another big one fits, because "a" goes away
    reg.update_participant("r", "alice", attributes={"a": "", "b": half})
    assert p.attributes == {"b": half}


def test_update_unknown_participant(reg: RoomRegistry, room: Room) -> None:
    api_error("not_found", reg.update_participant, "r", "ghost", name="x")
    api_error("not_found", reg.update_participant, "nope", "ghost", name="x")


# -- tracks ---------------------------------------------------------------------------------------


def test_publish_track(reg: RoomRegistry, room: Room) -> None:
    p = reg.join("r", "alice", T0)
    drain(reg)
    sid = reg.publish_track("r", "alice", mic())
    assert sid.startswith("TR_")
    assert list(p.tracks) == [sid]
    assert p.version == 2
    [published] = drain(reg)
    assert isinstance(published, ev.TrackPublished)
    assert published.track.sid == sid
    assert published.track.name == "mic"
    assert published.participant.is_publisher
    assert [t.sid for t in published.participant.tracks] == [sid]
    assert published.room.num_publishers == 1
    assert p.to_proto().is_publisher


def test_publish_track_keeps_a_given_sid(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "alice", T0)
    assert reg.publish_track("r", "alice", mic(sid="TR_given")) == "TR_given"
    assert "TR_given" in reg.participant("r", "alice").tracks


def test_publish_track_needs_a_participant(reg: RoomRegistry, room: Room) -> None:
    api_error("not_found", reg.publish_track, "r", "ghost", mic())
    api_error("not_found", reg.publish_track, "nope", "ghost", mic())


def test_mute_track(reg: RoomRegistry, room: Room) -> None:
    p = reg.join("r", "alice", T0)
    sid = reg.publish_track("r", "alice", mic())
    drain(reg)
    track = reg.mute_track("r", "alice", sid, True)
    assert track.muted
    assert p.version == 3
    [muted] = drain(reg)
    assert isinstance(muted, ev.TrackMuted)
    assert muted.track.sid == sid
    assert muted.participant.tracks[0].muted
    # muting again changes nothing and reports nothing
    reg.mute_track("r", "alice", sid, True)
    assert drain(reg) == []
    assert p.version == 3
    reg.mute_track("r", "alice", sid, False)
    [unmuted] = drain(reg)
    assert isinstance(unmuted, ev.TrackMuted)
    assert not unmuted.participant.tracks[0].muted


def test_participant_message_follows_its_tracks(reg: RoomRegistry, room: Room) -> None:
    # The message keeps its copies of the tracks while they stay the same (issue 18): a new
    # track, a mute, show in the next message; what a caller does to a message stays there.
    p = reg.join("r", "alice", T0)
    first_sid = reg.publish_track("r", "alice", mic())
    first = p.to_proto()
    second_sid = reg.publish_track("r", "alice", mic())
    second = p.to_proto()
    assert [t.sid for t in first.tracks] == [first_sid]
    assert [t.sid for t in second.tracks] == [first_sid, second_sid]
    second.tracks[0].muted = True
    assert [t.muted for t in p.to_proto().tracks] == [False, False]
    reg.mute_track("r", "alice", second_sid, True)
    assert [t.muted for t in p.to_proto().tracks] == [False, True]
    reg.update_participant("r", "alice", attributes={"k": "v"})
    assert [t.muted for t in p.to_proto().tracks] == [False, True]


def test_mute_unknown_track(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "alice", T0)
    assert "'TR_nope'" in api_error("not_found", reg.mute_track, "r", "alice", "TR_nope", True)


def test_track_events_are_snapshots(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "alice", T0)
    sid = reg.publish_track("r", "alice", mic())
    [published] = [e for e in drain(reg) if isinstance(e, ev.TrackPublished)]
    reg.mute_track("r", "alice", sid, True)
    assert not published.track.muted


def test_participant_and_room_in_events_are_snapshots(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "alice", T0, attributes={"a": "1"})
    [joined] = drain(reg)
    assert isinstance(joined, ev.ParticipantJoined)
    reg.update_participant("r", "alice", name="changed", attributes={"a": "2"})
    reg.publish_track("r", "alice", mic())
    reg.join("r", "bob", T0)
    assert joined.participant.name == ""
    assert dict(joined.participant.attributes) == {"a": "1"}
    assert joined.participant.tracks == []
    assert joined.room.num_participants == 1


def test_track_owner(reg: RoomRegistry, room: Room) -> None:
    alice = reg.join("r", "alice", T0)
    sid = reg.publish_track("r", "alice", mic())
    assert reg.track_owner(room, sid) is alice
    assert reg.track_owner(room, "TR_nope") is None


# -- subscriptions --------------------------------------------------------------------------------


def test_update_subscriptions(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "caller", T0)
    agent = reg.join("r", "agent", T0)
    t1 = reg.publish_track("r", "caller", mic("a"))
    t2 = reg.publish_track("r", "caller", mic("b"))
    drain(reg)
    reg.update_subscriptions("r", "agent", [t1, t2], True)
    events = drain(reg)
    assert events == [
        ev.SubscriptionChanged(
            room_name="r",
            subscriber_identity="agent",
            publisher_identity="caller",
            track_sid=t,
            subscribed=True,
        )
        for t in (t1, t2)
    ]
    assert agent.subscriptions == {t1, t2}
    # subscribing again is a no-op
    reg.update_subscriptions("r", "agent", [t1], True)
    assert drain(reg) == []
    reg.update_subscriptions("r", "agent", [t1], False)
    [off] = drain(reg)
    assert isinstance(off, ev.SubscriptionChanged)
    assert (off.track_sid, off.subscribed) == (t1, False)
    assert agent.subscriptions == {t2}
    # unsubscribing from a track not subscribed is a no-op
    reg.update_subscriptions("r", "agent", [t1], False)
    assert drain(reg) == []


def test_own_tracks_are_never_subscribed(reg: RoomRegistry, room: Room) -> None:
    alice = reg.join("r", "alice", T0)
    sid = reg.publish_track("r", "alice", mic())
    drain(reg)
    reg.update_subscriptions("r", "alice", [sid], True)
    assert alice.subscriptions == set()
    assert drain(reg) == []


def test_subscribe_to_unknown_track(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "alice", T0)
    assert "'TR_nope'" in api_error(
        "not_found", reg.update_subscriptions, "r", "alice", ["TR_nope"], True
    )
    api_error("not_found", reg.update_subscriptions, "r", "ghost", [], True)


def test_subscribe_needs_permission_unsubscribe_does_not(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "pub", T0)
    sid = reg.publish_track("r", "pub", mic())
    sub = reg.join("r", "sub", T0)
    reg.update_subscriptions("r", "sub", [sid], True)
    sub.permission = models.ParticipantPermission(can_subscribe=False)
    drain(reg)
    api_error("permission_denied", reg.update_subscriptions, "r", "sub", [sid], True)
    reg.update_subscriptions("r", "sub", [sid], False)
    assert sub.subscriptions == set()
    assert len(drain(reg)) == 1


# -- data -----------------------------------------------------------------------------------------


def test_send_data(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "caller", T0)
    drain(reg)
    packet = models.DataPacket(
        participant_identity="agent", sip_dtmf=models.SipDTMF(code=1, digit="1")
    )
    reg.send_data("r", packet, ["caller", "ghost"])
    [sent] = drain(reg)
    assert sent == ev.DataSent(room_name="r", packet=packet, destinations=("caller", "ghost"))
    reg.send_data("r", packet)
    [broadcast] = drain(reg)
    assert isinstance(broadcast, ev.DataSent)
    assert broadcast.destinations == ()


def test_send_data_limits(reg: RoomRegistry, room: Room) -> None:
    big = models.DataPacket(user=models.UserPacket(payload=b"x" * MAX_DATA_BYTES))
    assert big.ByteSize() > MAX_DATA_BYTES
    assert "too large" in api_error("invalid_argument", reg.send_data, "r", big)
    api_error("not_found", reg.send_data, "nope", models.DataPacket())
    assert drain(reg) == []


# -- timers ---------------------------------------------------------------------------------------


def test_empty_room_closes_after_empty_timeout(reg: RoomRegistry, room: Room) -> None:
    assert reg.next_deadline() == T0 + 300
    reg.handle_timer(T0 + 299.9)
    assert reg.find("r") is room
    assert drain(reg) == []
    reg.handle_timer(T0 + 300)
    [finished] = drain(reg)
    assert isinstance(finished, ev.RoomFinished)
    assert finished.room.name == "r"
    assert room.closed
    assert reg.find("r") is None
    assert reg.next_deadline() is None


def test_room_closes_after_departure_timeout(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "alice", T0 + 1)
    assert reg.next_deadline() is None
    reg.handle_timer(T0 + 10_000)  # occupied rooms never close
    assert reg.find("r") is room
    reg.remove("r", "alice", T0 + 500, Reason.CLIENT_INITIATED)
    drain(reg)
    # departure_timeout counts from the last departure, not from creation
    assert reg.next_deadline() == T0 + 520
    reg.handle_timer(T0 + 519)
    assert reg.find("r") is room
    reg.handle_timer(T0 + 520)
    assert names(drain(reg)) == ["RoomFinished"]
    assert reg.find("r") is None


def test_rejoin_before_departure_timeout_keeps_the_room(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "alice", T0)
    reg.remove("r", "alice", T0 + 1, Reason.CLIENT_INITIATED)
    reg.join("r", "alice", T0 + 10)
    assert reg.next_deadline() is None
    reg.remove("r", "alice", T0 + 100, Reason.CLIENT_INITIATED)
    assert reg.next_deadline() == T0 + 120


def test_custom_timeouts(reg: RoomRegistry) -> None:
    reg.create("a", T0, empty_timeout=5, departure_timeout=2)
    assert reg.next_deadline() == T0 + 5
    reg.join("a", "x", T0 + 1)
    reg.remove("a", "x", T0 + 3, Reason.CLIENT_INITIATED)
    assert reg.next_deadline() == T0 + 5


def test_next_deadline_is_the_earliest_and_timer_closes_only_due_rooms(reg: RoomRegistry) -> None:
    assert reg.next_deadline() is None
    reg.create("late", T0)
    reg.create("early", T0, empty_timeout=10)
    reg.create("busy", T0, empty_timeout=1)
    reg.join("busy", "someone", T0)
    drain(reg)
    assert reg.next_deadline() == T0 + 10
    reg.handle_timer(T0 + 10)
    [finished] = drain(reg)
    assert isinstance(finished, ev.RoomFinished)
    assert finished.room.name == "early"
    assert sorted(r.name for r in reg.rooms()) == ["busy", "late"]
    assert reg.next_deadline() == T0 + 300
    reg.handle_timer(T0 + 1_000_000)
    assert [r.name for r in reg.rooms()] == ["busy"]


def test_handle_timer_closes_all_due_rooms_at_once(reg: RoomRegistry) -> None:
    for i in range(5):
        reg.create(f"r{i}", T0 + i)
    drain(reg)
    reg.handle_timer(T0 + 400)
    assert len(reg) == 0
    assert names(drain(reg)) == ["RoomFinished"] * 5


def test_next_event_on_empty_queue(reg: RoomRegistry) -> None:
    assert reg.next_event() is None


@settings(database=None, max_examples=150)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["create", "join", "leave", "timer"]),
            st.sampled_from(["a", "b"]),
            st.sampled_from(["x", "y"]),
            st.floats(min_value=0, max_value=400, allow_nan=False),
        ),
        max_size=30,
    )
)
def test_deadlines_are_consistent(ops: list[tuple[str, str, str, float]]) -> None:
    reg = RoomRegistry()
    now = T0
    for op, room_name, identity, step in ops:
        now += step
        room = reg.find(room_name)
        if op == "create":
            reg.create(room_name, now)
        elif op == "join" and room is not None:
            reg.join(room_name, identity, now)
        elif op == "leave" and room is not None and identity in room.participants:
            reg.remove(room_name, identity, now, Reason.CLIENT_INITIATED)
        elif op == "timer":
            reg.handle_timer(now)
        deadline = reg.next_deadline()
        empty = [r for r in reg.rooms() if not r.participants]
        # a deadline exactly when some room is empty; occupied rooms have none
        assert (deadline is None) == (not empty)
        if deadline is not None:
            assert deadline == min(r.close_deadline() or 0 for r in empty)
            # firing the timer at the deadline closes at least one room, nothing occupied
            occupied = {r.name for r in reg.rooms() if r.participants}
            before = len(reg)
            reg.handle_timer(deadline)
            assert len(reg) < before
            assert occupied <= {r.name for r in reg.rooms()}
    while (event := reg.next_event()) is not None:
        assert isinstance(event, ev.RoomEvent)


# -- protobuf views and events --------------------------------------------------------------------


def test_room_to_proto(reg: RoomRegistry, room: Room) -> None:
    reg.join("r", "a", T0)
    reg.join("r", "b", T0)
    reg.join("r", "ghost", T0, permission=models.ParticipantPermission(hidden=True))
    reg.publish_track("r", "a", mic())
    proto = room.to_proto()
    assert proto.sid == room.sid
    assert proto.name == "r"
    assert proto.num_participants == 2
    assert proto.num_publishers == 1
    mimes = [c.mime for c in proto.enabled_codecs]
    assert "audio/opus" in mimes
    assert "audio/PCMU" in mimes


def test_participant_to_proto() -> None:
    p = Participant(sid="PA_1", identity="i", name="n", kind=Kind.AGENT, joined_at=12.3456)
    proto = p.to_proto()
    assert (proto.sid, proto.identity, proto.name) == ("PA_1", "i", "n")
    assert proto.kind == Kind.AGENT
    assert proto.state == State.JOINED
    assert proto.joined_at == 12
    assert proto.joined_at_ms == 12345
    assert not proto.is_publisher
    assert proto.disconnect_reason == Reason.UNKNOWN_REASON


@pytest.mark.parametrize(
    "cls",
    [
        ev.RoomStarted,
        ev.RoomFinished,
        ev.ParticipantJoined,
        ev.ParticipantUpdated,
        ev.ParticipantLeft,
        ev.TrackPublished,
        ev.TrackUnpublished,
        ev.TrackMuted,
        ev.SubscriptionChanged,
        ev.DataSent,
        ev.RoomMetadataChanged,
    ],
)
def test_events_are_frozen_keyword_only_dataclasses(cls: type[Any]) -> None:
    params = dataclasses.fields(cls)
    assert all(f.kw_only for f in params)
    with pytest.raises(TypeError):
        cls(*[None] * len(params))
    # a value of each field's type (compiled, the class checks them); None for the protobufs.
    # The types are names, or (compiled) classes.
    samples: dict[str, object] = {"str": "x", "bool": True, "tuple[str, ...]": (), "tuple": ()}
    event = cls(**{f.name: samples.get(getattr(f.type, "__name__", str(f.type))) for f in params})
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, params[0].name, getattr(event, params[0].name))


def test_participant_message_follows_every_change() -> None:
    """`to_proto` sets again only the fields changed since its last message (issue 18): after
    any sequence of changes, back to an empty value too, it is the message a participant made
    afresh with the same fields gives."""
    rng = random.Random(18)
    p = Participant(sid="PA_1", identity="i")
    track = models.TrackInfo(sid="TR_1", type=models.TrackType.AUDIO, name="phone")
    changes: list[Callable[[], None]] = [
        lambda: setattr(p, "name", rng.choice(["", "n", "other"])),
        lambda: setattr(p, "kind", rng.choice([Kind.STANDARD, Kind.SIP, Kind.AGENT])),
        lambda: setattr(p, "state", rng.choice([State.JOINING, State.JOINED, State.ACTIVE])),
        lambda: setattr(p, "metadata", rng.choice(["", "m", "{}"])),
        lambda: setattr(p, "joined_at", rng.choice([0.0, 12.3456, 99.9])),
        lambda: setattr(p, "version", rng.randint(0, 3)),
        lambda: setattr(p, "tracks", rng.choice([{}, {"TR_1": track}])),
        lambda: setattr(
            p, "disconnect_reason", rng.choice([Reason.UNKNOWN_REASON, Reason.CLIENT_INITIATED])
        ),
        lambda: setattr(p, "client_protocol", rng.randint(0, 1)),
        lambda: p.attributes.update({"a": rng.choice(["", "x"])}),
    ]
    for _ in range(400):
        for change in rng.sample(changes, rng.randint(1, 3)):
            change()
        fresh = Participant(
            sid=p.sid,
            identity=p.identity,
            name=p.name,
            kind=p.kind,
            state=p.state,
            metadata=p.metadata,
            attributes=dict(p.attributes),
            tracks=dict(p.tracks),
            joined_at=p.joined_at,
            version=p.version,
            disconnect_reason=p.disconnect_reason,
            client_protocol=p.client_protocol,
        )
        assert p.to_proto() == fresh.to_proto()
