"""The room's track index (owner and subscribers of each track) against what scanning the room
gives, over random sequences of joins, rejoins, publications, (un)subscriptions, permission
changes and departures: a track's owner is found as a scan finds it, and a participant that
leaves takes its tracks out of every subscription, as the scan over the room used to."""

from __future__ import annotations

import contextlib

from hypothesis import example, given, settings
from hypothesis import strategies as st
from livekit.protocol import models

from sipbridge.errors import ApiError
from sipbridge.rooms import Room, RoomRegistry

T0 = 1_700_000_000.25
PEOPLE = ("a", "b", "c")
Reason = models.DisconnectReason

ops = st.lists(
    st.tuples(
        st.sampled_from(
            ("join", "join", "publish", "subscribe", "subscribe", "unsubscribe", "deny", "leave")
        ),
        st.sampled_from(PEOPLE),
        st.sampled_from(PEOPLE),
    ),
    min_size=10,
    max_size=60,
)


def scan_owner(room: Room, sid: str) -> models.ParticipantInfo | None:
    owner = next((p for p in room.participants.values() if sid in p.tracks), None)
    return owner.to_proto() if owner is not None else None


def check(reg: RoomRegistry, room: Room, sids: list[str]) -> None:
    present = room.participants
    published = {sid: p.identity for p in present.values() for sid in p.tracks}
    for sid in sids:
        owner = reg.track_owner(room, sid)
        expected = published.get(sid)
        assert (owner.identity if owner else None) == expected
    for p in present.values():
        # nobody stays subscribed to a track whose publisher left
        assert p.subscriptions <= set(published), (p.identity, p.subscriptions)
    for sid, watching in room.track_subscribers.items():
        assert {i for i in watching if i in present and sid in present[i].subscriptions} == {
            i for i, p in present.items() if sid in p.subscriptions
        }


@settings(max_examples=500, deadline=None)
@given(ops)
@example(
    [
        ("join", "a", ""),
        ("join", "b", ""),
        ("publish", "b", ""),
        ("subscribe", "a", "b"),
        ("leave", "b", ""),
    ]
)
@example(
    [
        ("join", "a", ""),
        ("join", "b", ""),
        ("publish", "b", ""),
        ("subscribe", "a", "b"),
        ("leave", "a", ""),
        ("join", "a", ""),
        ("subscribe", "a", "b"),
        ("leave", "b", ""),
    ]
)
def test_track_index_matches_a_scan_of_the_room(steps: list[tuple[str, str, str]]) -> None:
    reg = RoomRegistry()
    room, _ = reg.create("r", T0)
    sids: list[str] = []
    for n, (op, who, other) in enumerate(steps):
        now = T0 + n
        if op == "join":
            reg.join("r", who, now)
        elif who not in room.participants:
            continue
        elif op == "publish":
            sids.append(reg.publish_track("r", who, models.TrackInfo(type=models.AUDIO)))
        elif op in ("subscribe", "unsubscribe"):
            theirs = list(room.participants[other].tracks) if other in room.participants else []
            with contextlib.suppress(ApiError):  # refused after "deny": nothing changes
                reg.update_subscriptions("r", who, theirs, op == "subscribe")
        elif op == "deny":
            reg.update_participant(
                "r", who, permission=models.ParticipantPermission(can_subscribe=False)
            )
        else:
            reg.remove("r", who, now, Reason.CLIENT_INITIATED)
        while reg.next_event() is not None:
            pass
        check(reg, room, sids)
