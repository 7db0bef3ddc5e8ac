"""Data packets between clients: what a client sends on its data channels, routed through the
room (to other clients, and to SIP participants for `sip_dtmf`), and delivered to the clients
each packet is for (WIRE.md s4)."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import DecodeError
from livekit.protocol import models

from sipbridge.errors import ApiError
from sipbridge.rooms import events as ev
from sipbridge.server.rtc.session import Session, in_room
from sipbridge.server.state.rooms_runtime import RoomsRuntime

MAX_DATA_PACKET = 64 * 1024


class DataPackets:
    """Routes the data packets of the signalling sessions (`sessions`, by (room, identity))."""

    def __init__(self, runtime: RoomsRuntime, sessions: Mapping[tuple[str, str], Session]) -> None:
        self.runtime = runtime
        self.rooms = runtime.registry
        self.sessions = sessions
        self.refused = 0  # undecodable, oversized, or from a client without the grant
        self.undelivered = 0  # to a client whose data channel is not open

    def receive(self, session: Session, data: bytes, lossy: bool) -> None:
        """A DataPacket from the client: stamped with its sender and routed through the room
        (other clients, SIP participants for `sip_dtmf`), refused without canPublishData."""
        if len(data) > MAX_DATA_PACKET:
            self.refused += 1
            return
        try:
            packet = models.DataPacket.FromString(data)
        except DecodeError:
            self.refused += 1
            return
        room = self.rooms.find(session.room)
        participant = room.participants.get(session.identity) if room else None
        if participant is None or not participant.permission.can_publish_data:
            self.refused += 1
            return
        packet.participant_identity = session.identity
        packet.participant_sid = participant.sid
        packet.kind = models.DataPacket.Kind.LOSSY if lossy else models.DataPacket.Kind.RELIABLE
        if packet.WhichOneof("value") == "user":
            packet.user.participant_identity = session.identity
            packet.user.participant_sid = participant.sid
        destinations = list(packet.destination_identities)
        if packet.WhichOneof("value") == "user" and packet.user.destination_identities:
            destinations += list(packet.user.destination_identities)
        try:
            self.rooms.send_data(session.room, packet, destinations)
        except ApiError:
            self.refused += 1
            return
        self.runtime.commit()

    def deliver(self, event: ev.DataSent) -> None:
        """A data packet in a room, to the clients it is for (not back to its sender)."""
        packet = event.packet
        sender = packet.participant_identity
        wanted = set(event.destinations)
        lossy = packet.kind == models.DataPacket.Kind.LOSSY
        data = b""
        for session in in_room(self.sessions, event.room_name):
            peer = session.downlink  # two-PC: the subscriber connection's channels
            if peer is None or session.identity == sender:
                continue
            if wanted and session.identity not in wanted:
                continue
            data = data or packet.SerializeToString()
            if not peer.send_data(data, lossy=lossy):
                self.undelivered += 1
