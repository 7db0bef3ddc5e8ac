"""Rooms, participants, tracks and subscriptions: the in-memory model of live sessions."""

from sipbridge.rooms.model import Participant, Room, RoomRegistry

__all__ = ["Participant", "Room", "RoomRegistry"]
