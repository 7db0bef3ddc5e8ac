"""Inbound calls: an INVITE on a trunk becomes a SIP participant in a room (SIP-BEHAVIOUR.md s1).

The runner follows the reference's steps and answers every failure with a status, never a silent
drop: 100 at once (the UAS core), trunk match (404 none, 503 ambiguous), digest challenge for
trunks with credentials (407, then 403 for wrong credentials), dispatch rule (404 none), SDP
answer (488 when nothing is common), the room and the participant (kind SIP, every `sip.*`
attribute, status `ringing`), 180 every second while waiting; 200 once someone subscribes to the
caller's audio or another SIP participant is in the room; `active` after the ACK; `hangup` and
removal on BYE; RemoveParticipant/DeleteRoom send BYE; ringing timeout answers 486 (or the
trunk's `ringing_timeout_status`); `max_call_duration` hangs up.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from livekit.protocol import models
from livekit.protocol import sip as proto

from sipbridge import ids
from sipbridge.errors import ApiError
from sipbridge.rooms import events as ev
from sipbridge.server.call_log import CallLog
from sipbridge.server.rooms_runtime import RoomsRuntime
from sipbridge.server.sip_config import SipConfig
from sipbridge.server.sip_ua import IncomingCall
from sipbridge.sip import sdp
from sipbridge.sip.digest import AuthOutcome, DigestServer
from sipbridge.sip.errors import SipProtocolError
from sipbridge.telephony.inbound import (
    InboundCall,
    TrunkConflict,
    call_attributes,
    match_trunk,
    participant_identity,
    participant_name,
    room_for,
    rule_needs_pin,
    select_rule,
)

log = logging.getLogger(__name__)

DEFAULT_RINGING_TIMEOUT_S = 180.0
DEFAULT_MAX_CALL_DURATION_S = 24 * 3600.0
RING_INTERVAL_S = 1.0
ACTIVE_AFTER_ACK_S = 1.0  # "first RTP or 1 s after ACK" - RTP comes with the media issue
REJECT_CACHE_SIZE = 5000
REJECT_CACHE_TTL_S = 60.0
MAX_NUMBER_LENGTH = 128
SUPPORTED_CODECS = (sdp.PCMU, sdp.PCMA, sdp.G722, sdp.TELEPHONE_EVENT)
Status = models.ParticipantInfo.Kind
Reason = models.DisconnectReason


@dataclass(eq=False, kw_only=True)
class InboundCallState:
    """One call on its way through the runner."""

    call: IncomingCall
    info: proto.SIPCallInfo
    room: str = ""
    identity: str = ""
    track_sid: str = ""
    trunk: proto.SIPInboundTrunkInfo | None = None
    rule: proto.SIPDispatchRuleInfo | None = None
    answer_sdp: bytes = b""
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    leaving: bool = False

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


class InboundCalls:
    """The `on_invite` handler of the user agent for inbound calls."""

    def __init__(
        self,
        config: SipConfig,
        rooms: RoomsRuntime,
        call_log: CallLog,
        *,
        media_address: str,
        rtp_ports: tuple[int, int],
        max_calls: int,
        realm: str = "sipbridge",
        auth_secret: bytes | None = None,
    ) -> None:
        self.config = config
        self.rooms = rooms
        self.call_log = call_log
        self.media_address = media_address
        self.rtp_ports = rtp_ports
        self._next_port = rtp_ports[0] + (rtp_ports[0] % 2)
        self.max_calls = max_calls
        self.realm = realm
        self.digest = DigestServer(auth_secret or secrets.token_bytes(32))
        self.active: dict[str, InboundCallState] = {}  # by participant key room/identity
        self.ringing: dict[str, set[InboundCallState]] = {}  # unanswered calls by room
        self._rejected: OrderedDict[tuple[str, str], tuple[float, int, str]] = OrderedDict()
        self.stats: dict[str, int] = {}
        rooms.listeners.append(self.on_room_event)

    # -- the INVITE ------------------------------------------------------------------------

    def __call__(self, call: IncomingCall) -> None:
        request = call.request
        try:
            key = (request.call_id, request.from_.tag or "")
        except SipProtocolError:
            call.reject(400)
            return
        cached = self._rejected.get(key)
        if cached is not None and cached[0] > time.monotonic():
            call.reject(cached[1], cached[2])  # same answer to a retry (s1 step 2)
            return
        if len(self.active) >= self.max_calls:
            self._count("overload")
            call.reject(503, "Service Unavailable", {"Retry-After": "5"})
            return
        try:
            self._start(call)
        except SipProtocolError as err:
            self._reject(call, err.status, err.reason, cache=err.status != 407)

    def _start(self, call: IncomingCall) -> None:
        request = call.request
        from_, to = request.from_, request.to
        caller = from_.uri.user_unescaped
        called = to.uri.user_unescaped or request.uri.user_unescaped
        for what, number in (("From", caller), ("To", called)):
            if len(number) > MAX_NUMBER_LENGTH or any(ord(c) < 0x20 for c in number):
                raise SipProtocolError(400, "Bad Request", f"unusable {what} user")
        inbound = InboundCall(
            caller=caller,
            called=called,
            from_host=from_.uri.host,
            source_ip=call.peer.host,
            call_id=request.call_id,
            from_tag=from_.tag or "",
            headers=tuple(request.headers.items),
        )
        trunks = list(self.config.inbound.values())
        trunk: proto.SIPInboundTrunkInfo | None = None
        if trunks:
            try:
                trunk = match_trunk(trunks, inbound)
            except TrunkConflict:
                raise SipProtocolError(503, "Service Unavailable") from None
            if trunk is None:
                raise SipProtocolError(404, "No trunk found")
            if trunk.auth_username and not self._authorized(call, trunk):
                return
        rules = list(self.config.rules.values())
        trunk_id = trunk.sip_trunk_id if trunk is not None else ""
        rule = select_rule(rules, trunk_id, inbound)
        if rule is None:
            if rule_needs_pin(rules, trunk_id, inbound):
                # PIN entry needs DTMF, which comes with the media issue.
                raise SipProtocolError(480, "Temporarily Unavailable")
            raise SipProtocolError(404, "No dispatch rule found")
        answer_sdp = self._answer_sdp(call)
        self._join(call, inbound, trunk, rule, answer_sdp)

    def _authorized(self, call: IncomingCall, trunk: proto.SIPInboundTrunkInfo) -> bool:
        """Digest auth as a proxy would ask (407), Authorization/401 style accepted too."""
        request = call.request
        header = request.headers.get("Proxy-Authorization") or request.headers.get("Authorization")
        realm = trunk.auth_realm or self.realm
        result = self.digest.verify(
            header,
            method="INVITE",
            realm=realm,
            lookup_password=lambda user: (
                trunk.auth_password if user == trunk.auth_username else None
            ),
            now=time.time(),
        )
        if result.outcome is AuthOutcome.OK:
            return True
        if result.outcome in (AuthOutcome.WRONG_RESPONSE, AuthOutcome.UNKNOWN_USER):
            self._count("auth_failed")
            self._reject(call, 403, "Forbidden")
            return False
        self._count("auth_challenged")
        # MD5 first: many carriers' and test tools' UAs read only the first challenge and know
        # no other algorithm; SHA-256 (RFC 8760) is offered beside it for those that do.
        challenges = self.digest.challenge(
            realm, time.time(), algorithms=("MD5", "SHA-256"), stale=result.stale
        )
        call.reject(407, headers=[("Proxy-Authenticate", value) for value in challenges])
        return False

    def _answer_sdp(self, call: IncomingCall) -> bytes:
        request = call.request
        if not request.body:
            raise SipProtocolError(488, "Not Acceptable Here")  # offerless INVITE: media issue
        try:
            offer = sdp.parse_sdp(request.body)
            audio = sdp.negotiate_audio(offer, SUPPORTED_CODECS)
        except SipProtocolError as err:
            raise SipProtocolError(488, "Not Acceptable Here", err.detail) from None
        port = self._allocate_port()
        session_id = secrets.randbelow(2**31)
        answer = sdp.build_answer(
            offer,
            audio,
            address=self.media_address,
            port=port,
            session_id=session_id,
            session_version=session_id,
        )
        return sdp.serialize_sdp(answer)

    def _allocate_port(self) -> int:
        """An RTP port from --rtp-ports (even, RTCP on +1). The media issue binds them."""
        lo, hi = self.rtp_ports
        port = self._next_port
        self._next_port = port + 2 if port + 2 <= hi else lo + (lo % 2)
        return port

    # -- joining the room ------------------------------------------------------------------

    def _join(
        self,
        call: IncomingCall,
        inbound: InboundCall,
        trunk: proto.SIPInboundTrunkInfo | None,
        rule: proto.SIPDispatchRuleInfo,
        answer_sdp: bytes,
    ) -> None:
        call_id = ids.new_id(ids.CALL)
        room_name = room_for(rule, inbound, secrets.token_hex(4))
        identity = participant_identity(rule, inbound)
        now = self.rooms.now()
        info = proto.SIPCallInfo(
            call_id=call_id,
            sip_call_id=inbound.call_id,
            trunk_id=trunk.sip_trunk_id if trunk is not None else "",
            dispatch_rule_id=rule.sip_dispatch_rule_id,
            room_name=room_name,
            participant_identity=identity,
            call_direction=proto.SIPCallDirection.SCD_INBOUND,
            call_status=proto.SIPCallStatus.SCS_CALL_INCOMING,
            from_uri=proto.SIPUri(user=inbound.caller, host=inbound.from_host),
            to_uri=proto.SIPUri(user=inbound.called, host=call.request.uri.host),
            created_at=int(now),
            created_at_ns=int(now * 1e9),
        )
        state = InboundCallState(
            call=call,
            info=info,
            room=room_name,
            identity=identity,
            trunk=trunk,
            rule=rule,
            answer_sdp=answer_sdp,
        )
        attributes = call_attributes(
            call=inbound, call_id=call_id, trunk=trunk, rule=rule, status="ringing"
        )
        registry = self.rooms.registry
        try:
            agents = list(rule.room_config.agents) if rule.HasField("room_config") else []
            room, _ = registry.create(
                room_name,
                now,
                empty_timeout=rule.room_config.empty_timeout,
                departure_timeout=rule.room_config.departure_timeout,
                max_participants=rule.room_config.max_participants,
                agents=agents,
            )
            participant = registry.join(
                room_name,
                identity,
                now,
                name=participant_name(rule, inbound),
                kind=models.ParticipantInfo.Kind.SIP,
                metadata=rule.metadata,
                attributes=attributes,
                permission=models.ParticipantPermission(
                    can_subscribe=True, can_publish=True, can_publish_data=True
                ),
            )
            state.track_sid = registry.publish_track(
                room_name,
                identity,
                models.TrackInfo(
                    type=models.TrackType.AUDIO,
                    source=models.TrackSource.MICROPHONE,
                    name="phone",
                    mime_type="audio/PCMU",
                ),
            )
        except ApiError as err:
            self.rooms.commit()
            log.info("call %s: cannot join room %s: %s", call_id, room_name, err.message)
            info.call_status = proto.SIPCallStatus.SCS_ERROR
            info.error = err.message
            self.call_log.record(info)
            raise SipProtocolError(486, "Busy Here") from None
        info.room_id = room.sid
        info.participant_attributes.update(participant.attributes)
        info.call_status = proto.SIPCallStatus.SCS_PARTICIPANT_JOINED
        self.active[_key(room_name, identity)] = state
        self.ringing.setdefault(room_name, set()).add(state)
        call.on_end = lambda reason: self._ended(state, reason)
        call.on_ack = lambda: self._acked(state)
        self.call_log.record(info)
        self._ring(state)
        timeout = _seconds(trunk.ringing_timeout if trunk else None) or DEFAULT_RINGING_TIMEOUT_S
        self._later(state, timeout, lambda: self._ringing_timeout(state))
        self.rooms.commit()
        if self._someone_listens(state):
            self._answer(state)

    def _ring(self, state: InboundCallState) -> None:
        if state.call.answered or state.call.ended:
            return
        state.call.ring(180)
        self._later(state, RING_INTERVAL_S, lambda: self._ring(state))

    def _later(self, state: InboundCallState, delay: float, fn: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        state.timers.append(loop.call_later(delay, fn))

    def _someone_listens(self, state: InboundCallState) -> bool:
        """Answer when another SIP participant is already in the room (a bridge)."""
        room = self.rooms.registry.find(state.room)
        if room is None:
            return False
        return any(
            p.kind == models.ParticipantInfo.Kind.SIP and p.identity != state.identity
            for p in room.participants.values()
        )

    # -- answer, ACK, end ------------------------------------------------------------------

    def _answer(self, state: InboundCallState) -> None:
        call = state.call
        self._not_ringing(state)
        if call.answered or call.ended:
            return
        headers = dict(state.trunk.headers) if state.trunk else {}
        headers.update(self._attributes_to_headers(state))
        call.answer(state.answer_sdp, headers=headers)
        state.info.started_at = int(self.rooms.now())
        state.info.started_at_ns = int(self.rooms.now() * 1e9)
        self.call_log.record(state.info)
        duration = _seconds(state.trunk.max_call_duration if state.trunk else None)
        self._later(
            state, duration or DEFAULT_MAX_CALL_DURATION_S, lambda: self._hangup(state, "max")
        )

    def _not_ringing(self, state: InboundCallState) -> None:
        waiting = self.ringing.get(state.room)
        if waiting is not None:
            waiting.discard(state)
            if not waiting:
                del self.ringing[state.room]

    def _acked(self, state: InboundCallState) -> None:
        self._later(state, ACTIVE_AFTER_ACK_S, lambda: self._set_status(state, "active"))

    def _set_status(self, state: InboundCallState, status: str) -> None:
        if state.leaving and status != "hangup":
            return
        room = self.rooms.registry.find(state.room)
        if room is None or state.identity not in room.participants:
            return
        participant = self.rooms.registry.update_participant(
            state.room, state.identity, attributes={"sip.callStatus": status}
        )
        state.info.participant_attributes.update(participant.attributes)
        if status == "active":
            state.info.call_status = proto.SIPCallStatus.SCS_ACTIVE
            self.call_log.record(state.info)
        self.rooms.commit()

    def _ringing_timeout(self, state: InboundCallState) -> None:
        if state.call.answered or state.call.ended:
            return
        status = state.trunk.ringing_timeout_status if state.trunk else 0
        state.info.error = "ringing timeout"
        state.call.reject(int(status) or 486)

    def _hangup(self, state: InboundCallState, why: str) -> None:
        """We end an answered call (max duration, removal from the room)."""
        if state.call.ended:
            return
        if state.call.answered:
            state.call.hangup(self._attributes_to_headers(state))
        else:
            state.call.reject(486, headers=self._attributes_to_headers(state))

    def _ended(self, state: InboundCallState, reason: str) -> None:
        """The call is over (BYE either way, CANCEL, rejection, timeout): leave the room."""
        state.cancel_timers()
        self._not_ringing(state)
        self.active.pop(_key(state.room, state.identity), None)
        info = state.info
        now = self.rooms.now()
        info.ended_at = int(now)
        info.ended_at_ns = int(now * 1e9)
        disconnect = {
            "bye": Reason.CLIENT_INITIATED,
            "cancel": Reason.CLIENT_INITIATED,
            "timeout": Reason.CONNECTION_TIMEOUT,
        }.get(reason, Reason.UNKNOWN_REASON)
        final = state.call.transaction.last_response
        if final is not None:
            info.call_status_code.code = final.status  # type: ignore[assignment]
            info.call_status_code.status = final.reason or ""
        if reason in ("rejected",) and info.call_status != proto.SIPCallStatus.SCS_ACTIVE:
            info.call_status = proto.SIPCallStatus.SCS_ERROR
        else:
            info.call_status = proto.SIPCallStatus.SCS_DISCONNECTED
        if not state.leaving:
            state.leaving = True
            self._set_status(state, "hangup")
            room = self.rooms.registry.find(state.room)
            if room is not None and state.identity in room.participants:
                info.disconnect_reason = info.disconnect_reason or disconnect
                self.rooms.registry.remove(state.room, state.identity, now, info.disconnect_reason)
                self.rooms.commit()
        self.call_log.record(info)

    def _attributes_to_headers(self, state: InboundCallState) -> dict[str, str]:
        if state.trunk is None or not state.trunk.attributes_to_headers:
            return {}
        room = self.rooms.registry.find(state.room)
        participant = room.participants.get(state.identity) if room else None
        if participant is None:
            return {}
        return {
            header: participant.attributes[attribute]
            for attribute, header in state.trunk.attributes_to_headers.items()
            if participant.attributes.get(attribute)
        }

    # -- the room side ---------------------------------------------------------------------

    def on_room_event(self, event: ev.RoomEvent) -> None:
        match event:
            case ev.SubscriptionChanged(
                room_name=room, publisher_identity=publisher, subscribed=True
            ):
                state = self.active.get(_key(room, publisher))
                if state is not None:
                    self._answer(state)
            case ev.ParticipantJoined(room=room, participant=p) if (
                p.kind == models.ParticipantInfo.Kind.SIP
            ):
                for state in list(self.ringing.get(room.name, ())):
                    if state.identity != p.identity:
                        self._answer(state)
            case ev.ParticipantLeft(room=room, participant=p):
                state = self.active.get(_key(room.name, p.identity))
                if state is not None and not state.leaving:
                    # Removed from the room side (RemoveParticipant, DeleteRoom, a duplicate).
                    state.leaving = True
                    state.info.disconnect_reason = p.disconnect_reason
                    self._hangup(state, "removed")
            case _:
                pass

    def shutdown(self) -> int:
        """End every call before the server stops: BYE when answered, 503 while ringing."""
        ended = 0
        for state in list(self.active.values()):
            state.info.error = "server shutdown"
            state.info.disconnect_reason = Reason.SERVER_SHUTDOWN
            if state.call.answered:
                state.call.hangup()
            else:
                state.call.reject(503, "Service Unavailable", {"Retry-After": "5"})
            ended += 1
        return ended

    # -- bookkeeping -----------------------------------------------------------------------

    def _reject(self, call: IncomingCall, status: int, reason: str, *, cache: bool = True) -> None:
        request = call.request
        if cache:
            try:
                key = (request.call_id, request.from_.tag or "")
            except SipProtocolError:
                key = None
            if key is not None:
                self._rejected[key] = (time.monotonic() + REJECT_CACHE_TTL_S, status, reason)
                self._rejected.move_to_end(key)
                while len(self._rejected) > REJECT_CACHE_SIZE:
                    self._rejected.popitem(last=False)
        self._count(f"rejected_{status}")
        call.reject(status, reason)

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1


def _key(room: str, identity: str) -> str:
    return f"{room}\x00{identity}"


def _seconds(duration: object) -> float:
    if duration is None:
        return 0.0
    seconds = getattr(duration, "seconds", 0) + getattr(duration, "nanos", 0) / 1e9
    return float(seconds)
