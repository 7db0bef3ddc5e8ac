"""What happened in the rooms model, for the edge to act on (webhooks, signalling, SIP).

Each event carries protobuf snapshots taken when it happened, so a consumer that runs later
(a webhook retry, say) reports the state of that moment.

Each writes its own `__init__` (`init=False`): mypyc compiles it, where the one the dataclasses
module generates stays interpreted, 8-11 events a call (issue 18; as sdp/description.py does).
"""

from __future__ import annotations

from dataclasses import dataclass

from livekit.protocol import models


@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class RoomStarted:
    room: models.Room

    def __init__(self, *, room: models.Room) -> None:
        object.__setattr__(self, "room", room)


@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class RoomFinished:
    room: models.Room

    def __init__(self, *, room: models.Room) -> None:
        object.__setattr__(self, "room", room)


@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class ParticipantJoined:
    room: models.Room
    participant: models.ParticipantInfo

    def __init__(self, *, room: models.Room, participant: models.ParticipantInfo) -> None:
        object.__setattr__(self, "room", room)
        object.__setattr__(self, "participant", participant)


@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class ParticipantUpdated:
    room: models.Room
    participant: models.ParticipantInfo

    def __init__(self, *, room: models.Room, participant: models.ParticipantInfo) -> None:
        object.__setattr__(self, "room", room)
        object.__setattr__(self, "participant", participant)


@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class ParticipantLeft:
    room: models.Room
    participant: models.ParticipantInfo

    def __init__(self, *, room: models.Room, participant: models.ParticipantInfo) -> None:
        object.__setattr__(self, "room", room)
        object.__setattr__(self, "participant", participant)


@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class TrackPublished:
    room: models.Room
    participant: models.ParticipantInfo
    track: models.TrackInfo

    def __init__(
        self,
        *,
        room: models.Room,
        participant: models.ParticipantInfo,
        track: models.TrackInfo,
    ) -> None:
        object.__setattr__(self, "room", room)
        object.__setattr__(self, "participant", participant)
        object.__setattr__(self, "track", track)


@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class TrackUnpublished:
    room: models.Room
    participant: models.ParticipantInfo
    track: models.TrackInfo

    def __init__(
        self,
        *,
        room: models.Room,
        participant: models.ParticipantInfo,
        track: models.TrackInfo,
    ) -> None:
        object.__setattr__(self, "room", room)
        object.__setattr__(self, "participant", participant)
        object.__setattr__(self, "track", track)


@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class TrackMuted:
    room: models.Room
    participant: models.ParticipantInfo
    track: models.TrackInfo

    def __init__(
        self,
        *,
        room: models.Room,
        participant: models.ParticipantInfo,
        track: models.TrackInfo,
    ) -> None:
        object.__setattr__(self, "room", room)
        object.__setattr__(self, "participant", participant)
        object.__setattr__(self, "track", track)


@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class SubscriptionChanged:
    """`subscriber` now does (or no longer does) receive `track_sid` of `publisher_identity`."""

    room_name: str
    subscriber_identity: str
    publisher_identity: str
    track_sid: str
    subscribed: bool

    def __init__(
        self,
        *,
        room_name: str,
        subscriber_identity: str,
        publisher_identity: str,
        track_sid: str,
        subscribed: bool,
    ) -> None:
        object.__setattr__(self, "room_name", room_name)
        object.__setattr__(self, "subscriber_identity", subscriber_identity)
        object.__setattr__(self, "publisher_identity", publisher_identity)
        object.__setattr__(self, "track_sid", track_sid)
        object.__setattr__(self, "subscribed", subscribed)


@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class DataSent:
    """A data packet to deliver; `destinations` empty means every participant but the sender."""

    room_name: str
    packet: models.DataPacket
    destinations: tuple[str, ...]

    def __init__(
        self,
        *,
        room_name: str,
        packet: models.DataPacket,
        destinations: tuple[str, ...],
    ) -> None:
        object.__setattr__(self, "room_name", room_name)
        object.__setattr__(self, "packet", packet)
        object.__setattr__(self, "destinations", destinations)


@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class RoomMetadataChanged:
    room: models.Room

    def __init__(self, *, room: models.Room) -> None:
        object.__setattr__(self, "room", room)


RoomEvent = (
    RoomStarted
    | RoomFinished
    | ParticipantJoined
    | ParticipantUpdated
    | ParticipantLeft
    | TrackPublished
    | TrackUnpublished
    | TrackMuted
    | SubscriptionChanged
    | DataSent
    | RoomMetadataChanged
)
