"""Participant state: JOINED until the media is up, ACTIVE then (SDKs wait for ACTIVE)."""

from __future__ import annotations

from livekit.protocol import models

from sipbridge.rooms import RoomRegistry
from sipbridge.rooms import events as ev

State = models.ParticipantInfo.State


def test_joined_then_active_once_with_an_update() -> None:
    rooms = RoomRegistry()
    rooms.create("r", 0.0)
    joined = rooms.join("r", "alice", 1.0)
    assert joined.state == State.JOINED and joined.version == 1
    rooms.set_active("r", "alice")
    rooms.set_active("r", "alice")  # no second update
    assert joined.state == State.ACTIVE and joined.version == 2
    phone = rooms.join("r", "phone", 2.0, active=True)
    assert phone.state == State.ACTIVE and phone.to_proto().state == State.ACTIVE


def test_set_active_emits_one_participant_update() -> None:
    rooms = RoomRegistry()
    rooms.create("r", 0.0)
    rooms.join("r", "alice", 1.0)
    before = len(rooms._events)
    rooms.set_active("r", "alice")
    rooms.set_active("r", "alice")
    added = list(rooms._events)[before:]
    assert [type(e) for e in added] == [ev.ParticipantUpdated]
    assert added[0].participant.state == State.ACTIVE  # type: ignore[union-attr]
