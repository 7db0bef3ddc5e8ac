"""Realtime signalling over WebSocket (`/rtc/v1`, and `/rtc` for older clients): joining rooms.

WIRE.md s4: the join handshake (rtc/join.py), participant updates, metadata and attribute
updates from clients, track publication, mute, ping/pong and leave in both directions, and the
resume of a session whose WebSocket dropped. With a media service, each session's peer
connections and the room audio on them are `SessionMedia`'s (rtc/session_media.py), its data
packets `DataPackets`' (rtc/data_packets.py).

Two protocols, as LiveKit has them: `/rtc/v1` is single-PC (the client offers one connection,
in the join or after it); `/rtc` without an offer in the join is two-PC (`subscriber_primary`:
we offer the subscriber connection at once, the client offers its publisher connection, each
trickle names its connection with `target`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from aiohttp import WSMsgType, web
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from sipbridge.errors import ApiError
from sipbridge.rooms import events as ev
from sipbridge.server.api.auth import Claims
from sipbridge.server.media.service import MediaService
from sipbridge.server.rtc.data_packets import DataPackets
from sipbridge.server.rtc.join import (
    authorize,
    participant_kind,
    permission_from,
    wants_two_connections,
)
from sipbridge.server.rtc.own_requests import add_track, update_metadata
from sipbridge.server.rtc.room_stats import RoomStats
from sipbridge.server.rtc.session import (
    Encoded,
    Outgoing,
    Session,
    SessionTable,
    in_room,
    leave_message,
)
from sipbridge.server.rtc.session_media import SessionMedia
from sipbridge.server.rtc.updates import ParticipantUpdates
from sipbridge.server.rtc.writer import HeldHandshakeWebSocket, write_messages
from sipbridge.server.server_info import LIVEKIT_VERSION, server_info
from sipbridge.server.state.rooms_runtime import RoomsRuntime

log = logging.getLogger(__name__)

PING_INTERVAL_S = 5
PING_TIMEOUT_S = 15
MAX_SIGNAL_MESSAGE = 1024 * 1024
RESUME_GRACE_S = 10.0  # a participant whose WebSocket dropped may resume within this
DisconnectReason = models.DisconnectReason
Kind = models.ParticipantInfo.Kind
# Read once for `on_room_event` (every event of every room): protobuf's enum wrapper answers
# each `X.Y` in Python, about 1 us (issue 18).
_SIP = Kind.SIP
_CLIENT_INITIATED = DisconnectReason.CLIENT_INITIATED
# The same for every join (the versions of this process): made once, copied into each join
# response (a JoinResponse made with it 1.1-1.3 us, with one built anew 3.4-3.7: its edition
# read through the enum wrapper).
_SERVER_INFO = server_info()
# The room events a session hears of (`on_room_event`): a room's start and end are not sent.
SIGNAL_EVENTS = (
    ev.ParticipantJoined,
    ev.ParticipantUpdated,
    ev.ParticipantLeft,
    ev.TrackPublished,
    ev.TrackUnpublished,
    ev.TrackMuted,
    ev.SubscriptionChanged,
    ev.DataSent,
    ev.RoomMetadataChanged,
)


class SignalServer:
    """Accepts WebSocket joins and keeps each session told about its room."""

    def __init__(
        self, runtime: RoomsRuntime, keys: dict[str, str], media: MediaService | None = None
    ) -> None:
        self.media = media
        self.runtime = runtime
        self.rooms = runtime.registry
        self.keys = keys
        self.sessions = SessionTable()
        self.closing = False
        self.resumed = 0
        self.silent = 0  # WebSockets ended for PING_TIMEOUT_S without a message
        self.joins: Counter[str] = Counter()  # by protocol: single_pc (/rtc/v1), two_pc (/rtc)
        self.data = DataPackets(runtime, self.sessions)
        self.session_media: SessionMedia | None = None  # without a media service, signalling only
        if media is not None:
            self.session_media = SessionMedia(
                runtime, media, self.sessions, leave=self._leave, on_data=self.data.receive
            )
        # participant updates gathered over a commit, sent as it ends (rtc/updates.py)
        sections = self.session_media.ask_for_sections if self.session_media else None
        self.updates = ParticipantUpdates(self.sessions, sections)
        runtime.listen(self.on_room_event, SIGNAL_EVENTS)
        runtime.settled.append(self.updates.flush)
        # speaker and connection-quality updates (rtc/room_stats.py)
        self.room_stats = RoomStats(runtime, media, self.sessions) if media is not None else None

    @property
    def negotiation_refused(self) -> dict[str, int]:
        """Negotiation input refused, by what it was (`SessionMedia.refused`)."""
        return dict(self.session_media.refused) if self.session_media is not None else {}

    @property
    def data_refused(self) -> int:
        """Data packets refused: undecodable, oversized, or from a client without the grant."""
        return self.data.refused

    @property
    def data_undelivered(self) -> int:
        """Data packets not delivered: the client's data channel is not open."""
        return self.data.undelivered

    def audio_samples(self) -> dict[str, int]:
        """WebRTC audio sent to clients, for /metrics (`SessionMedia.audio_samples`)."""
        return self.session_media.audio_samples() if self.session_media is not None else {}

    def routes(self, app: web.Application) -> None:
        for path in ("/rtc/v1", "/rtc"):
            app.router.add_get(path, self.handle)
            app.router.add_get(path + "/validate", self.validate)

    # -- handshake -------------------------------------------------------------------------

    async def validate(self, request: web.Request) -> web.Response:
        try:
            authorize(request, self.keys)
        except ApiError as err:
            return web.Response(status=err.http_status, text=err.message)
        return web.Response(text="success")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            claims, join = authorize(request, self.keys)
        except ApiError as err:
            return web.Response(status=err.http_status, text=err.message)
        # the 101 is held back until the writer writes the join response after it: one write
        # for both (rtc/writer.py)
        ws = HeldHandshakeWebSocket(heartbeat=None, max_msg_size=MAX_SIGNAL_MESSAGE)
        await ws.prepare(request)
        session = self._resumable(claims, join)
        resumed = session is not None
        if session is None:
            session = Session(
                room=claims.room,
                identity=claims.identity,
                ws=ws,
                two_pc=wants_two_connections(request, join),
            )
        else:
            # The same participant back on a new WebSocket: its peer connection was kept.
            if session.expiry is not None:
                session.expiry.cancel()
                session.expiry = None
            session.ws, session.outbox = ws, asyncio.Queue()
        outbox = session.outbox  # this WebSocket's: a resume gives the session a new one
        writer = asyncio.create_task(
            self._write(session, ws, outbox, request.transport),
            name=f"signal {claims.identity}",
        )
        dropped = False
        try:
            if resumed:
                self.resumed += 1
                self._resumed(session)
                dropped = await self._read(session)
                return ws
            if join.HasField("connection_settings"):
                session.auto_subscribe = join.connection_settings.auto_subscribe
            elif "auto_subscribe" in request.query:  # the two-connection path's parameter
                session.auto_subscribe = request.query["auto_subscribe"] not in ("0", "false")
            self._join(session, claims, join)
            self.joins["two_pc" if session.two_pc else "single_pc"] += 1
            if self.session_media is not None:
                if session.two_pc:
                    self.session_media.start_subscriber(session)
                elif join.publisher_offer.sdp:
                    self.session_media.offer_received(session, join.publisher_offer)
            dropped = await self._read(session)
        except ApiError as err:
            session.send(leave_message(_reason(err)))
        finally:
            key = (session.room, session.identity)
            mine = session.ws is ws  # not resumed on another WebSocket meanwhile
            if mine and dropped and self.sessions.get(key) is session and not self.closing:
                # Gone without a leave: keep the participant and its media for a resume.
                loop = asyncio.get_running_loop()
                session.expiry = loop.call_later(
                    RESUME_GRACE_S, lambda: session.spawn(self._expire(session, ws))
                )
            elif mine:
                self._leave(session, _CLIENT_INITIATED)
                await self._close_media(session)
            outbox.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            await ws.close()
        return ws

    def _resumed(self, session: Session) -> None:
        """What a resumed client is told, as LiveKit does: `reconnect`, then a snapshot of the
        room's participants (itself included) and the room. The SDK takes the snapshot as the
        truth: anyone it knew who is not in it left while the link was down (rust-sdks
        `reconcile_absent_participants`), so without it the phone would vanish from the agent."""
        session.send(rtc.SignalResponse(reconnect=rtc.ReconnectResponse()))
        room = self.rooms.find(session.room)
        if room is None:
            return
        everyone = [p.to_proto() for p in room.participants.values() if not p.permission.hidden]
        session.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=everyone)))
        session.send(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=room.to_proto())))
        if self.session_media is not None:
            # an offer of ours the dropped WebSocket may have lost goes again
            self.session_media.send_pending_offer(session)

    def _resumable(self, claims: Claims, join: rtc.JoinRequest) -> Session | None:
        """The session a `reconnect=true` join resumes: same room, identity and participant sid,
        its WebSocket gone. None: a fresh join (the SDK then starts over)."""
        if not join.reconnect:
            return None
        session = self.sessions.get((claims.room, claims.identity))
        if session is None or session.participant_sid != join.participant_sid:
            return None
        if session.expiry is None and not session.ws.closed:
            return None
        return session

    async def _expire(self, session: Session, ws: web.WebSocketResponse) -> None:
        """No resume in time: the participant leaves."""
        session.expiry = None
        if session.ws is not ws:
            return  # resumed meanwhile
        self._leave(session, DisconnectReason.CONNECTION_TIMEOUT)
        await self._close_media(session)

    def _join(self, session: Session, claims: Claims, join: rtc.JoinRequest) -> None:
        now = self.runtime.now()
        attributes = dict(claims.attributes)
        attributes.update(join.participant_attributes)
        key = (session.room, session.identity)
        # A second connection with the same identity replaces the first: unregister the old
        # session first so the model's DUPLICATE_IDENTITY leave reaches only the old client,
        # and put it back if the new one is refused.
        old = self.sessions.pop(key, None)
        try:
            room, _ = self.rooms.create(session.room, now)
            participant = self.rooms.join(
                session.room,
                session.identity,
                now,
                name=claims.name,
                kind=participant_kind(claims),
                metadata=claims.metadata or join.metadata,
                attributes=attributes,
                permission=permission_from(claims),
                client_protocol=join.client_info.client_protocol,
            )
        except ApiError:
            if old is not None:
                self.sessions[key] = old
            raise
        finally:
            self.runtime.commit()
        if old is not None:
            old.send(leave_message(DisconnectReason.DUPLICATE_IDENTITY))
        self.sessions[key] = session
        session.participant_sid = participant.sid
        others = [
            p.to_proto()
            for p in room.participants.values()
            if p.identity != session.identity and not p.permission.hidden
        ]
        session.send(
            rtc.SignalResponse(
                join=rtc.JoinResponse(
                    room=room.snapshot(),  # (copied into the response: the events' own is fine)
                    participant=participant.to_proto(),
                    other_participants=others,
                    server_version=LIVEKIT_VERSION,
                    ping_interval=PING_INTERVAL_S,
                    ping_timeout=PING_TIMEOUT_S,
                    server_info=_SERVER_INFO,
                    # two-PC: the subscriber connection (ours to offer) is the one the client
                    # waits for, as LiveKit sets it for a client that may subscribe
                    subscriber_primary=session.two_pc and participant.permission.can_subscribe,
                )
            )
        )

    def _leave(self, session: Session, reason: int) -> None:
        if self.sessions.get((session.room, session.identity)) is not session:
            return
        del self.sessions[(session.room, session.identity)]
        room = self.rooms.find(session.room)
        if room is not None and session.identity in room.participants:
            self.rooms.remove(session.room, session.identity, self.runtime.now(), reason)
            self.runtime.commit()

    # -- messages from the client ----------------------------------------------------------

    async def _read(self, session: Session) -> bool:
        """Serve the client's requests; True when the WebSocket went without a `leave`, or
        went silent: the SDKs ping every PING_INTERVAL_S, and a client heard from for none of
        PING_TIMEOUT_S is gone (a peer that vanished without closing its TCP connection), as
        LiveKit ends it; it may still resume within the grace."""
        while True:
            try:
                msg = await session.ws.receive(timeout=PING_TIMEOUT_S)
            except TimeoutError:
                self.silent += 1
                log.info(
                    "signal %s: nothing for %d s, taken as gone", session.identity, PING_TIMEOUT_S
                )
                return True
            if msg.type == WSMsgType.TEXT:
                continue  # JSON signalling is not spoken by the official SDKs
            if msg.type != WSMsgType.BINARY:
                return True  # closed (or an error): gone without a leave
            try:
                request = rtc.SignalRequest.FromString(msg.data)
            except DecodeError:
                log.info("signal %s: undecodable message", session.identity)
                continue
            try:
                if not self._on_request(session, request):
                    return False
            except ApiError as err:  # e.g. removed from the room while this was in flight
                log.info("signal %s: %s", session.identity, err.message)
                return False

    def _on_request(self, session: Session, req: rtc.SignalRequest) -> bool:
        """Handle one request; False ends the session."""
        kind = req.WhichOneof("message")
        if kind == "ping_req":
            session.send(
                rtc.SignalResponse(
                    pong_resp=rtc.Pong(
                        last_ping_timestamp=req.ping_req.timestamp,
                        timestamp=int(self.runtime.now() * 1000),
                    )
                )
            )
        elif kind == "ping":
            session.send(rtc.SignalResponse(pong=int(self.runtime.now() * 1000)))
        elif kind == "leave":
            self._leave(session, _CLIENT_INITIATED)
            return False
        elif kind == "update_metadata":
            update_metadata(self.runtime, session, req.update_metadata)
        elif kind == "add_track":
            add_track(self.runtime, session, req.add_track)
        elif kind == "offer" and self.session_media is not None:
            self.session_media.offer_received(session, req.offer)
        elif kind == "answer" and self.session_media is not None:
            self.session_media.answer_received(session, req.answer)
        elif kind == "trickle" and self.session_media is not None:
            self.session_media.trickle_received(session, req.trickle)
        elif kind == "subscription":
            for track_sid in req.subscription.track_sids:
                session.choices[track_sid] = req.subscription.subscribe
            self._apply_subscriptions(session)
        elif kind == "subscription_permission":
            session.permission = (
                None
                if req.subscription_permission.all_participants
                else req.subscription_permission
            )
            for other in in_room(self.sessions, session.room):
                if other is not session:
                    self._apply_subscriptions(other)
        elif kind == "mute":
            with contextlib.suppress(ApiError):
                self.rooms.mute_track(session.room, session.identity, req.mute.sid, req.mute.muted)
            self.runtime.commit()
        return True

    # -- media ------------------------------------------------------------------------------

    def _apply_subscriptions(self, session: Session) -> None:
        if self.session_media is not None:
            self.session_media.apply_subscriptions(session)

    async def _close_media(self, session: Session) -> None:
        """The session's tasks cancelled, its peer connections closed and out of the room."""
        peers = [peer for peer in (session.peer, session.subscriber) if peer is not None]
        session.peer = session.subscriber = None
        for task in list(session.tasks):
            task.cancel()
        for peer in peers:
            if self.session_media is not None:
                await self.session_media.close(peer)

    # -- messages to the client ------------------------------------------------------------

    async def _write(
        self,
        session: Session,
        ws: web.WebSocketResponse,
        outbox: asyncio.Queue[Outgoing | None],
        transport: asyncio.BaseTransport | None,
    ) -> None:
        # (in order; what queued up together, in one write)
        await write_messages(ws, outbox, transport)

    def on_room_event(self, event: ev.RoomEvent) -> None:
        # Participant changes are gathered and sent as the commit ends (`updates`); anything
        # else is sent after the updates gathered before it.
        updates = self.updates
        match event:
            case ev.ParticipantLeft(room=room, participant=p):
                session = self.sessions.get((room.name, p.identity))
                if session is not None and p.disconnect_reason != _CLIENT_INITIATED:
                    updates.flush()
                    del self.sessions[(room.name, p.identity)]
                    session.send(leave_message(p.disconnect_reason))
                updates.add(room.name, p, exclude=p.identity)
                updates.sections(room.name, p.identity)  # who heard its tracks stops
            case ev.TrackPublished(room=room, participant=p):
                updates.add(room.name, p)
                if p.kind == _SIP:
                    # A phone's track: every client with a peer connection needs a section.
                    updates.sections(room.name, p.identity)
            case ev.TrackUnpublished(room=room, participant=p):
                updates.add(room.name, p)
                updates.sections(room.name, p.identity)  # who heard it stops
            case (
                ev.ParticipantJoined(room=room, participant=p)
                | ev.ParticipantUpdated(room=room, participant=p)
                | ev.TrackMuted(room=room, participant=p)
            ):
                updates.add(room.name, p)
            case _:
                updates.flush()
                self._other_event(event)

    def _other_event(self, event: ev.RoomEvent) -> None:
        match event:
            case ev.SubscriptionChanged(room_name=room_name, subscriber_identity=identity):
                # UpdateSubscriptions through the API (or a permission taken away): a change
                # our media does not have yet becomes the client's choice for that track.
                session = self.sessions.get((room_name, identity))
                peer = session.downlink if session is not None else None
                if session is None or peer is None:
                    return
                sending = peer.sending.get(event.track_sid)
                attached = sending is not None and sending[1].room is not None
                if attached != event.subscribed:
                    session.choices[event.track_sid] = event.subscribed
                    self._apply_subscriptions(session)
            case ev.DataSent():
                self.data.deliver(event)
            case ev.RoomMetadataChanged(room=room):
                changed = Encoded.of(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=room)))
                for session in in_room(self.sessions, room.name):
                    session.send(changed)
            case _:
                pass

    async def close_all(self) -> None:
        self.closing = True
        if self.room_stats is not None:
            self.room_stats.close()
        for session in list(self.sessions.values()):
            session.send(leave_message(DisconnectReason.SERVER_SHUTDOWN))


def _reason(err: ApiError) -> int:
    if err.code == "resource_exhausted":
        return int(DisconnectReason.JOIN_FAILURE)
    return int(DisconnectReason.UNKNOWN_REASON)
