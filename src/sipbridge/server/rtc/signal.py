"""Realtime signalling over WebSocket (`/rtc/v1`, and `/rtc` for older clients): joining rooms.

WIRE.md s4: the join handshake, participant updates, metadata and attribute updates from
clients, track publication, mute, ping/pong and leave in both directions; and, with a media
service, the single peer connection of each client (server/rtc/peer.py): offers answered with
the room's audio tracks on the client's free sections, trickled candidates, published audio
into the room.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gzip
import logging
import zlib
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from sipbridge.errors import ApiError
from sipbridge.rooms import events as ev
from sipbridge.server.auth import Claims, bearer_token, verify_token
from sipbridge.server.call_media import AudioLeg
from sipbridge.server.media_service import MediaService
from sipbridge.server.rooms_runtime import RoomsRuntime
from sipbridge.server.rtc.audio import Publication
from sipbridge.server.rtc.peer import RtcPeer
from sipbridge.server.server_info import LIVEKIT_VERSION, server_info

log = logging.getLogger(__name__)

PING_INTERVAL_S = 5
PING_TIMEOUT_S = 15
MAX_JOIN_REQUEST = 256 * 1024
MAX_SIGNAL_MESSAGE = 1024 * 1024
MAX_DATA_PACKET = 64 * 1024
RESUME_GRACE_S = 10.0  # a participant whose WebSocket dropped may resume within this
DisconnectReason = models.DisconnectReason
Kind = models.ParticipantInfo.Kind

_KINDS = {
    "": Kind.STANDARD,
    "standard": Kind.STANDARD,
    "ingress": Kind.INGRESS,
    "egress": Kind.EGRESS,
    "sip": Kind.SIP,
    "agent": Kind.AGENT,
}


def decode_join_request(value: str) -> rtc.JoinRequest:
    """The `join_request` query parameter: base64url(WrappedJoinRequest), maybe gzipped."""
    if len(value) > MAX_JOIN_REQUEST:
        raise ApiError("malformed", "join_request too large")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        wrapped = rtc.WrappedJoinRequest.FromString(raw)
        payload = wrapped.join_request
        if wrapped.compression == rtc.WrappedJoinRequest.Compression.GZIP:
            # Bounded inflate: a small gzip bomb must not become gigabytes.
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            payload = inflater.decompress(payload, MAX_JOIN_REQUEST)
            if inflater.unconsumed_tail:
                raise ApiError("malformed", "join_request too large once decompressed")
        return rtc.JoinRequest.FromString(payload)
    except (binascii.Error, ValueError, DecodeError, zlib.error, gzip.BadGzipFile):
        raise ApiError("malformed", "join_request could not be decoded") from None


def permission_from(claims: Claims) -> models.ParticipantPermission:
    video = claims.video

    def grant(name: str) -> bool:
        value = video.get(name)
        return True if value is None else value is True  # LiveKit: publish/subscribe default on

    return models.ParticipantPermission(
        can_subscribe=grant("canSubscribe"),
        can_publish=grant("canPublish"),
        can_publish_data=grant("canPublishData"),
        hidden=video.get("hidden") is True,
        recorder=video.get("recorder") is True,
        can_update_metadata=video.get("canUpdateOwnMetadata") is True,
        agent=video.get("agent") is True or claims.kind == "agent",
    )


@dataclass(eq=False, kw_only=True)
class Session:
    room: str
    identity: str
    ws: web.WebSocketResponse
    outbox: asyncio.Queue[rtc.SignalResponse | None] = field(default_factory=asyncio.Queue)
    participant_sid: str = ""
    peer: RtcPeer | None = None
    expiry: asyncio.TimerHandle | None = None  # while the WebSocket is gone, awaiting a resume
    auto_subscribe: bool = True  # the client's connection_settings: every track unless told
    choices: dict[str, bool] = field(default_factory=dict)  # track sid -> subscribe, as told
    # who may subscribe to this client's tracks (its SubscriptionPermission); None: everyone
    permission: rtc.SubscriptionPermission | None = None
    refused: dict[str, bool] = field(default_factory=dict)  # track sid -> refused, as told
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def send(self, message: rtc.SignalResponse) -> None:
        self.outbox.put_nowait(message)

    def close(self) -> None:
        self.outbox.put_nowait(None)


class SignalServer:
    """Accepts WebSocket joins and keeps each session told about its room."""

    def __init__(
        self, runtime: RoomsRuntime, keys: dict[str, str], media: MediaService | None = None
    ) -> None:
        self.media = media
        self.runtime = runtime
        self.rooms = runtime.registry
        self.keys = keys
        self.sessions: dict[tuple[str, str], Session] = {}
        self.closing = False
        self.resumed = 0
        self.data_refused = 0  # undecodable, oversized, or from a client without the grant
        self.data_undelivered = 0  # to a client whose data channel is not open
        self.audio_ended: Counter[str] = Counter()  # audio counters of closed subscriptions
        runtime.listeners.append(self.on_room_event)

    def routes(self, app: web.Application) -> None:
        for path in ("/rtc/v1", "/rtc"):
            app.router.add_get(path, self.handle)
            app.router.add_get(path + "/validate", self.validate)

    # -- handshake -------------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> tuple[Claims, rtc.JoinRequest]:
        header = request.headers.get("Authorization")
        token = bearer_token(header) if header else request.query.get("access_token", "")
        claims = verify_token(token, self.keys)
        join = rtc.JoinRequest()
        if "join_request" in request.query:
            join = decode_join_request(request.query["join_request"])
        if not claims.video_grant("roomJoin") or not claims.room:
            raise ApiError("permission_denied", "token lacks the roomJoin grant for a room")
        if not claims.identity:
            raise ApiError("unauthenticated", "token has no identity")
        return claims, join

    async def validate(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
        except ApiError as err:
            return web.Response(status=err.http_status, text=err.message)
        return web.Response(text="success")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            claims, join = self._authorize(request)
        except ApiError as err:
            return web.Response(status=err.http_status, text=err.message)
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=MAX_SIGNAL_MESSAGE)
        await ws.prepare(request)
        session = self._resumable(claims, join)
        resumed = session is not None
        if session is None:
            session = Session(room=claims.room, identity=claims.identity, ws=ws)
        else:
            # The same participant back on a new WebSocket: its peer connection was kept.
            if session.expiry is not None:
                session.expiry.cancel()
                session.expiry = None
            session.ws, session.outbox = ws, asyncio.Queue()
        outbox = session.outbox  # this WebSocket's: a resume gives the session a new one
        writer = asyncio.create_task(
            self._write(session, ws, outbox), name=f"signal {claims.identity}"
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
            if self.media is not None and join.publisher_offer.sdp:
                session.peer = RtcPeer(identity=session.identity)
                session.peer.on_data = lambda data, lossy: self._on_data(session, data, lossy)
                session.peer.on_connected = lambda: self._connected(session)
                session.spawn(self._negotiate(session, join.publisher_offer))
            dropped = await self._read(session)
        except ApiError as err:
            session.send(_leave_message(_reason(err)))
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
                self._leave(session, DisconnectReason.CLIENT_INITIATED)
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
                kind=_KINDS.get(claims.kind, Kind.STANDARD),
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
            old.send(_leave_message(DisconnectReason.DUPLICATE_IDENTITY))
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
                    room=room.to_proto(),
                    participant=participant.to_proto(),
                    other_participants=others,
                    server_version=LIVEKIT_VERSION,
                    ping_interval=PING_INTERVAL_S,
                    ping_timeout=PING_TIMEOUT_S,
                    server_info=server_info(),
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
        """Serve the client's requests; True when the WebSocket went without a `leave`."""
        async for msg in session.ws:
            if msg.type != WSMsgType.BINARY:
                if msg.type == WSMsgType.TEXT:
                    continue  # JSON signalling is not spoken by the official SDKs
                break
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
        return True

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
            self._leave(session, DisconnectReason.CLIENT_INITIATED)
            return False
        elif kind == "update_metadata":
            self._update_metadata(session, req.update_metadata)
        elif kind == "add_track":
            self._add_track(session, req.add_track)
        elif kind == "offer" and session.peer is not None:
            session.spawn(self._negotiate(session, req.offer))
        elif kind == "trickle" and session.peer is not None:
            peer = session.peer
            session.spawn(self._trickle(peer, req.trickle.candidateInit))
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
            for other in self._in_room(session.room):
                if other is not session:
                    self._apply_subscriptions(other)
        elif kind == "mute":
            with contextlib.suppress(ApiError):
                self.rooms.mute_track(session.room, session.identity, req.mute.sid, req.mute.muted)
            self.runtime.commit()
        return True

    def _update_metadata(self, session: Session, req: rtc.UpdateParticipantMetadata) -> None:
        participant = self.rooms.participant(session.room, session.identity)
        reply = rtc.RequestResponse(request_id=req.request_id, update_metadata=req)
        if not participant.permission.can_update_metadata:
            reply.reason = rtc.RequestResponse.Reason.NOT_ALLOWED
            reply.message = "does not have permission to update own metadata"
        else:
            try:
                self.rooms.update_participant(
                    session.room,
                    session.identity,
                    name=req.name,
                    metadata=req.metadata,
                    attributes=req.attributes,
                )
                reply.reason = rtc.RequestResponse.Reason.OK
            except ApiError as err:
                reply.reason = rtc.RequestResponse.Reason.LIMIT_EXCEEDED
                reply.message = err.message
        session.send(rtc.SignalResponse(request_response=reply))
        self.runtime.commit()

    def _add_track(self, session: Session, req: rtc.AddTrackRequest) -> None:
        participant = self.rooms.participant(session.room, session.identity)
        if not participant.permission.can_publish:
            reply = rtc.RequestResponse(
                reason=rtc.RequestResponse.Reason.NOT_ALLOWED,
                message="does not have permission to publish",
                add_track=req,
            )
            session.send(rtc.SignalResponse(request_response=reply))
            return
        track = models.TrackInfo(
            type=req.type,
            name=req.name,
            muted=req.muted,
            source=req.source,
            stereo=req.stereo,
            disable_dtx=req.disable_dtx,
            width=req.width,
            height=req.height,
            stream=req.stream,
            mime_type="audio/opus" if req.type == models.TrackType.AUDIO else "",
        )
        self.rooms.publish_track(session.room, session.identity, track)
        if session.peer is not None:
            session.peer.published[req.cid] = track.sid
        session.send(
            rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=req.cid, track=track))
        )
        self.runtime.commit()

    # -- media ------------------------------------------------------------------------------

    async def _negotiate(self, session: Session, offer: rtc.SessionDescription) -> None:
        """Answer an offer of the client, its room audio tracks on its free sections."""
        peer, media = session.peer, self.media
        if peer is None or media is None:
            return
        async with peer.lock:
            if peer.closed:
                return
            wanted = self._wanted(session)
            try:
                sdp, mids, left = await peer.answer(
                    offer.sdp,
                    wanted,
                    lambda sid, publication: self._published(session, sid, publication),
                )
            except Exception as err:  # a bad offer must not take the server down
                log.info("signal %s: offer refused: %s", session.identity, err)
                self._leave(session, DisconnectReason.SIGNAL_CLOSE)
                session.send(_leave_message(DisconnectReason.SIGNAL_CLOSE))
                return
            session.send(
                rtc.SignalResponse(
                    answer=rtc.SessionDescription(
                        type="answer", sdp=sdp, id=offer.id, mid_to_track_id=mids
                    )
                )
            )
            self._apply_subscriptions(session, ask=False)
            if left:
                session.send(
                    rtc.SignalResponse(
                        media_sections_requirement=rtc.MediaSectionsRequirement(
                            num_audios=len(left)
                        )
                    )
                )

    def _wanted(self, session: Session) -> dict[str, tuple[AudioLeg, str]]:
        """The audio tracks of the others in the room, with a source to hear, that the client
        subscribes to: every one when it auto-subscribes, else those it asked for (its own
        `subscription` requests and UpdateSubscriptions through the API win either way);
        none without the canSubscribe grant."""
        media = self.media
        room = self.rooms.find(session.room)
        if media is None or room is None:
            return {}
        me = room.participants.get(session.identity)
        if me is None or not me.permission.can_subscribe:
            return {}
        wanted: dict[str, tuple[AudioLeg, str]] = {}
        for participant in room.participants.values():
            if participant.identity == session.identity:
                continue
            for track in participant.tracks.values():
                source = media.track_legs.get(track.sid)
                if track.type != models.TrackType.AUDIO or source is None:
                    continue
                if not session.choices.get(track.sid, session.auto_subscribe):
                    continue
                if self._may_subscribe(session, me.sid, participant.identity, track.sid):
                    wanted[track.sid] = (source, participant.sid)
        return wanted

    def _may_subscribe(
        self, session: Session, subscriber_sid: str, publisher: str, track_sid: str
    ) -> bool:
        """The publisher's SubscriptionPermission lets this client have the track (a client
        refused is told once with SubscriptionPermissionUpdate, as LiveKit does)."""
        owner = self.sessions.get((session.room, publisher))
        permission = owner.permission if owner is not None else None
        if permission is None:
            return True
        allowed = any(
            (
                grant.participant_identity == session.identity
                or grant.participant_sid == subscriber_sid
            )
            and (grant.all_tracks or track_sid in grant.track_sids)
            for grant in permission.track_permissions
        )
        before = session.refused.get(track_sid)
        if before != (not allowed):
            session.refused[track_sid] = not allowed
            if not allowed or before:  # refused now, or allowed again after a refusal
                session.send(
                    rtc.SignalResponse(
                        subscription_permission_update=rtc.SubscriptionPermissionUpdate(
                            participant_sid=owner.participant_sid if owner else "",
                            track_sid=track_sid,
                            allowed=allowed,
                        )
                    )
                )
        return allowed

    def _apply_subscriptions(self, session: Session, *, ask: bool = True) -> None:
        """Make the audio the client gets match `_wanted`: a subscription that has its section
        is (re)attached to the room or detached from it - the section stays, silent - and the
        room model follows; tracks still without a section are asked for (`ask`)."""
        peer, media = session.peer, self.media
        if peer is None or media is None:
            return
        wanted = self._wanted(session)
        on, off = [], []
        for track_sid, (_, subscription) in peer.sending.items():
            if track_sid in wanted and subscription.room is None:
                media.attach(subscription, session.room)
                on.append(track_sid)
            elif track_sid not in wanted and subscription.room is not None:
                media.detach(subscription)
                off.append(track_sid)
        for track_sids, subscribed in ((on, True), (off, False)):
            if track_sids:
                with contextlib.suppress(ApiError):
                    self.rooms.update_subscriptions(
                        session.room, session.identity, track_sids, subscribed
                    )
        if on or off:
            self.runtime.commit()
        missing = sum(1 for track_sid in wanted if track_sid not in peer.sending)
        if ask and missing:
            session.send(
                rtc.SignalResponse(
                    media_sections_requirement=rtc.MediaSectionsRequirement(num_audios=missing)
                )
            )

    def _published(self, session: Session, track_sid: str, publication: Publication) -> None:
        """A client's published audio arrived: it joins the room's audio, and the others in
        the room are asked for a section to receive it."""
        if self.media is None:
            return
        self.media.track_legs[track_sid] = publication
        self.media.attach(publication, session.room)
        self._ask_for_sections(session.room, exclude=session.identity)

    def _ask_for_sections(self, room: str, exclude: str = "") -> None:
        """A new audio track in the room: the clients subscribing to it need sections."""
        for other in self._in_room(room):
            if other.identity != exclude:
                self._apply_subscriptions(other)

    def _connected(self, session: Session) -> None:
        """Its peer connection is up: the participant is ACTIVE (SDKs wait for that)."""
        if self.sessions.get((session.room, session.identity)) is not session:
            return
        with contextlib.suppress(ApiError):
            self.rooms.set_active(session.room, session.identity)
        self.runtime.commit()

    def _on_data(self, session: Session, data: bytes, lossy: bool) -> None:
        """A DataPacket from the client: stamped with its sender and routed through the room
        (other clients, SIP participants for `sip_dtmf`), refused without canPublishData."""
        if len(data) > MAX_DATA_PACKET:
            self.data_refused += 1
            return
        try:
            packet = models.DataPacket.FromString(data)
        except DecodeError:
            self.data_refused += 1
            return
        room = self.rooms.find(session.room)
        participant = room.participants.get(session.identity) if room else None
        if participant is None or not participant.permission.can_publish_data:
            self.data_refused += 1
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
            self.data_refused += 1
            return
        self.runtime.commit()

    def _deliver(self, event: ev.DataSent) -> None:
        """A data packet in a room, to the clients it is for (not back to its sender)."""
        packet = event.packet
        sender = packet.participant_identity
        wanted = set(event.destinations)
        lossy = packet.kind == models.DataPacket.Kind.LOSSY
        data = b""
        for session in self._in_room(event.room_name):
            if session.peer is None or session.identity == sender:
                continue
            if wanted and session.identity not in wanted:
                continue
            data = data or packet.SerializeToString()
            if not session.peer.send_data(data, lossy=lossy):
                self.data_undelivered += 1

    async def _trickle(self, peer: RtcPeer, candidate_init: str) -> None:
        async with peer.lock:
            await peer.add_candidate(candidate_init)

    async def _close_media(self, session: Session) -> None:
        peer, media = session.peer, self.media
        session.peer = None
        for task in list(session.tasks):
            task.cancel()
        if peer is None or media is None:
            return
        for _, subscription in peer.sending.values():
            media.detach(subscription)
            self.audio_ended.update(subscription.counters())
        for track_sid, publication in peer.publications.items():
            media.detach(publication)
            if media.track_legs.get(track_sid) is publication:
                del media.track_legs[track_sid]
        await peer.close()

    def audio_samples(self) -> dict[str, int]:
        """WebRTC audio sent to clients, for /metrics: subscriptions open by codec, and packets
        forwarded, frames made and stale frames dropped, over all subscriptions ever."""
        totals = Counter(self.audio_ended)
        for session in self.sessions.values():
            if session.peer is None:
                continue
            for _, subscription in session.peer.sending.values():
                totals.update(subscription.counters())
                if subscription.room is not None:  # attached: audio flows
                    totals[f"subscriptions_{subscription.spec.name.lower()}"] += 1
        return dict(totals)

    # -- messages to the client ------------------------------------------------------------

    async def _write(
        self,
        session: Session,
        ws: web.WebSocketResponse,
        outbox: asyncio.Queue[rtc.SignalResponse | None],
    ) -> None:
        while (message := await outbox.get()) is not None:
            if ws.closed:
                break
            try:
                await ws.send_bytes(message.SerializeToString())
            except (ConnectionError, RuntimeError):
                break
            if message.WhichOneof("message") == "leave":
                await ws.close()
                break

    def on_room_event(self, event: ev.RoomEvent) -> None:
        match event:
            case ev.ParticipantLeft(room=room, participant=p):
                session = self.sessions.get((room.name, p.identity))
                if session is not None and p.disconnect_reason not in (
                    DisconnectReason.CLIENT_INITIATED,
                ):
                    del self.sessions[(room.name, p.identity)]
                    session.send(_leave_message(p.disconnect_reason))
                self._broadcast(room.name, p, exclude=p.identity)
            case ev.TrackPublished(room=room, participant=p):
                self._broadcast(room.name, p)
                if self.media is not None and p.kind == Kind.SIP:
                    # A phone's track: every client with a peer connection needs a section.
                    self._ask_for_sections(room.name, exclude=p.identity)
            case (
                ev.ParticipantJoined(room=room, participant=p)
                | ev.ParticipantUpdated(room=room, participant=p)
                | ev.TrackUnpublished(room=room, participant=p)
                | ev.TrackMuted(room=room, participant=p)
            ):
                self._broadcast(room.name, p)
            case ev.SubscriptionChanged(room_name=room_name, subscriber_identity=identity):
                # UpdateSubscriptions through the API (or a permission taken away): a change
                # our media does not have yet becomes the client's choice for that track.
                session = self.sessions.get((room_name, identity))
                if session is None or session.peer is None:
                    return
                sending = session.peer.sending.get(event.track_sid)
                attached = sending is not None and sending[1].room is not None
                if attached != event.subscribed:
                    session.choices[event.track_sid] = event.subscribed
                    self._apply_subscriptions(session)
            case ev.DataSent():
                self._deliver(event)
            case ev.RoomMetadataChanged(room=room):
                for session in self._in_room(room.name):
                    session.send(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=room)))
            case _:
                pass

    def _in_room(self, room: str) -> list[Session]:
        return [s for (r, _), s in self.sessions.items() if r == room]

    def _broadcast(self, room: str, participant: models.ParticipantInfo, exclude: str = "") -> None:
        if participant.permission.hidden:
            return
        update = rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[participant]))
        for session in self._in_room(room):
            if session.identity != exclude:
                session.send(update)

    async def close_all(self) -> None:
        self.closing = True
        for session in list(self.sessions.values()):
            session.send(_leave_message(DisconnectReason.SERVER_SHUTDOWN))


def _leave_message(reason: int) -> rtc.SignalResponse:
    return rtc.SignalResponse(
        leave=rtc.LeaveRequest(reason=reason, action=rtc.LeaveRequest.Action.DISCONNECT)  # type: ignore[arg-type]
    )


def _reason(err: ApiError) -> int:
    if err.code == "resource_exhausted":
        return int(DisconnectReason.JOIN_FAILURE)
    return int(DisconnectReason.UNKNOWN_REASON)
