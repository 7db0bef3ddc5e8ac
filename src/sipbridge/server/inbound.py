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
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError
from livekit.protocol import models
from livekit.protocol import sip as proto
from numpy.typing import NDArray

from sipbridge import ids, sdp
from sipbridge.errors import ApiError
from sipbridge.media import codecs
from sipbridge.media.dtmf import DIGITS, digit_code
from sipbridge.media.prompts import PROMPT_RATE, load_prompt
from sipbridge.rooms import events as ev
from sipbridge.server.call_log import CallLog
from sipbridge.server.call_media import CallMedia, PcmPlayer
from sipbridge.server.media_service import MediaService
from sipbridge.server.rooms_runtime import RoomsRuntime
from sipbridge.server.sip_config import SipConfig
from sipbridge.server.sip_ua import IncomingCall
from sipbridge.sip.digest import AuthOutcome, DigestServer
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import parse_session_expires
from sipbridge.sip.message import Request
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
from sipbridge.telephony.media import MediaPolicy, media_policy, sdp_codec

log = logging.getLogger(__name__)

DEFAULT_RINGING_TIMEOUT_S = 180.0
DEFAULT_MAX_CALL_DURATION_S = 24 * 3600.0
RING_INTERVAL_S = 1.0
ACTIVE_AFTER_ACK_S = 1.0  # "first RTP or 1 s after ACK"
PIN_MAX_DIGITS = 16
PIN_TIMEOUT_S = 30.0  # to enter a PIN after the prompt starts
# SendData user packets on these topics carry digits to SIP participants: the payload is the
# digits ("123#", `w` for a half-second pause), JSON {"digit": "5"} / {"code": 5}, or a
# serialised livekit.SipDTMF.
DTMF_TOPICS = frozenset({"sip_dtmf", "lk.sip_dtmf", "lk.dtmf", "dtmf"})
DTMF_CHARACTERS = frozenset(DIGITS + DIGITS.lower() + "wW")
REJECT_CACHE_SIZE = 5000
REJECT_CACHE_TTL_S = 60.0
MAX_NUMBER_LENGTH = 128
MIN_SESSION_EXPIRES_S = 90  # RFC 4028 s4 recommends at least 90 s
Status = models.ParticipantInfo.Kind
Reason = models.DisconnectReason


@dataclass(eq=False, kw_only=True)
class InboundCallState:
    """One call on its way through the runner."""

    call: IncomingCall
    inbound: InboundCall
    info: proto.SIPCallInfo = field(default_factory=proto.SIPCallInfo)
    leg: CallMedia | None = None
    policy: MediaPolicy = field(default_factory=MediaPolicy)
    pin: str | None = None  # digits entered so far while a PIN is asked for
    session_interval: int = 0  # RFC 4028: refreshed within this, else hung up
    refresh_by_us: bool = False  # refresher=uas: we send the refreshes
    refreshed_at: float = 0.0
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
        media: MediaService,
        *,
        max_calls: int,
        realm: str = "sipbridge",
        auth_secret: bytes | None = None,
    ) -> None:
        self.config = config
        self.rooms = rooms
        self.call_log = call_log
        self.media = media
        self.max_calls = max_calls
        self.realm = realm
        self.digest = DigestServer(auth_secret or secrets.token_bytes(32))
        self.active: dict[str, InboundCallState] = {}  # by participant key room/identity
        self.ringing: dict[str, set[InboundCallState]] = {}  # unanswered calls by room
        self.pending_pins: set[InboundCallState] = set()  # answered, asking for a PIN
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
        state = InboundCallState(call=call, inbound=inbound)
        if not self._session_timer(state):
            return
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
        state.trunk = trunk
        rules = list(self.config.rules.values())
        trunk_id = trunk.sip_trunk_id if trunk is not None else ""
        rule = select_rule(rules, trunk_id, inbound)
        if rule is None:
            if rule_needs_pin(rules, trunk_id, inbound):
                self._ask_pin(state)
                return
            raise SipProtocolError(404, "No dispatch rule found")
        state.policy = media_policy(trunk, rule)
        state.answer_sdp = self._open_media(state)
        try:
            self._join(state, rule)
        except SipProtocolError:
            self._release_media(state)
            raise

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

    def _session_timer(self, state: InboundCallState) -> bool:
        """RFC 4028 as UAS: 422 below our Min-SE; when the caller supports timers, it refreshes
        (refresher=uac) and we hang up a session not refreshed in time. False: rejected."""
        request = state.call.request
        value = request.headers.get("Session-Expires")
        if value is None:
            return True
        wanted = parse_session_expires(value)
        if wanted.seconds < MIN_SESSION_EXPIRES_S:
            self._count("rejected_422")
            state.call.reject(
                422, "Session Interval Too Small", {"Min-SE": str(MIN_SESSION_EXPIRES_S)}
            )
            return False
        supported = {
            item.strip().lower()
            for line in request.headers.get_all("Supported")
            for item in line.split(",")
        }
        if "timer" in supported:
            # The caller's choice of refresher is kept (s9); unsaid, the caller refreshes.
            refresher = wanted.refresher or "uac"
            state.session_interval = wanted.seconds
            state.refresh_by_us = refresher == "uas"
            state.call.response_headers = {
                "Session-Expires": f"{wanted.seconds};refresher={refresher}",
                "Require": "timer",
            }
        return True

    def _watch_session(self, state: InboundCallState) -> None:
        """Hang up when the refresher let the session expire (RFC 4028 s10: BYE shortly before
        the expiry, the smaller of 32 s and a third of the interval)."""
        interval = state.session_interval
        if not interval:
            return
        state.refreshed_at = time.monotonic()
        if state.refresh_by_us:
            # We are the refresher: refresh at half the interval (s7.4), for as long as it lasts.
            def refresh() -> None:
                self._count("session_refreshed")
                state.call.refresh_session(
                    {"Session-Expires": f"{interval};refresher=uas", "Supported": "timer"},
                    state.answer_sdp,
                )
                self._later(state, interval / 2, refresh)

            self._later(state, interval / 2, refresh)
            return
        margin = min(32.0, interval / 3)

        def check() -> None:
            due = state.refreshed_at + interval - margin
            left = due - time.monotonic()
            if left > 0:
                self._later(state, left, check)
                return
            self._count("session_expired")
            state.info.error = "session expired (RFC 4028)"
            self._hangup(state, "session-expired")

        self._later(state, interval - margin, check)

    def _open_media(self, state: InboundCallState) -> bytes:
        """The SDP answer and the call's RTP leg (488 when the offer has nothing for us)."""

        def on_dtmf(digit: str) -> None:
            self._dtmf_from_caller(state, digit)

        def on_first_packet() -> None:
            self._first_packet(state)

        request = state.call.request
        if request.body:
            body, leg = self.media.negotiate(
                request.body, state.policy, on_dtmf=on_dtmf, on_first_packet=on_first_packet
            )
        else:  # a late offer: ours goes in the 200, the answer comes in the ACK
            body, leg = self.media.offer(
                state.policy, on_dtmf=on_dtmf, on_first_packet=on_first_packet
            )
        state.leg = leg
        state.call.on_offer = lambda request: self._reoffer(state, request)
        state.call.on_answer = lambda body: self.media.accept_answer(leg, body)
        return body

    def _reoffer(self, state: InboundCallState, request: Request) -> bytes:
        """A re-INVITE or UPDATE: hold, resume, a new address or codec; the call is kept. Either
        refreshes the session (RFC 4028 s10)."""
        state.refreshed_at = time.monotonic()
        body = request.body
        if state.leg is None:
            raise SipProtocolError(488, "Not Acceptable Here")
        if not body:
            # An UPDATE without SDP only refreshes; a re-INVITE without one asks for our
            # current session as the offer (RFC 3261 s14.2), answered in the ACK.
            if request.method == "UPDATE":
                return b""
            state.leg.offered_codecs = (sdp_codec(state.leg.spec), sdp.TELEPHONE_EVENT)
            return state.answer_sdp
        self._count("reoffer")
        state.answer_sdp = self.media.renegotiate(state.leg, body, state.policy)
        return state.answer_sdp

    def _release_media(self, state: InboundCallState) -> None:
        if state.leg is not None:
            self.media.release(state.leg)
            state.leg = None

    def _start_media(self, state: InboundCallState) -> None:
        if state.leg is None or state.leg.started_at is not None:
            return
        self.media.start(
            state.leg,
            timeout=state.policy.media_timeout,
            on_timeout=lambda: self._media_timeout(state),
        )

    def _media_timeout(self, state: InboundCallState) -> None:
        log.info("call %s: no media, hanging up", state.info.call_id or state.call.request.call_id)
        state.info.error = "media timeout"
        state.info.disconnect_reason = Reason.CONNECTION_TIMEOUT
        self._hangup(state, "media-timeout")

    def _first_packet(self, state: InboundCallState) -> None:
        if state.call.answered and state.room:
            self._set_status(state, "active")

    # -- PIN rooms -------------------------------------------------------------------------

    def _ask_pin(self, state: InboundCallState) -> None:
        """Answer, play the prompt and collect digits up to '#' (SIP-BEHAVIOUR.md s1 step 10)."""
        state.policy = media_policy(state.trunk)
        body = state.answer_sdp = self._open_media(state)
        leg = state.leg
        assert leg is not None
        state.pin = ""
        now = self.rooms.now()
        inbound = state.inbound
        state.info = proto.SIPCallInfo(
            call_id=ids.new_id(ids.CALL),
            sip_call_id=inbound.call_id,
            trunk_id=state.trunk.sip_trunk_id if state.trunk is not None else "",
            call_direction=proto.SIPCallDirection.SCD_INBOUND,
            call_status=proto.SIPCallStatus.SCS_ACTIVE,
            from_uri=proto.SIPUri(user=inbound.caller, host=inbound.from_host),
            to_uri=proto.SIPUri(user=inbound.called, host=state.call.request.uri.host),
            created_at=int(now),
            created_at_ns=int(now * 1e9),
        )
        state.call.on_end = lambda reason: self._ended(state, reason)
        self.pending_pins.add(state)
        state.call.answer(body, headers=dict(state.trunk.headers) if state.trunk else {})
        self._count("pin_asked")
        self._start_media(state)
        self.media.attach(leg, f"\x00pin\x00{id(state)}")  # a room of its own: prompts only
        leg.play(PcmPlayer(self._prompt("enter_pin", leg)))
        self._later(state, PIN_TIMEOUT_S, lambda: self._pin_entered(state, wrong=True))

    def _prompt(self, name: str, leg: CallMedia) -> NDArray[np.int16]:
        pcm = load_prompt(name)
        rate = leg.spec.sample_rate
        if rate == PROMPT_RATE:
            return pcm
        return codecs.Resampler(PROMPT_RATE, rate).process(pcm)

    def _pin_digit(self, state: InboundCallState, digit: str) -> None:
        assert state.pin is not None
        if digit == "#":
            self._pin_entered(state)
            return
        state.pin += digit
        if state.leg is not None and state.leg.players:
            state.leg.stop_players()  # typing over the prompt stops it
        if len(state.pin) > PIN_MAX_DIGITS:
            self._pin_entered(state, wrong=True)

    def _pin_entered(self, state: InboundCallState, *, wrong: bool = False) -> None:
        if state.pin is None or state.call.ended:
            return
        pin, state.pin = state.pin, None
        state.cancel_timers()
        self.pending_pins.discard(state)
        rules = list(self.config.rules.values())
        trunk_id = state.trunk.sip_trunk_id if state.trunk is not None else ""
        rule = None if wrong else select_rule(rules, trunk_id, state.inbound, pin=pin)
        leg = state.leg
        assert leg is not None
        self.media.detach(leg)
        leg.stop_players()
        if rule is None:
            self._count("pin_wrong")
            state.info.error = "wrong PIN"
            self.media.attach(leg, f"\x00pin\x00{id(state)}")
            leg.play(PcmPlayer(self._prompt("wrong_pin", leg), done=state.call.hangup))
            return
        self._count("pin_right")
        state.policy = media_policy(state.trunk, rule)
        try:
            self._join(state, rule)
        except SipProtocolError:
            state.call.hangup()

    # -- joining the room ------------------------------------------------------------------

    def _join(self, state: InboundCallState, rule: proto.SIPDispatchRuleInfo) -> None:
        call, inbound, trunk = state.call, state.inbound, state.trunk
        answered = call.answered  # a PIN room: answered before joining
        call_id = state.info.call_id or ids.new_id(ids.CALL)
        room_name = room_for(rule, inbound, secrets.token_hex(4))
        identity = participant_identity(rule, inbound)
        now = self.rooms.now()
        created = state.info.created_at_ns / 1e9 if state.info.created_at_ns else now
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
            created_at=int(created),
            created_at_ns=int(created * 1e9),
        )
        state.info, state.room, state.identity, state.rule = info, room_name, identity, rule
        attributes = call_attributes(
            call=inbound,
            call_id=call_id,
            trunk=trunk,
            rule=rule,
            status="active" if answered else "ringing",
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
                active=True,  # its media is the call's: up as it joins
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
                    mime_type=f"audio/{state.leg.spec.name if state.leg else 'PCMU'}",
                ),
            )
        except ApiError as err:
            self.rooms.commit()
            log.info("call %s: cannot join room %s: %s", call_id, room_name, err.message)
            info.call_status = proto.SIPCallStatus.SCS_ERROR
            info.error = err.message
            self.call_log.record(info)
            raise SipProtocolError(486, "Busy Here") from None
        if state.leg is not None:
            self.media.track_legs[state.track_sid] = state.leg  # WebRTC subscribers hear it
        info.room_id = room.sid
        info.participant_attributes.update(participant.attributes)
        info.call_status = proto.SIPCallStatus.SCS_PARTICIPANT_JOINED
        self.active[room_participant_key(room_name, identity)] = state
        call.on_end = lambda reason: self._ended(state, reason)
        if answered:
            info.call_status = proto.SIPCallStatus.SCS_ACTIVE
            info.started_at, info.started_at_ns = int(now), int(now * 1e9)
            self.call_log.record(info)
            self._answered(state)
            self.rooms.commit()
            return
        self.ringing.setdefault(room_name, set()).add(state)
        call.on_ack = lambda: self._acked(state)
        self.call_log.record(info)
        self._ring(state)
        timeout = seconds_of(trunk.ringing_timeout if trunk else None) or DEFAULT_RINGING_TIMEOUT_S
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
        self._answered(state)

    def _answered(self, state: InboundCallState) -> None:
        """The call is up: its audio joins the room; max duration counts from here."""
        self._start_media(state)
        if state.leg is not None:
            self.media.attach(state.leg, state.room)
        self._watch_session(state)
        duration = seconds_of(state.trunk.max_call_duration if state.trunk else None)
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
        self._release_media(state)
        self.pending_pins.discard(state)
        if not state.room:
            # Ended while a PIN was asked for: logged as an error with what went wrong.
            now = self.rooms.now()
            self._count("pin_hangup" if state.info.error != "wrong PIN" else "pin_refused")
            info = state.info
            info.ended_at, info.ended_at_ns = int(now), int(now * 1e9)
            info.call_status = proto.SIPCallStatus.SCS_ERROR
            info.error = info.error or f"hung up during PIN entry ({reason})"
            self.call_log.record(info)
            return
        self.active.pop(room_participant_key(state.room, state.identity), None)
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

    # -- DTMF ------------------------------------------------------------------------------

    def _dtmf_from_caller(self, state: InboundCallState, digit: str) -> None:
        """A key pressed on the phone: PIN entry, else a reliable `sip_dtmf` packet in the room
        from the SIP participant (SIP-BEHAVIOUR.md s5)."""
        self._count("dtmf_received")
        if state.pin is not None:
            self._pin_digit(state, digit)
            return
        if not state.room or state.leaving or not state.call.answered:
            return
        packet = models.DataPacket(
            kind=models.DataPacket.Kind.RELIABLE,
            participant_identity=state.identity,
            sip_dtmf=models.SipDTMF(code=digit_code(digit), digit=digit),
        )
        try:
            self.rooms.registry.send_data(state.room, packet)
        except ApiError:
            return
        self.rooms.commit()

    def _dtmf_to_callers(self, event: ev.DataSent) -> None:
        """`SipDTMF` packets (or SendData on topic `sip_dtmf`) reaching SIP participants are
        played to their callers as RFC 4733 events, or as tones to phones without them."""
        found = dtmf_digits_for_sip(event)
        if found is None:
            return
        digits, targets = found
        if not digits:
            self._count("dtmf_unreadable")
            return
        for key in targets(self.active):
            state = self.active.get(key)
            if state is not None and state.leg is not None and state.call.answered:
                self._count("dtmf_sent")
                state.leg.send_dtmf(digits[:64])

    # -- the room side ---------------------------------------------------------------------

    def on_room_event(self, event: ev.RoomEvent) -> None:
        match event:
            case ev.SubscriptionChanged(
                room_name=room, publisher_identity=publisher, subscribed=True
            ):
                state = self.active.get(room_participant_key(room, publisher))
                if state is not None:
                    self._answer(state)
            case ev.ParticipantJoined(room=room, participant=p) if (
                p.kind == models.ParticipantInfo.Kind.SIP
            ):
                for state in list(self.ringing.get(room.name, ())):
                    if state.identity != p.identity:
                        self._answer(state)
            case ev.DataSent():
                self._dtmf_to_callers(event)
            case ev.ParticipantLeft(room=room, participant=p):
                state = self.active.get(room_participant_key(room.name, p.identity))
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
        for state in list(self.pending_pins):
            state.call.hangup()
            ended += 1
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


def dtmf_digits_for_sip(
    event: ev.DataSent,
) -> tuple[str, Callable[[Mapping[str, object]], list[str]]] | None:
    """The digits a data packet asks SIP participants to play ("" when unreadable), and which
    of a service's calls (keyed by `room_participant_key`) it is for: its destinations, else
    every SIP participant of the room but its sender. None: not a DTMF packet."""
    packet = event.packet
    which = packet.WhichOneof("value")
    if which == "sip_dtmf":
        digits = packet.sip_dtmf.digit or DIGITS[packet.sip_dtmf.code % 16]
    elif which == "user" and packet.user.topic in DTMF_TOPICS:
        digits = _dtmf_payload(packet.user.payload)
    else:
        return None
    sender = packet.participant_identity
    prefix = room_participant_key(event.room_name, "")

    def targets(calls: Mapping[str, object]) -> list[str]:
        if event.destinations:
            return [room_participant_key(event.room_name, i) for i in event.destinations]
        return [
            key
            for key in calls
            if key.startswith(prefix) and key != room_participant_key(event.room_name, sender)
        ]

    return digits, targets


def _dtmf_payload(payload: bytes) -> str:
    """Digits from a SendData DTMF payload (see DTMF_TOPICS); "" when none can be read."""
    text = payload.decode("utf-8", "replace").strip()
    if text and all(c in DTMF_CHARACTERS for c in text):
        return text
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            digit = doc.get("digit")
            if isinstance(digit, str) and digit and all(c in DTMF_CHARACTERS for c in digit):
                return digit
            code = doc.get("code")
            if isinstance(code, int) and 0 <= code < 16:
                return DIGITS[code]
        return ""
    message = models.SipDTMF()
    try:
        message.ParseFromString(payload)
    except DecodeError:
        return ""
    if message.digit and all(c in DTMF_CHARACTERS for c in message.digit):
        return message.digit
    if message.digit or not 0 <= message.code < 16:
        return ""
    return DIGITS[message.code] if payload else ""


def room_participant_key(room: str, identity: str) -> str:
    return f"{room}\x00{identity}"


def seconds_of(duration: object) -> float:
    if duration is None:
        return 0.0
    seconds = getattr(duration, "seconds", 0) + getattr(duration, "nanos", 0) / 1e9
    return float(seconds)
