"""Rooms, participants and tracks in memory: a pure model with time passed in.

The edge calls methods with `now` (Unix seconds), drains `next_event()` and schedules one timer at
`next_deadline()`, calling `handle_timer(now)` when it fires. Rooms close on their own:
`empty_timeout` after creation when nobody ever joined, `departure_timeout` after the last
participant left (LiveKit's defaults: 300 s and 20 s).
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from livekit.protocol import models
from livekit.protocol.agent_dispatch import RoomAgentDispatch
from livekit.protocol.room import RoomEgress

from sipbridge import ids
from sipbridge.errors import ApiError, invalid_argument, not_found
from sipbridge.rooms import events as ev

DEFAULT_EMPTY_TIMEOUT = 300
DEFAULT_DEPARTURE_TIMEOUT = 20
MAX_ROOM_NAME = 256
MAX_IDENTITY = 256
MAX_METADATA = 64 * 1024
MAX_ATTRIBUTES_BYTES = 64 * 1024
MAX_DATA_BYTES = 64 * 1024

Kind = models.ParticipantInfo.Kind
State = models.ParticipantInfo.State
DisconnectReason = models.DisconnectReason
# The enum values read once: each `Kind.X` goes through protobuf's enum wrapper's Python
# `__getattr__` (about 1 us; a call's join, updates and leave read them some 10 times, issue 18).
STANDARD: Final = Kind.STANDARD
SIP: Final = Kind.SIP
JOINED: Final = State.JOINED
ACTIVE: Final = State.ACTIVE
DISCONNECTED: Final = State.DISCONNECTED


# The model's dataclasses write their own `__init__` (`init=False`): mypyc compiles it, where
# the one the dataclasses module generates stays interpreted (issue 18; sdp/description.py).
@dataclass(init=False, slots=True, kw_only=True)
class Participant:
    sid: str
    identity: str
    name: str = ""
    kind: int = STANDARD
    state: int = JOINED
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    permission: models.ParticipantPermission = field(default_factory=models.ParticipantPermission)
    tracks: dict[str, models.TrackInfo] = field(default_factory=dict)
    subscriptions: set[str] = field(default_factory=set)
    joined_at: float = 0.0
    version: int = 0
    disconnect_reason: int = DisconnectReason.UNKNOWN_REASON
    client_protocol: int = 0  # its SDK's ClientInfo.client_protocol (RPC transport choice)
    # The participant as the protocol has it, kept up to date by `to_proto` (which hands out
    # copies), with the attributes and the permission it holds (a copy; the object copied).
    made: models.ParticipantInfo | None = field(default=None, repr=False, compare=False)
    made_attributes: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    made_permission: models.ParticipantPermission | None = field(
        default=None, repr=False, compare=False
    )
    # The tracks `made` holds copies of, as they were copied (None: to copy again); the
    # registry's `mute_track`, the one change made to a track in place, sets it to None.
    made_tracks: tuple[models.TrackInfo, ...] | None = field(
        default=None, repr=False, compare=False
    )
    # The scalar fields as `made` holds them (name, kind, state, metadata, joined_at, version,
    # is_publisher, disconnect_reason, client_protocol): only those changed are set again.
    made_scalars: tuple[str, int, int, str, float, int, bool, int, int] | None = field(
        default=None, repr=False, compare=False
    )

    def __init__(
        self,
        *,
        sid: str,
        identity: str,
        name: str = "",
        kind: int = STANDARD,
        state: int = JOINED,
        metadata: str = "",
        attributes: dict[str, str] | None = None,
        permission: models.ParticipantPermission | None = None,
        tracks: dict[str, models.TrackInfo] | None = None,
        subscriptions: set[str] | None = None,
        joined_at: float = 0.0,
        version: int = 0,
        disconnect_reason: int = DisconnectReason.UNKNOWN_REASON,
        client_protocol: int = 0,
    ) -> None:
        self.sid = sid
        self.identity = identity
        self.name = name
        self.kind = kind
        self.state = state
        self.metadata = metadata
        self.attributes = {} if attributes is None else attributes
        self.permission = models.ParticipantPermission() if permission is None else permission
        self.tracks = {} if tracks is None else tracks
        self.subscriptions = set() if subscriptions is None else subscriptions
        self.joined_at = joined_at
        self.version = version
        self.disconnect_reason = disconnect_reason
        self.client_protocol = client_protocol
        self.made = None
        self.made_attributes = {}
        self.made_permission = None
        self.made_tracks = None
        self.made_scalars = None

    def to_proto(self) -> models.ParticipantInfo:
        """The participant as the protocol has it: a fresh message, copied from one kept up
        to date with only what changed. Each event of a call (join, track, status updates,
        leave: 6-7 a call) built its message from scratch, 9 us, or 19 us when an attribute
        had changed (a phone's 15-20 `sip.*` attributes, set key by key); a copy and what
        changed cost 3-4 us (issue 18). Of its scalar fields, only those changed since are set:
        each set goes through protobuf's attribute setter (about 0.6 k instructions, 10 of them
        at each of a room's 9 messages with a room each), where comparing the values first is a
        few dozen; an event changes one or two (its version, its state)."""
        made = self.made
        if made is None:  # (the attributes at once: set key by key they cost twice as much)
            made = models.ParticipantInfo(
                sid=self.sid, identity=self.identity, attributes=self.attributes
            )
            self.made, self.made_attributes = made, dict(self.attributes)
        name, kind, state, metadata = self.name, self.kind, self.state, self.metadata
        joined_at, version, is_publisher = self.joined_at, self.version, bool(self.tracks)
        reason, protocol = self.disconnect_reason, self.client_protocol
        last = self.made_scalars
        if last is None:
            last = ("", -1, -1, "", -1.0, -1, False, -1, -1)  # (a new message's: empty)
        if name != last[0]:
            made.name = name
        if kind != last[1]:
            made.kind = kind  # type: ignore[assignment]
        if state != last[2]:
            made.state = state  # type: ignore[assignment]
        if metadata != last[3]:
            made.metadata = metadata
        if joined_at != last[4]:
            made.joined_at = int(joined_at)
            made.joined_at_ms = int(joined_at * 1000)
        if version != last[5]:
            made.version = version
        if is_publisher != last[6]:
            made.is_publisher = is_publisher
        if reason != last[7]:
            made.disconnect_reason = reason  # type: ignore[assignment]
        if protocol != last[8]:
            made.client_protocol = protocol
        self.made_scalars = (
            name,
            kind,
            state,
            metadata,
            joined_at,
            version,
            is_publisher,
            reason,
            protocol,
        )
        permission = self.permission
        if permission is not self.made_permission or made.permission != permission:
            made.permission.CopyFrom(permission)  # (a new one, or changed in place)
            self.made_permission = permission
        tracks = tuple(self.tracks.values())
        # (the same track objects, unchanged since copied: a tuple compares them by identity
        # first; copied again at each of a call's 5-6 events, they cost 3-5 us each, issue 18)
        if tracks != self.made_tracks:
            del made.tracks[:]
            made.tracks.extend(tracks)
            self.made_tracks = tracks
        attributes, had = self.attributes, self.made_attributes
        if attributes != had:  # (changed, even in place)
            kept = made.attributes
            for key in had:
                if key not in attributes:
                    del kept[key]
            for key, value in attributes.items():
                if had.get(key) != value:
                    kept[key] = value
            self.made_attributes = dict(attributes)
        info = models.ParticipantInfo()
        info.CopyFrom(made)
        return info


ENABLED_CODECS = tuple(
    models.Codec(mime=f"audio/{name}") for name in ("opus", "red", "PCMU", "PCMA", "G722")
)
_CODECS: Final = models.Room(enabled_codecs=ENABLED_CODECS)  # what every room's message has


@dataclass(init=False, slots=True, kw_only=True)
class Room:
    sid: str
    name: str
    created_at: float
    empty_timeout: int = DEFAULT_EMPTY_TIMEOUT
    departure_timeout: int = DEFAULT_DEPARTURE_TIMEOUT
    max_participants: int = 0
    metadata: str = ""
    agents: list[RoomAgentDispatch] = field(default_factory=list)
    egress: RoomEgress | None = None  # recordings to start with the room (RoomConfiguration)
    participants: dict[str, Participant] = field(default_factory=dict)
    last_left_at: float | None = None
    closed: bool = False
    # [participants, of them visible, of them publishing, of them SIP], kept as they join,
    # publish and leave (every event carries the room: counting them on each would grow with
    # the square of the room; a call asks whether another caller is in its room); counted
    # again when the first no longer matches (participants put in directly)
    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0], repr=False, compare=False)
    # Track sid -> its publisher's identity, and -> the identities subscribed to it: kept by the
    # registry as tracks are published, subscriptions change and participants leave, so that
    # neither finding a track's owner nor forgetting a leaver's tracks scans the room (a room
    # shared by many callers: once per call each, that grew with the square of the room).
    track_owners: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    track_subscribers: dict[str, set[str]] = field(default_factory=dict, repr=False, compare=False)
    # The events' snapshot of the room (`snapshot`) and what it was taken at: (metadata,
    # visible participants, publishers), all of the room's proto that changes after creation.
    last_snapshot: models.Room | None = field(default=None, repr=False, compare=False)
    snapshot_of: tuple[str, int, int] = field(default=("", -1, -1), repr=False, compare=False)

    def __init__(
        self,
        *,
        sid: str,
        name: str,
        created_at: float,
        empty_timeout: int = DEFAULT_EMPTY_TIMEOUT,
        departure_timeout: int = DEFAULT_DEPARTURE_TIMEOUT,
        max_participants: int = 0,
        metadata: str = "",
        agents: list[RoomAgentDispatch] | None = None,
        egress: RoomEgress | None = None,
        participants: dict[str, Participant] | None = None,
        last_left_at: float | None = None,
        closed: bool = False,
    ) -> None:
        self.sid = sid
        self.name = name
        self.created_at = created_at
        self.empty_timeout = empty_timeout
        self.departure_timeout = departure_timeout
        self.max_participants = max_participants
        self.metadata = metadata
        self.agents = [] if agents is None else agents
        self.egress = egress
        self.participants = {} if participants is None else participants
        self.last_left_at = last_left_at
        self.closed = closed
        self.counts = [0, 0, 0, 0]
        self.track_owners = {}
        self.track_subscribers = {}
        self.last_snapshot = None
        self.snapshot_of = ("", -1, -1)

    def count(self, participant: Participant, sign: int) -> None:
        """`participant` joined (1) or left (-1): the counts follow."""
        counts = self.counts
        counts[0] += sign
        counts[1] += sign * (not participant.permission.hidden)
        counts[2] += sign * bool(participant.tracks)
        counts[3] += sign * (participant.kind == SIP)

    def _counts(self) -> list[int]:
        counts = self.counts
        if counts[0] != len(self.participants):
            people = self.participants.values()
            counts[:] = (
                len(self.participants),
                sum(1 for p in people if not p.permission.hidden),
                sum(1 for p in people if p.tracks),
                sum(1 for p in people if p.kind == SIP),
            )
        return counts

    def sip_participants(self) -> int:
        """How many participants of kind SIP (callers and callees) are in the room."""
        return self._counts()[3]

    def to_proto(self) -> models.Room:
        counts = self._counts()
        room = models.Room(
            sid=self.sid,
            name=self.name,
            empty_timeout=self.empty_timeout,
            departure_timeout=self.departure_timeout,
            max_participants=self.max_participants,
            creation_time=int(self.created_at),
            creation_time_ms=int(self.created_at * 1000),
            metadata=self.metadata,
            num_participants=counts[1],
            num_publishers=counts[2],
        )
        room.MergeFrom(_CODECS)  # (the codecs copied in: given to the constructor, 3x the cost)
        return room

    def snapshot(self) -> models.Room:
        """`to_proto()` as the registry's events carry it: one message shared by the events of
        one state of the room (a call's join, track, updates and leave: 8-10 events, 4 us a
        proto, issue 18). Their consumers copy it (webhooks, signalling) and never change it;
        `to_proto` stays a fresh message for callers that might."""
        counts = self._counts()
        key = (self.metadata, counts[1], counts[2])
        snapshot = self.last_snapshot
        if snapshot is None or key != self.snapshot_of:
            # (a copy of the last with what changed: every join and leave changes the counts;
            # built anew, the codecs and all, cost twice as much)
            if snapshot is None:
                snapshot = self.to_proto()
            else:
                last, snapshot = snapshot, models.Room()
                snapshot.CopyFrom(last)
                snapshot.metadata = self.metadata
                snapshot.num_participants = counts[1]
                snapshot.num_publishers = counts[2]
            self.last_snapshot = snapshot
            self.snapshot_of = key
        return snapshot

    def close_deadline(self) -> float | None:
        """When this room closes if nothing changes, or None while someone is in it."""
        if self.participants:
            return None
        if self.last_left_at is None:
            return self.created_at + self.empty_timeout
        return self.last_left_at + self.departure_timeout


class RoomRegistry:
    """Every live room, by name."""

    def __init__(self) -> None:
        self._rooms: dict[str, Room] = {}
        self._events: deque[ev.RoomEvent] = deque()
        # (deadline, room) for each room that became empty; an entry whose room changed since
        # (someone joined, it closed) is stale and skipped. Finding the next closing room no
        # longer scans every room on every change (thousands of rooms, a commit per call step).
        self._deadlines: list[tuple[float, int, Room]] = []
        self._pushed = itertools.count()

    # -- events and time -------------------------------------------------------------------

    def next_event(self) -> ev.RoomEvent | None:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float | None:
        heap = self._deadlines
        while heap:
            deadline, _, room = heap[0]
            if not room.closed and room.close_deadline() == deadline:
                return deadline
            heapq.heappop(heap)  # stale: the room was joined, changed or closed
        return None

    def handle_timer(self, now: float) -> None:
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            _, _, room = heapq.heappop(self._deadlines)
            self._close(room, now, DisconnectReason.ROOM_CLOSED)

    def _watch(self, room: Room) -> None:
        """The room's closing time may have changed: remember it."""
        deadline = room.close_deadline()
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, next(self._pushed), room))

    # -- rooms -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rooms)

    def rooms(self, names: Iterable[str] = ()) -> list[Room]:
        wanted = set(names)
        return [r for r in self._rooms.values() if not wanted or r.name in wanted]

    def get(self, name: str) -> Room:
        room = self._rooms.get(name)
        if room is None:
            raise not_found(f"room {name!r} not found")
        return room

    def find(self, name: str) -> Room | None:
        return self._rooms.get(name)

    def create(
        self,
        name: str,
        now: float,
        *,
        empty_timeout: int = 0,
        departure_timeout: int = 0,
        max_participants: int = 0,
        metadata: str = "",
        agents: Iterable[RoomAgentDispatch] = (),
        egress: RoomEgress | None = None,
    ) -> tuple[Room, bool]:
        """The room called `name`, created if needed; the flag says whether it was created."""
        validate_room_name(name)
        if len(metadata) > MAX_METADATA:
            raise invalid_argument(f"metadata: too long (max {MAX_METADATA} bytes)")
        existing = self._rooms.get(name)
        if existing is not None:
            return existing, False
        room = Room(
            sid=ids.new_id(ids.ROOM),
            name=name,
            created_at=now,
            empty_timeout=empty_timeout or DEFAULT_EMPTY_TIMEOUT,
            departure_timeout=departure_timeout or DEFAULT_DEPARTURE_TIMEOUT,
            max_participants=max_participants,
            metadata=metadata,
            agents=list(agents),
            egress=egress,
        )
        self._rooms[name] = room
        self._watch(room)
        self._events.append(ev.RoomStarted(room=room.snapshot()))
        return room, True

    def delete(self, name: str, now: float) -> None:
        self._close(self.get(name), now, DisconnectReason.ROOM_DELETED)

    def _close(self, room: Room, now: float, reason: int) -> None:
        for identity in list(room.participants):
            self._remove(room, identity, reason, now)
        room.closed = True
        del self._rooms[room.name]
        self._events.append(ev.RoomFinished(room=room.snapshot()))

    def update_metadata(self, name: str, metadata: str) -> Room:
        room = self.get(name)
        if len(metadata) > MAX_METADATA:
            raise invalid_argument(f"metadata: too long (max {MAX_METADATA} bytes)")
        room.metadata = metadata
        self._events.append(ev.RoomMetadataChanged(room=room.snapshot()))
        return room

    # -- participants ----------------------------------------------------------------------

    def participant(self, room_name: str, identity: str) -> Participant:
        participant = self.get(room_name).participants.get(identity)
        if participant is None:
            raise not_found(f"participant {identity!r} not found in room {room_name!r}")
        return participant

    def join(
        self,
        room_name: str,
        identity: str,
        now: float,
        *,
        name: str = "",
        kind: int = STANDARD,
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        permission: models.ParticipantPermission | None = None,
        active: bool = False,
        client_protocol: int = 0,
    ) -> Participant:
        """Add a participant; one with the same identity is replaced (DUPLICATE_IDENTITY).

        It is JOINED until its media is up (`set_active`), or ACTIVE at once with `active`
        (a phone, whose media is ready when it joins). SDKs wait for ACTIVE participants."""
        room = self.get(room_name)
        if not identity or len(identity) > MAX_IDENTITY:
            raise invalid_argument(f"identity: must be 1-{MAX_IDENTITY} characters")
        if len(name) > MAX_IDENTITY:
            raise invalid_argument(f"name: too long (max {MAX_IDENTITY} characters)")
        if len(metadata) > MAX_METADATA:
            raise invalid_argument(f"metadata: too long (max {MAX_METADATA} bytes)")
        attrs = dict(attributes or {})
        validate_attributes(attrs)
        if identity in room.participants:
            self._remove(room, identity, DisconnectReason.DUPLICATE_IDENTITY, now)
        elif room.max_participants and len(room.participants) >= room.max_participants:
            raise ApiError("resource_exhausted", f"room {room_name!r} is full")
        perm = permission or models.ParticipantPermission(
            can_subscribe=True, can_publish=True, can_publish_data=True
        )
        participant = Participant(
            sid=ids.new_id(ids.PARTICIPANT),
            identity=identity,
            name=name,
            kind=kind,
            metadata=metadata,
            attributes=attrs,
            permission=perm,
            joined_at=now,
            version=1,
            state=ACTIVE if active else JOINED,
            client_protocol=client_protocol,
        )
        room.participants[identity] = participant
        room.count(participant, 1)
        room.last_left_at = None
        self._events.append(
            ev.ParticipantJoined(room=room.snapshot(), participant=participant.to_proto())
        )
        return participant

    def remove(self, room_name: str, identity: str, now: float, reason: int) -> None:
        room = self.get(room_name)
        if identity not in room.participants:
            raise not_found(f"participant {identity!r} not found in room {room_name!r}")
        self._remove(room, identity, reason, now)

    def _remove(self, room: Room, identity: str, reason: int, now: float) -> None:
        participant = room.participants.pop(identity)
        room.count(participant, -1)
        for sid in participant.subscriptions:
            _forget(room, sid, identity)
        for track in list(participant.tracks.values()):
            self._events.append(
                ev.TrackUnpublished(
                    room=room.snapshot(), participant=participant.to_proto(), track=_copy(track)
                )
            )
        participant.state = DISCONNECTED
        participant.disconnect_reason = reason
        participant.version += 1
        for sid in participant.tracks:
            if room.track_owners.get(sid) == identity:
                del room.track_owners[sid]
            for subscriber in room.track_subscribers.pop(sid, ()):
                other = room.participants.get(subscriber)
                if other is not None:
                    other.subscriptions.discard(sid)
        if not room.participants:
            room.last_left_at = now
            self._watch(room)
        self._events.append(
            ev.ParticipantLeft(room=room.snapshot(), participant=participant.to_proto())
        )

    def set_active(self, room_name: str, identity: str) -> None:
        """The participant's media is connected: JOINED -> ACTIVE (an update to everyone)."""
        room = self.get(room_name)
        participant = self.participant(room_name, identity)
        if participant.state == ACTIVE:
            return
        participant.state = ACTIVE
        participant.version += 1
        self._events.append(
            ev.ParticipantUpdated(room=room.snapshot(), participant=participant.to_proto())
        )

    def update_participant(
        self,
        room_name: str,
        identity: str,
        *,
        name: str = "",
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        permission: models.ParticipantPermission | None = None,
    ) -> Participant:
        """UpdateParticipant semantics: empty name/metadata leave the value as is; attributes
        are a diff where an empty value deletes the key."""
        room = self.get(room_name)
        participant = self.participant(room_name, identity)
        if len(metadata) > MAX_METADATA:
            raise invalid_argument(f"metadata: too long (max {MAX_METADATA} bytes)")
        if len(name) > MAX_IDENTITY:
            raise invalid_argument(f"name: too long (max {MAX_IDENTITY} characters)")
        merged = dict(participant.attributes)
        for key, value in (attributes or {}).items():
            if value:
                merged[key] = value
            else:
                merged.pop(key, None)
        validate_attributes(merged)
        if name:
            participant.name = name
        if metadata:
            participant.metadata = metadata
        participant.attributes = merged
        if permission is not None:
            room.count(participant, -1)
            participant.permission = permission
            room.count(participant, 1)
            if not permission.can_subscribe:
                self._unsubscribe_all(room, participant)
        participant.version += 1
        self._events.append(
            ev.ParticipantUpdated(room=room.snapshot(), participant=participant.to_proto())
        )
        return participant

    # -- tracks, subscriptions, data -------------------------------------------------------

    def publish_track(self, room_name: str, identity: str, track: models.TrackInfo) -> str:
        """Publish a track for a participant; returns its `TR_` sid."""
        room = self.get(room_name)
        participant = self.participant(room_name, identity)
        if not track.sid:
            track.sid = ids.new_id(ids.TRACK)
        room.count(participant, -1)
        participant.tracks[track.sid] = track
        room.track_owners[track.sid] = identity
        room.count(participant, 1)
        participant.version += 1
        self._events.append(
            ev.TrackPublished(
                room=room.snapshot(), participant=participant.to_proto(), track=_copy(track)
            )
        )
        return track.sid

    def mute_track(
        self, room_name: str, identity: str, track_sid: str, muted: bool
    ) -> models.TrackInfo:
        room = self.get(room_name)
        participant = self.participant(room_name, identity)
        track = participant.tracks.get(track_sid)
        if track is None:
            raise not_found(f"track {track_sid!r} not found for participant {identity!r}")
        if track.muted != muted:
            track.muted = muted
            participant.made_tracks = None  # (changed in place: `to_proto` copies it again)
            participant.version += 1
            self._events.append(
                ev.TrackMuted(
                    room=room.snapshot(), participant=participant.to_proto(), track=_copy(track)
                )
            )
        return track

    def track_owner(self, room: Room, track_sid: str) -> Participant | None:
        identity = room.track_owners.get(track_sid)
        if identity is not None:
            owner = room.participants.get(identity)
            if owner is not None and track_sid in owner.tracks:
                return owner
        for participant in room.participants.values():  # a track not published through us
            if track_sid in participant.tracks:
                return participant
        return None

    def update_subscriptions(
        self, room_name: str, identity: str, track_sids: Iterable[str], subscribe: bool
    ) -> None:
        room = self.get(room_name)
        subscriber = self.participant(room_name, identity)
        if subscribe and not subscriber.permission.can_subscribe:
            raise ApiError("permission_denied", f"participant {identity!r} cannot subscribe")
        owners: list[tuple[str, Participant]] = []
        for sid in track_sids:  # all or nothing: check every track before changing any
            owner = self.track_owner(room, sid)
            if owner is None:
                raise not_found(f"track {sid!r} not found in room {room_name!r}")
            owners.append((sid, owner))
        for sid, owner in owners:
            if owner.identity == identity:
                continue
            if subscribe == (sid in subscriber.subscriptions):
                continue
            if subscribe:
                subscriber.subscriptions.add(sid)
                room.track_subscribers.setdefault(sid, set()).add(identity)
            else:
                subscriber.subscriptions.discard(sid)
                _forget(room, sid, identity)
            self._events.append(
                ev.SubscriptionChanged(
                    room_name=room_name,
                    subscriber_identity=identity,
                    publisher_identity=owner.identity,
                    track_sid=sid,
                    subscribed=subscribe,
                )
            )

    def _unsubscribe_all(self, room: Room, subscriber: Participant) -> None:
        for sid in sorted(subscriber.subscriptions):
            owner = self.track_owner(room, sid)
            self._events.append(
                ev.SubscriptionChanged(
                    room_name=room.name,
                    subscriber_identity=subscriber.identity,
                    publisher_identity=owner.identity if owner else "",
                    track_sid=sid,
                    subscribed=False,
                )
            )
            _forget(room, sid, subscriber.identity)
        subscriber.subscriptions.clear()

    def send_data(
        self,
        room_name: str,
        packet: models.DataPacket,
        destinations: Iterable[str] = (),
    ) -> None:
        """Queue a data packet for delivery; unknown destination identities are ignored."""
        self.get(room_name)
        if packet.ByteSize() > MAX_DATA_BYTES:
            raise invalid_argument(f"data: packet too large (max {MAX_DATA_BYTES} bytes)")
        self._events.append(
            ev.DataSent(room_name=room_name, packet=packet, destinations=tuple(destinations))
        )


def _forget(room: Room, track_sid: str, subscriber: str) -> None:
    """`subscriber` no longer subscribed to `track_sid` (the room's index follows)."""
    watching = room.track_subscribers.get(track_sid)
    if watching is not None:
        watching.discard(subscriber)
        if not watching:
            del room.track_subscribers[track_sid]


def _copy(track: models.TrackInfo) -> models.TrackInfo:
    snapshot = models.TrackInfo()
    snapshot.CopyFrom(track)
    return snapshot


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")  # (one search in C, not a generator a name)


def room_name_problem(name: str) -> str | None:
    """Why `name` cannot name a room, or None. As LiveKit: a length limit; and no control
    characters, which would end up in logs and SIP headers."""
    if len(name) > MAX_ROOM_NAME:
        return f"room name too long (max {MAX_ROOM_NAME} characters)"
    if _CONTROL.search(name):
        return f"room name {name!r} contains control characters"
    return None


def validate_room_name(name: str) -> None:
    if not name:
        raise invalid_argument("room name must be set")
    problem = room_name_problem(name)
    if problem:
        raise invalid_argument(problem)


def validate_attributes(attributes: Mapping[str, str]) -> None:
    size = 0
    for key, value in attributes.items():
        if not key:
            raise invalid_argument("attributes: empty attribute name")
        # (UTF-8 bytes; an ASCII string's are its length, known without encoding it)
        size += len(key) if key.isascii() else len(key.encode())
        size += len(value) if value.isascii() else len(value.encode())
    if size > MAX_ATTRIBUTES_BYTES:
        raise invalid_argument(f"attributes: too large (max {MAX_ATTRIBUTES_BYTES} bytes)")
