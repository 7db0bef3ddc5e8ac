"""Inbound calls: an INVITE on a trunk becomes a SIP participant in a room (SIP-BEHAVIOUR.md s1).

The runner follows the reference's steps and answers every failure with a status, never a silent
drop: 100 at once (the UAS core), trunk match (404 none, 503 ambiguous), digest challenge for
trunks with credentials (407, then 403 for wrong credentials), dispatch rule (404 none), SDP
answer (488 when nothing is common), the room and the participant (kind SIP, every `sip.*`
attribute, status `ringing`), 180 every second while waiting; 200 once someone subscribes to the
caller's audio or another SIP participant is in the room; `active` after the ACK; `hangup` and
removal on BYE; RemoveParticipant/DeleteRoom send BYE; ringing timeout answers 486 (or the
trunk's `ringing_timeout_status`); `max_call_duration` hangs up. What a call does once it is in
its room, and its end, are `CallRunner`'s (server/calls/runner.py), shared with outbound calls;
PIN rooms are `PinEntry`'s (server/calls/pin_entry.py).
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from functools import partial

from livekit.protocol import models
from livekit.protocol import sip as proto

from sipbridge import ids, sdp
from sipbridge.errors import ApiError
from sipbridge.rooms import events as ev
from sipbridge.server.call_logging import bind_call, call_step
from sipbridge.server.calls.inbound_auth import TrunkAuth
from sipbridge.server.calls.live_call import CallServices, InboundCallState
from sipbridge.server.calls.pin_entry import PinEntry
from sipbridge.server.calls.reject_cache import RejectCache
from sipbridge.server.calls.runner import SCS_ACTIVE, SCS_PARTICIPANT_JOINED, CallRunner
from sipbridge.server.sip.session_timers import uas_session_timer
from sipbridge.server.sip.user_agent import IncomingCall
from sipbridge.sip.digest import DigestServer
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.message import Request
from sipbridge.telephony.auth_guard import AuthGuard
from sipbridge.telephony.call import (
    CallInput,
    CallLimits,
    CallState,
    Deadline,
    DeadlineReached,
    Direction,
    EndCause,
    room_participant_key,
)
from sipbridge.telephony.inbound import (
    InboundCall,
    TrunkConflict,
    inbound_attributes,
    inbound_call_info,
    match_trunk,
    participant_identity,
    participant_name,
    room_for,
    rule_needs_pin,
    select_rule,
)
from sipbridge.telephony.media import media_policy, sdp_codec

log = logging.getLogger(__name__)

RING_INTERVAL_S = 1.0
ACTIVE_AFTER_ACK_S = 1.0  # "first RTP or 1 s after ACK"
MAX_NUMBER_LENGTH = 128
SIP = models.ParticipantInfo.Kind.SIP
SCS_DISCONNECTED = proto.SIPCallStatus.SCS_DISCONNECTED  # (read once, as runner.py's)


class InboundCalls(CallRunner[InboundCallState]):
    """The user agent's `on_invite` (`invite`) and the inbound calls it starts."""

    DIRECTION = Direction.INBOUND

    def __init__(self, services: CallServices, auth: TrunkAuth | None = None) -> None:
        super().__init__(services)
        self.auth = auth or TrunkAuth(DigestServer(secrets.token_bytes(32)), AuthGuard())
        self.auth.count = self._count
        self.ringing: dict[str, set[InboundCallState]] = {}  # unanswered calls by room
        self._rejected = RejectCache()
        self.pins = PinEntry(self)
        self._arriving: deque[IncomingCall] = deque()  # INVITEs waiting for their turn

    # -- the INVITE ------------------------------------------------------------------------

    def invite(self, call: IncomingCall) -> None:
        """A new INVITE (its 100 Trying goes out as this returns): set up on a later turn, one
        call a turn, so that a burst of INVITEs never holds the loop - the media clock, OPTIONS,
        BYEs - for more than one call's setup (about 1.5 ms on the 2-core machine; issue 17:
        the 100 a source may send at once held it 150 ms, in one go).

        (A method, not `__call__`: mypyc gives a compiled class with `__call__` a vectorcall
        slot, which moved every field of the base `CallRunner` and crashed its `__init__`.)"""
        if len(self._arriving) >= self.max_calls or self.services.overloaded():
            self._count("overload")
            call.reject(503, "Service Unavailable", {"Retry-After": "5"})
            return
        self._arriving.append(call)
        if len(self._arriving) == 1:
            self.loop().call_soon(self._next_arrival)

    def _next_arrival(self) -> None:
        call = self._arriving.popleft()
        if self._arriving:
            self.loop().call_soon(self._next_arrival)
        if call.ended:  # CANCELled (or gone) while it waited
            return
        try:
            self._take(call)
        except Exception:
            # Never leave an INVITE with only its 100: it would hold its transaction forever.
            log.exception("INVITE %s: setting up the call failed", call.request.call_id)
            self._count("internal_error")
            if not call.ended and not call.answered:
                call.reject(500, "Server Internal Error")

    def _take(self, call: IncomingCall) -> None:
        request = call.request
        try:
            key = (request.call_id, request.from_.tag or "")
        except SipProtocolError:
            call.reject(400)
            return
        cached = self._rejected.get(key)
        if cached is not None:
            call.reject(*cached)  # same answer to a retry (s1 step 2)
            return
        if self.full():
            self._count("overload")
            call.reject(503, "Service Unavailable", {"Retry-After": "5"})
            return
        try:
            self._start(call)
        except SipProtocolError as err:
            self._reject(call, err.status, err.reason, cache=err.status != 407)

    @call_step
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
            source_ip=call.vouched_source or call.peer.host,  # (a node that proxied it says)
            call_id=request.call_id,
            from_tag=from_.tag or "",
            headers=tuple(request.headers.items),
        )
        state = InboundCallState(call=call, inbound=inbound, info=proto.SIPCallInfo())
        bind_call(state.info)
        state.session_timer = uas_session_timer(
            call,
            self.session_min_se,
            session=lambda: state.answer_sdp,
            on_expired=lambda reason: self.session_expired(state, reason),
            count=self._count,
        )
        if state.session_timer is None:  # refused: 422
            return
        trunks = list(self.config.inbound.values())
        trunk: proto.SIPInboundTrunkInfo | None = None
        if trunks:
            try:
                trunk = match_trunk(trunks, inbound)
            except TrunkConflict:
                raise SipProtocolError(503, "Service Unavailable") from None
            call.trunk_id = trunk.sip_trunk_id if trunk is not None else ""
            if trunk is None:
                if self.auth.conceal_numbers and any(t.auth_username for t in trunks):
                    # No enumeration: where trunks ask for passwords, a number no trunk has is
                    # challenged and refused exactly as a wrong password would be.
                    self.auth.check(call, None)
                    return
                raise SipProtocolError(404, "No trunk found")
            vouched = call.vouched_trunk == trunk.sip_trunk_id  # authenticated by that node
            if trunk.auth_username and not vouched and not self.auth.check(call, trunk):
                return
        state.trunk = trunk
        if trunk is not None:
            state.attributes_to_headers = dict(trunk.attributes_to_headers)
        rules = list(self.config.rules.values())
        trunk_id = trunk.sip_trunk_id if trunk is not None else ""
        rule = select_rule(rules, trunk_id, inbound)
        if rule is None:
            if rule_needs_pin(rules, trunk_id, inbound):
                self.pins.ask(state)
                return
            raise SipProtocolError(404, "No dispatch rule found")
        room = room_for(rule, inbound, secrets.token_hex(4))
        route = self.services.route_call  # a room another node owns: the INVITE goes there
        if route is None or not route(
            state.incoming, room, trunk_id, partial(self.proceed, state, rule, room)
        ):
            self.proceed(state, rule, room)

    def proceed(self, state: InboundCallState, rule: proto.SIPDispatchRuleInfo, room: str) -> None:
        """The call served here: its media, its room."""
        state.policy = media_policy(state.trunk, rule)
        state.answer_sdp = self._open_media(state)
        try:
            self.join(state, rule, room)
        except SipProtocolError:
            self._release_media(state)
            raise

    def limits(self, state: InboundCallState) -> CallLimits:
        trunk = state.trunk
        if trunk is None:
            return CallLimits()
        return CallLimits.of(ringing=trunk.ringing_timeout, max_duration=trunk.max_call_duration)

    # -- media -----------------------------------------------------------------------------

    def _open_media(self, state: InboundCallState) -> bytes:
        """The SDP answer and the call's RTP leg (488 when the offer has nothing for us)."""

        def on_dtmf(digit: str) -> None:
            self.guarded(state, partial(self._dtmf_from_caller, state, digit))

        def on_first_packet() -> None:
            self.guarded(state, partial(self._first_packet, state))

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
        state.call.on_offer = lambda request: self.reoffer(state, request)
        state.call.on_answer = lambda body: self.media.accept_answer(leg, body)
        return body

    def reoffer_media(self, state: InboundCallState, request: Request) -> bytes:
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

    def start_media(self, state: InboundCallState) -> None:
        if state.leg is None or state.leg.started_at is not None:
            return
        self.media.start(
            state.leg,
            timeout=state.policy.media_timeout,
            on_timeout=lambda: self.media_timeout(state),
        )

    def _first_packet(self, state: InboundCallState) -> None:
        if state.machine.state is CallState.CONNECTING and state.room:
            self.feed(state, CallInput.MEDIA_UP)

    def _dtmf_from_caller(self, state: InboundCallState, digit: str) -> None:
        """A key pressed on the phone: PIN entry, else a `sip_dtmf` packet in the room."""
        self._count("dtmf_received")
        if state.pin is not None:
            self.pins.digit(state, digit)
        else:
            self.dtmf_from_phone(state, digit)

    # -- joining the room ------------------------------------------------------------------

    def join(
        self, state: InboundCallState, rule: proto.SIPDispatchRuleInfo, name: str = ""
    ) -> None:
        """The participant in its room: ringing, or active after a PIN (answered already)."""
        call, inbound, trunk = state.call, state.inbound, state.trunk
        answered = call.answered  # a PIN room: answered before joining
        call_id = state.info.call_id or ids.new_id(ids.CALL)
        room_name = name or room_for(rule, inbound, secrets.token_hex(4))
        identity = participant_identity(rule, inbound)
        now = self.rooms.now()
        created = state.info.created_at_ns / 1e9 if state.info.created_at_ns else now
        info = inbound_call_info(
            call=inbound,
            call_id=call_id,
            trunk=trunk,
            rule=rule,
            room=room_name,
            identity=identity,
            to_host=call.request.uri.host,
            created=created,
        )
        state.info, state.room, state.identity, state.rule = info, room_name, identity, rule
        attributes = inbound_attributes(
            call=inbound,
            call_id=call_id,
            trunk=trunk,
            rule=rule,
            status="active" if answered else "ringing",
        )
        try:
            config = rule.room_config
            room, participant = self.join_room(
                state,
                name=participant_name(rule, inbound),
                metadata=rule.metadata,
                attributes=attributes,
                room_options={
                    "empty_timeout": config.empty_timeout,
                    "departure_timeout": config.departure_timeout,
                    "max_participants": config.max_participants,
                    "agents": list(config.agents) if rule.HasField("room_config") else [],
                    "egress": config.egress if config.HasField("egress") else None,
                },
            )
        except ApiError as err:
            self.rooms.commit()
            log.info("call %s: cannot join room %s: %s", call_id, room_name, err.message)
            info.call_status = proto.SIPCallStatus.SCS_ERROR
            info.error = err.message
            self.call_log.record(info)
            raise SipProtocolError(486, "Busy Here") from None
        info.room_id = room.sid
        state.record_attributes(participant.attributes)
        info.call_status = SCS_PARTICIPANT_JOINED
        if not answered:
            self.start_machine(state, CallState.RINGING, self.limits(state))
        self._register(state, participant)
        call.on_end = lambda reason: self.sip_ended(state, reason)
        self.arm(state)
        if answered:
            info.call_status = SCS_ACTIVE
            info.started_at, info.started_at_ns = int(now), int(now * 1e9)
            self.call_log.record(info)
            self._answered(state)
            self.rooms.commit()
            return
        self.ringing.setdefault(room_name, set()).add(state)
        call.on_ack = lambda: self.set_deadline(state, Deadline.CONFIRM, ACTIVE_AFTER_ACK_S)
        self.call_log.record(info)
        self._ring(state)
        self.rooms.commit()
        if self._someone_listens(state):
            self._answer(state)

    def _ring(self, state: InboundCallState) -> None:
        if state.machine.state is not CallState.RINGING or state.call.ended:
            return
        state.incoming.ring(180)
        self.set_deadline(state, Deadline.PROGRESS, RING_INTERVAL_S)

    def _someone_listens(self, state: InboundCallState) -> bool:
        """Answer when another SIP participant is already in the room (a bridge)."""
        room = self.rooms.registry.find(state.room)
        if room is None:
            return False
        # (counted as participants join and leave: a scan of a room shared by many callers,
        # once per call, grew with the square of the room)
        mine = room.participants.get(state.identity)
        return room.sip_participants() > (1 if mine is not None and mine.kind == SIP else 0)

    # -- answer, deadlines, the end --------------------------------------------------------

    def _answer(self, state: InboundCallState) -> None:
        self._not_ringing(state)
        if state.machine.state is not CallState.RINGING or state.call.ended:
            return
        headers = dict(state.trunk.headers) if state.trunk else {}
        headers.update(self.headers_from_attributes(state))
        state.incoming.answer(state.answer_sdp, headers=headers)
        if not state.call.answered:
            return  # it could not be answered, and was refused instead
        self.feed(state, CallInput.ANSWER)
        state.info.started_at = int(self.rooms.now())
        state.info.started_at_ns = int(self.rooms.now() * 1e9)
        self.call_log.record(state.info)
        self._answered(state)

    def _answered(self, state: InboundCallState) -> None:
        """The call is up: its audio joins the room (the machine counts its duration)."""
        self.start_media(state)
        if state.leg is not None:
            self.media.attach(state.leg, state.room)
        if state.session_timer is not None:
            state.session_timer.start()

    def _not_ringing(self, state: InboundCallState) -> None:
        waiting = self.ringing.get(state.room)
        if waiting is not None:
            waiting.discard(state)
            if not waiting:
                del self.ringing[state.room]

    def deadline_reached(self, state: InboundCallState, reached: DeadlineReached) -> None:
        match reached.deadline:
            case Deadline.PROGRESS:
                self._ring(state)
            case Deadline.PIN:
                self.pins.entered(state, wrong=True)
            case _:
                super().deadline_reached(state, reached)

    def give_up(self, state: InboundCallState, cause: EndCause, headers: dict[str, str]) -> None:
        """An unanswered call ends with a final response: the trunk's ringing timeout status
        (486 unless set), 503 with Retry-After at shutdown, 500 on our failure, else 486."""
        self._not_ringing(state)
        call = state.incoming
        if cause is EndCause.RINGING_TIMEOUT:
            status = state.trunk.ringing_timeout_status if state.trunk else 0
            call.reject(int(status) or 486)
        elif cause is EndCause.SHUTDOWN:
            call.reject(503, "Service Unavailable", {"Retry-After": "5"})
        elif cause is EndCause.ERROR:
            call.reject(500, "Server Internal Error")
        else:
            call.reject(486, headers=headers)

    def on_finished(self, state: InboundCallState, reason: str) -> None:
        self._not_ringing(state)
        self._release_media(state)
        info = state.info
        if not state.room:
            self.pins.finished(state, reason)
            return
        status, status_reason = state.incoming.transaction.last_status()
        if status:
            info.call_status_code.code = status  # type: ignore[assignment]
            info.call_status_code.status = status_reason
        if reason in ("rejected",) and info.call_status != SCS_ACTIVE:
            info.call_status = proto.SIPCallStatus.SCS_ERROR
        else:
            info.call_status = SCS_DISCONNECTED

    # -- the room side ---------------------------------------------------------------------

    def room_events(self) -> tuple[type, ...]:
        return (*super().room_events(), ev.SubscriptionChanged, ev.ParticipantJoined)

    def room_event(self, event: ev.RoomEvent) -> None:
        match event:
            case ev.SubscriptionChanged(
                room_name=room, publisher_identity=publisher, subscribed=True
            ):
                state = self.active.get(room_participant_key(room, publisher))
                if state is not None:
                    self.guarded(state, partial(self._answer, state))
            case ev.ParticipantJoined(room=room, participant=p) if p.kind == SIP:
                for waiting in list(self.ringing.get(room.name, ())):
                    if waiting.identity != p.identity:
                        self.guarded(waiting, partial(self._answer, waiting))
            case _:
                pass

    # -- refusals --------------------------------------------------------------------------

    def _reject(self, call: IncomingCall, status: int, reason: str, *, cache: bool = True) -> None:
        request = call.request
        if cache:
            try:
                key = (request.call_id, request.from_.tag or "")
            except SipProtocolError:
                key = None
            if key is not None:
                self._rejected.put(key, status, reason)
        self._count(f"rejected_{status}")
        call.reject(status, reason)
