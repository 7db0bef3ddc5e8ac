"""What happened in the rooms model, for the edge to act on (webhooks, signalling, SIP).

Each event carries protobuf snapshots taken when it happened, so a consumer that runs later
(a webhook retry, say) reports the state of that moment.
"""

from __future__ import annotations

from dataclasses import dataclass

from livekit.protocol import models


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomStarted:
    room: models.Room


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomFinished:
    room: models.Room


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantJoined:
    room: models.Room
    participant: models.ParticipantInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantUpdated:
    room: models.Room
    participant: models.ParticipantInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantLeft:
    room: models.Room
    participant: models.ParticipantInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackPublished:
    room: models.Room
    participant: models.ParticipantInfo
    track: models.TrackInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackUnpublished:
    room: models.Room
    participant: models.ParticipantInfo
    track: models.TrackInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackMuted:
    room: models.Room
    participant: models.ParticipantInfo
    track: models.TrackInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionChanged:
    """`subscriber` now does (or no longer does) receive `track_sid` of `publisher_identity`."""

    room_name: str
    subscriber_identity: str
    publisher_identity: str
    track_sid: str
    subscribed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DataSent:
    """A data packet to deliver; `destinations` empty means every participant but the sender."""

    room_name: str
    packet: models.DataPacket
    destinations: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomMetadataChanged:
    room: models.Room


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
