"""An event's room carries its counts (num_participants: visible ones; num_publishers), kept as
participants join, publish, change permission and leave rather than counted on every event."""

from __future__ import annotations

from livekit.protocol import models
from livekit.protocol.agent_dispatch import RoomAgentDispatch

from sipbridge.rooms.model import Participant, Room, RoomRegistry

T0 = 1_700_000_000.0


def counted(room: Room) -> tuple[int, int]:
    """What the room says, against a count of its participants now."""
    proto = room.to_proto()
    people = list(room.participants.values())
    assert proto.num_participants == sum(1 for p in people if not p.permission.hidden)
    assert proto.num_publishers == sum(1 for p in people if p.tracks)
    return proto.num_participants, proto.num_publishers


def test_counts_follow_joins_tracks_permissions_and_leaves() -> None:
    reg = RoomRegistry()
    room, _ = reg.create("r", T0)
    assert counted(room) == (0, 0)
    reg.join("r", "a", T0)
    reg.join("r", "b", T0)
    hidden = models.ParticipantPermission(hidden=True, can_subscribe=True)
    reg.join("r", "recorder", T0, permission=hidden)
    assert counted(room) == (2, 0)
    reg.publish_track("r", "a", models.TrackInfo(type=models.TrackType.AUDIO))
    reg.publish_track("r", "a", models.TrackInfo(type=models.TrackType.AUDIO))  # a second one
    assert counted(room) == (2, 1)
    reg.update_participant("r", "b", permission=hidden)
    assert counted(room) == (1, 1)
    reg.update_participant("r", "b", permission=models.ParticipantPermission(can_subscribe=True))
    assert counted(room) == (2, 1)
    reg.join("r", "a", T0)  # the same identity again: the old one (a publisher) is replaced
    assert counted(room) == (2, 0)
    reg.remove("r", "b", T0, 0)
    reg.remove("r", "recorder", T0, 0)
    assert counted(room) == (1, 0)


def test_sip_participants_counted_as_they_join_change_and_leave() -> None:
    sip = models.ParticipantInfo.Kind.SIP
    reg = RoomRegistry()
    room, _ = reg.create("r", T0)

    def sip_count() -> int:
        n = room.sip_participants()
        assert n == sum(1 for p in room.participants.values() if p.kind == sip)
        return n

    assert sip_count() == 0
    reg.join("r", "agent", T0)
    reg.join("r", "caller-1", T0, kind=sip)
    reg.join("r", "caller-2", T0, kind=sip)
    assert sip_count() == 2
    reg.publish_track("r", "caller-1", models.TrackInfo(type=models.TrackType.AUDIO))
    hidden = models.ParticipantPermission(hidden=True, can_subscribe=True)
    reg.update_participant("r", "caller-2", permission=hidden)
    assert sip_count() == 2
    reg.join("r", "caller-1", T0)  # the identity taken over by a participant not of kind SIP
    assert sip_count() == 1
    reg.remove("r", "caller-2", T0, 0)
    assert sip_count() == 0
    room.participants["direct"] = Participant(sid="PA_x", identity="direct", kind=sip)
    assert sip_count() == 1  # put in directly: counted again


def test_events_carry_the_counts_of_their_moment() -> None:
    reg = RoomRegistry()
    reg.create("r", T0)
    reg.join("r", "a", T0)
    reg.publish_track("r", "a", models.TrackInfo(type=models.TrackType.AUDIO))
    reg.join("r", "b", T0)
    reg.remove("r", "a", T0, 0)
    events = []
    for _ in range(100):  # bounded: a handful are queued
        event = reg.next_event()
        if event is None:
            break
        events.append(event)
    rooms = [e.room for e in events if isinstance(getattr(e, "room", None), models.Room)]
    counts = [(r.num_participants, r.num_publishers) for r in rooms]
    # started, a joined, a published, b joined, a's track unpublished and a left (a is out)
    assert counts == [(0, 0), (1, 0), (1, 1), (2, 1), (1, 0), (1, 0)]


def test_participants_put_in_directly_are_counted_again() -> None:
    room = Room(sid="RM_x", name="x", created_at=T0)
    room.participants["p"] = Participant(sid="PA_p", identity="p")
    assert counted(room) == (1, 0)


def test_events_of_one_room_state_share_its_snapshot_and_a_change_takes_a_new_one() -> None:
    """The events carry the room as it was (counts, metadata): one message while that does not
    change, a new one when it does - never an earlier one changed under an event."""
    reg = RoomRegistry()
    room, _ = reg.create("r", T0)
    reg.join("r", "a", T0)
    reg.update_participant("r", "a", attributes={"k": "v"})  # the room's proto: unchanged
    reg.publish_track("r", "a", models.TrackInfo(type=models.TrackType.AUDIO))
    reg.update_metadata("r", "m1")
    hidden = models.ParticipantPermission(hidden=True)
    reg.join("r", "recorder", T0, permission=hidden)
    reg.update_participant("r", "recorder", permission=models.ParticipantPermission())
    events = []
    while (event := reg.next_event()) is not None:
        events.append(event)
    rooms = [event.room for event in events if hasattr(event, "room")]
    assert [(r.metadata, r.num_participants, r.num_publishers) for r in rooms] == [
        ("", 0, 0),  # started
        ("", 1, 0),  # a joined
        ("", 1, 0),  # a updated
        ("", 1, 1),  # a's track
        ("m1", 1, 1),  # metadata
        ("m1", 1, 1),  # the recorder joined, hidden
        ("m1", 2, 1),  # ... and shown
    ]
    assert rooms[1] is rooms[2] and rooms[4] is rooms[5]
    assert rooms[0] is not rooms[1] and rooms[3] is not rooms[4] and rooms[5] is not rooms[6]
    assert room.to_proto() == rooms[6] and room.to_proto() is not room.to_proto()


def test_participants_and_rooms_made_directly_share_no_defaults() -> None:
    """Their own `__init__` (compiled) makes fresh containers for each, as the dataclass did."""
    one, two = Participant(sid="PA_1", identity="1"), Participant(sid="PA_2", identity="2")
    one.attributes["k"] = "v"
    one.tracks["TR_1"] = models.TrackInfo(sid="TR_1")
    one.subscriptions.add("TR_2")
    one.permission.hidden = True
    assert (two.attributes, two.tracks, two.subscriptions) == ({}, {}, set())
    assert not two.permission.hidden
    first, second = (
        Room(sid="RM_1", name="1", created_at=T0),
        Room(sid="RM_2", name="2", created_at=T0),
    )
    first.participants["1"] = one
    first.agents.append(RoomAgentDispatch(agent_name="a"))
    first.counts[0] = 5
    assert (second.participants, second.agents, second.counts) == ({}, [], [0, 0, 0, 0])
