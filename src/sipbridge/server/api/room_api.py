"""`livekit.RoomService` Twirp methods on the in-memory rooms model."""

from __future__ import annotations

from typing import Any

from livekit.protocol import models
from livekit.protocol import room as proto

from sipbridge.errors import ApiError, invalid_argument
from sipbridge.server.api.auth import Claims
from sipbridge.server.api.twirp import TwirpServer, not_implemented_yet
from sipbridge.server.state.rooms_runtime import RoomsRuntime

SERVICE = "livekit.RoomService"
DisconnectReason = models.DisconnectReason


def require_room_create(_: Any, claims: Claims) -> None:
    if not claims.video_grant("roomCreate"):
        raise ApiError("permission_denied", "requires the roomCreate grant")


def require_room_list(_: Any, claims: Claims) -> None:
    if not claims.video_grant("roomList"):
        raise ApiError("permission_denied", "requires the roomList grant")


def require_room_admin(req: Any, claims: Claims) -> None:
    if not claims.video_grant("roomAdmin"):
        raise ApiError("permission_denied", "requires the roomAdmin grant")
    if claims.room != req.room:
        raise ApiError("permission_denied", f"token is not valid for room {req.room!r}")


class RoomApi:
    def __init__(self, runtime: RoomsRuntime) -> None:
        self.runtime = runtime
        self.rooms = runtime.registry

    def register(self, twirp: TwirpServer) -> None:
        admin = require_room_admin
        methods: list[tuple[str, type[Any], Any, Any]] = [
            ("CreateRoom", proto.CreateRoomRequest, self.create_room, require_room_create),
            ("ListRooms", proto.ListRoomsRequest, self.list_rooms, require_room_list),
            ("DeleteRoom", proto.DeleteRoomRequest, self.delete_room, require_room_create),
            ("ListParticipants", proto.ListParticipantsRequest, self.list_participants, admin),
            ("GetParticipant", proto.RoomParticipantIdentity, self.get_participant, admin),
            ("RemoveParticipant", proto.RoomParticipantIdentity, self.remove_participant, admin),
            ("UpdateParticipant", proto.UpdateParticipantRequest, self.update_participant, admin),
            ("MutePublishedTrack", proto.MuteRoomTrackRequest, self.mute_track, admin),
            ("UpdateRoomMetadata", proto.UpdateRoomMetadataRequest, self.update_metadata, admin),
            ("SendData", proto.SendDataRequest, self.send_data, admin),
            ("UpdateSubscriptions", proto.UpdateSubscriptionsRequest, self.subscriptions, admin),
            ("ForwardParticipant", proto.ForwardParticipantRequest, self.not_yet, admin),
            ("MoveParticipant", proto.MoveParticipantRequest, self.not_yet, admin),
        ]
        for name, request_type, handler, auth in methods:
            twirp.register(SERVICE, name, request_type, handler, auth)

    async def create_room(self, req: proto.CreateRoomRequest, _: Claims) -> models.Room:
        room, _created = self.rooms.create(
            req.name,
            self.runtime.now(),
            empty_timeout=req.empty_timeout,
            departure_timeout=req.departure_timeout,
            max_participants=req.max_participants,
            metadata=req.metadata,
            agents=req.agents,
            egress=req.egress if req.HasField("egress") else None,
        )
        self.runtime.commit()
        return room.to_proto()

    async def list_rooms(self, req: proto.ListRoomsRequest, _: Claims) -> proto.ListRoomsResponse:
        return proto.ListRoomsResponse(rooms=[r.to_proto() for r in self.rooms.rooms(req.names)])

    async def delete_room(
        self, req: proto.DeleteRoomRequest, _: Claims
    ) -> proto.DeleteRoomResponse:
        try:
            self.rooms.delete(req.room, self.runtime.now())
        finally:
            self.runtime.commit()
        return proto.DeleteRoomResponse()

    async def list_participants(
        self, req: proto.ListParticipantsRequest, _: Claims
    ) -> proto.ListParticipantsResponse:
        room = self.rooms.find(req.room)  # LiveKit answers an empty list for unknown rooms
        if room is None:
            return proto.ListParticipantsResponse()
        return proto.ListParticipantsResponse(
            participants=[p.to_proto() for p in room.participants.values()]
        )

    async def get_participant(
        self, req: proto.RoomParticipantIdentity, _: Claims
    ) -> models.ParticipantInfo:
        return self.rooms.participant(req.room, req.identity).to_proto()

    async def remove_participant(
        self, req: proto.RoomParticipantIdentity, _: Claims
    ) -> proto.RemoveParticipantResponse:
        try:
            self.rooms.remove(
                req.room, req.identity, self.runtime.now(), DisconnectReason.PARTICIPANT_REMOVED
            )
        finally:
            self.runtime.commit()
        return proto.RemoveParticipantResponse()

    async def update_participant(
        self, req: proto.UpdateParticipantRequest, _: Claims
    ) -> models.ParticipantInfo:
        try:
            participant = self.rooms.update_participant(
                req.room,
                req.identity,
                name=req.name,
                metadata=req.metadata,
                attributes=req.attributes,
                permission=req.permission if req.HasField("permission") else None,
            )
        finally:
            self.runtime.commit()
        return participant.to_proto()

    async def mute_track(
        self, req: proto.MuteRoomTrackRequest, _: Claims
    ) -> proto.MuteRoomTrackResponse:
        try:
            track = self.rooms.mute_track(req.room, req.identity, req.track_sid, req.muted)
        finally:
            self.runtime.commit()
        return proto.MuteRoomTrackResponse(track=track)

    async def update_metadata(self, req: proto.UpdateRoomMetadataRequest, _: Claims) -> models.Room:
        try:
            room = self.rooms.update_metadata(req.room, req.metadata)
        finally:
            self.runtime.commit()
        return room.to_proto()

    async def send_data(self, req: proto.SendDataRequest, _: Claims) -> proto.SendDataResponse:
        if req.nonce and len(req.nonce) != 16:
            raise invalid_argument("nonce: must be 16 bytes")
        packet = models.DataPacket(
            kind=req.kind,
            destination_identities=list(req.destination_identities),
            user=models.UserPacket(
                payload=req.data,
                destination_identities=list(req.destination_identities),
                nonce=req.nonce,
            ),
        )
        if req.HasField("topic"):
            packet.user.topic = req.topic
        room = self.rooms.get(req.room)
        destinations = list(req.destination_identities)
        # Deprecated destination_sids name participants by sid.
        for sid in req.destination_sids:
            destinations += [p.identity for p in room.participants.values() if p.sid == sid]
        try:
            self.rooms.send_data(req.room, packet, destinations)
        finally:
            self.runtime.commit()
        return proto.SendDataResponse()

    async def subscriptions(
        self, req: proto.UpdateSubscriptionsRequest, _: Claims
    ) -> proto.UpdateSubscriptionsResponse:
        sids = list(req.track_sids)
        for tracks in req.participant_tracks:
            sids.extend(tracks.track_sids)
        try:
            self.rooms.update_subscriptions(req.room, req.identity, sids, req.subscribe)
        finally:
            self.runtime.commit()
        return proto.UpdateSubscriptionsResponse()

    not_yet = staticmethod(not_implemented_yet)
