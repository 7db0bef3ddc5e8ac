"""Outbound calls: `CreateSIPParticipant` dials a number through an outbound trunk and the called
phone becomes a participant of kind SIP (SIP-BEHAVIOUR.md s6).

The participant joins the room first, `sip.callStatus=dialing`, its audio track published; then
the INVITE goes out with our SDP offer. 18x -> `ringing`; the 200 -> the answer is applied, the
call's audio joins the room, the `dtmf` string is played (`automation`) and the call is
`active`; a BYE from the phone or the participant's removal from the room ends it. A failure
(a final response >= 300, no answer within `ringing_timeout`, no response at all) takes the
participant out of the room with the matching `disconnect_reason`, and with
`wait_until_answered` comes back to the API as an error carrying `sip_status_code` and
`sip_status` (livekit-api raises `SipCallError` from them). Every call is in the call log.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

from livekit.protocol import models
from livekit.protocol import sip as proto

from sipbridge import ids, sdp
from sipbridge.errors import ApiError
from sipbridge.media.dtmf import DIGITS
from sipbridge.media.tones import RINGBACK_ETSI
from sipbridge.rooms import Participant
from sipbridge.server.api.auth import Claims
from sipbridge.server.call_logging import bind_call, call_step
from sipbridge.server.calls.live_call import CallServices, LiveCall
from sipbridge.server.calls.runner import CallRunner
from sipbridge.server.media.leg_driver import CallMedia
from sipbridge.server.sip.session_timers import SessionTimerDriver
from sipbridge.server.sip.user_agent import OutgoingCall, SipCall, SipUserAgent
from sipbridge.sip.digest import DigestClient
from sipbridge.sip.endpoint import Peer
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import Address
from sipbridge.sip.message import Request, Response
from sipbridge.sip.transaction import new_branch
from sipbridge.sip.ua.session_timer import DEFAULT_SESSION_EXPIRES, SessionTimer
from sipbridge.sip.uri import Uri, parse_uri
from sipbridge.telephony.call import (
    DEFAULT_RINGING_TIMEOUT_S,
    CallInput,
    CallLimits,
    CallState,
    Deadline,
    Direction,
    EndCause,
    seconds_of,
)
from sipbridge.telephony.inbound import ATTR_CALL_TAG
from sipbridge.telephony.media import MediaPolicy, media_policy, sdp_codec
from sipbridge.telephony.outbound import (
    DialPlan,
    answer_attributes,
    call_failed,
    dial_attributes,
    dial_plan,
    failure_reason,
    is_ip,
    outbound_trunk,
)

log = logging.getLogger(__name__)

Reason = models.DisconnectReason
ANSWER_WAIT_MARGIN_S = 5.0  # wait_until_answered: the ringing timeout plus this, at most
DTMF_DIGIT_S = 0.5  # one digit and its gap (RFC 4733 events, 250 ms each)
DTMF_PAUSE_S = 0.5  # `w`
RESOLVE_TIMEOUT_S = 5.0


@dataclass(init=False, eq=False, kw_only=True)
class OutboundCallState(LiveCall):
    """One outbound call."""

    plan: DialPlan
    include_headers: int = 0
    dtmf: str = ""
    sdp: bytes = b""  # our side of the session as last described (offer, or latest answer)
    early: bool = False  # a provisional response's SDP is playing (early media)
    answered: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    # Its own `__init__`, as `LiveCall`'s (mypyc compiles a subclass's generated one as a call
    # of the base's own, with the wrong arguments).
    def __init__(
        self,
        *,
        call: SipCall,
        info: proto.SIPCallInfo,
        plan: DialPlan,
        leg: CallMedia | None = None,
        policy: MediaPolicy | None = None,
        attributes_to_headers: Mapping[str, str] | None = None,
        room: str = "",
        identity: str = "",
        include_headers: int = 0,
        dtmf: str = "",
        sdp: bytes = b"",
        early: bool = False,
        answered: asyncio.Future[None] | None = None,
    ) -> None:
        super().__init__(
            call=call,
            info=info,
            leg=leg,
            policy=policy,
            attributes_to_headers=attributes_to_headers,
            room=room,
            identity=identity,
        )
        self.plan = plan
        self.include_headers = include_headers
        self.dtmf = dtmf
        self.sdp = sdp
        self.early = early
        if answered is None:
            answered = asyncio.get_running_loop().create_future()
        self.answered = answered

    # `call` and `leg` as they are outbound. (Properties, not narrower attributes: a compiled
    # class cannot narrow the type of an attribute it inherits.)
    @property
    def outgoing(self) -> OutgoingCall:
        """`call`, our INVITE to the trunk."""
        assert isinstance(self.call, OutgoingCall)
        return self.call

    @property
    def media_leg(self) -> CallMedia:
        """`leg`, which an outbound call has from its INVITE (the offer) to its end."""
        assert self.leg is not None
        return self.leg


class OutboundCalls(CallRunner[OutboundCallState]):
    """CreateSIPParticipant, and the outbound calls it starts."""

    DIRECTION = Direction.OUTBOUND

    def __init__(self, services: CallServices, ua: SipUserAgent) -> None:
        super().__init__(services)
        self.ua = ua

    # -- the API ---------------------------------------------------------------------------

    async def create(
        self, req: proto.CreateSIPParticipantRequest, _: Claims
    ) -> proto.SIPParticipantInfo:
        await self.config.look_up_outbound(req.sip_trunk_id)
        trunk = outbound_trunk(req, self.config.outbound)
        numbers = len(trunk.numbers)
        plan = dial_plan(req, trunk, secrets.randbelow(numbers) if numbers else 0)
        if self.full():
            raise ApiError("resource_exhausted", "too many calls in progress")
        host = await self._resolve(plan)
        state = self._dial(req, plan, host)
        info = proto.SIPParticipantInfo(
            participant_id=state.participant_sid if self._participant(state) else "",
            participant_identity=plan.identity,
            room_name=plan.room,
            sip_call_id=state.info.call_id,
        )
        if not req.wait_until_answered:
            return info
        ringing = seconds_of(req.ringing_timeout) or DEFAULT_RINGING_TIMEOUT_S
        try:
            await asyncio.wait_for(asyncio.shield(state.answered), ringing + ANSWER_WAIT_MARGIN_S)
        except TimeoutError:
            self.end(state, EndCause.RINGING_TIMEOUT)
            raise call_failed(
                408, "Request Timeout", "no answer before the ringing timeout"
            ) from None
        return info

    async def _resolve(self, plan: DialPlan) -> str:
        """The trunk host as an address to send to (DNS A/AAAA; SRV/NAPTR are not looked up)."""
        if is_ip(plan.host):
            return plan.host
        loop = asyncio.get_running_loop()
        try:
            found = await asyncio.wait_for(
                loop.getaddrinfo(plan.host, plan.port, type=2), RESOLVE_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            self._count("unresolved")
            raise ApiError(
                "failed_precondition", f"trunk address {plan.host!r} does not resolve"
            ) from None
        return str(found[0][4][0])

    # -- dialling --------------------------------------------------------------------------

    @call_step
    def _dial(
        self, req: proto.CreateSIPParticipantRequest, plan: DialPlan, host: str
    ) -> OutboundCallState:
        policy = media_policy(plan.trunk, req)
        now = self.rooms.now()
        call_id = ids.new_id(ids.CALL)
        sip_call_id = f"{secrets.token_hex(12)}@{self.ua.host}"
        peer = Peer(plan.transport, host, plan.port)
        info = proto.SIPCallInfo(
            call_id=call_id,
            sip_call_id=sip_call_id,
            trunk_id=plan.trunk.sip_trunk_id,
            room_name=plan.room,
            participant_identity=plan.identity,
            call_direction=proto.SIPCallDirection.SCD_OUTBOUND,
            call_status=proto.SIPCallStatus.SCS_CALL_INCOMING,
            created_at=int(now),
            created_at_ns=int(now * 1e9),
        )
        bind_call(info)
        holder: dict[str, OutboundCallState] = {}

        def on_dtmf(digit: str) -> None:
            if "state" in holder:
                self.dtmf_from_phone(holder["state"], digit)

        try:
            body, leg = self.media.offer(policy, on_dtmf=on_dtmf)
        except SipProtocolError as err:  # no RTP port left: refused, and logged as an error
            self._count("no_media_port")
            info.call_status = proto.SIPCallStatus.SCS_ERROR
            info.error = err.detail or err.reason
            self.call_log.record(info)
            raise ApiError("resource_exhausted", f"cannot place the call: {info.error}") from None
        timer = SessionTimer(
            uac=True,
            min_se=self.session_min_se,
            session_expires=max(DEFAULT_SESSION_EXPIRES, self.session_min_se),
        )
        invite = self._invite(plan, peer, sip_call_id, body, timer.invite_headers())
        info.from_uri.CopyFrom(proto.SIPUri(user=plan.from_number, host=invite.from_.uri.host))
        info.to_uri.CopyFrom(proto.SIPUri(user=plan.to_user, host=plan.host, port=plan.port))
        call = OutgoingCall(ua=self.ua, request=invite, peer=peer, local_tag=invite.from_.tag or "")
        call.trunk_id = plan.trunk.sip_trunk_id
        if plan.trunk.auth_username:
            call.credentials = DigestClient(plan.trunk.auth_username, plan.trunk.auth_password)
        limits = CallLimits.of(ringing=req.ringing_timeout, max_duration=req.max_call_duration)
        state = OutboundCallState(
            call=call,
            plan=plan,
            leg=leg,
            policy=policy,
            info=info,
            attributes_to_headers=dict(plan.trunk.attributes_to_headers),
            room=plan.room,
            identity=plan.identity,
            include_headers=req.include_headers or plan.trunk.include_headers,
            dtmf="".join(c for c in req.dtmf.upper() if c in DIGITS or c == "W"),
            sdp=body,
        )
        holder["state"] = state
        self.start_machine(state, CallState.DIALING, limits)
        state.session_timer = SessionTimerDriver(
            timer,
            call,
            session=lambda: state.sdp,
            on_expired=lambda reason: self.session_expired(state, reason),
            on_refresh=lambda: self._count("session_refreshed"),
        )
        call.on_interval_too_small = timer.invite_refused
        try:
            participant = self._join(state, req, sip_call_id)
        except ApiError:
            self.media.release(leg)
            info.call_status = proto.SIPCallStatus.SCS_ERROR
            self.call_log.record(info)
            raise
        if req.play_dialtone or req.play_ringtone:
            # The room hears ringback from the phone's track until the phone (or the
            # carrier's early media) takes over.
            leg.play_to_room(RINGBACK_ETSI)
            self.media.attach(leg, plan.room)
        call.on_progress = lambda response: self.guarded(
            state, partial(self._progress, state, response)
        )
        call.on_answered = lambda response: self.guarded(
            state, partial(self._answered, state, response)
        )
        call.on_failed = lambda status, reason, response: self._failed(state, status, reason)
        call.on_end = lambda reason: self.sip_ended(state, reason)
        call.on_offer = lambda request: self.reoffer(state, request)
        self._register(state, participant)
        self.arm(state)
        info.call_status = proto.SIPCallStatus.SCS_PARTICIPANT_JOINED
        self.call_log.record(info)
        self._count("dialled")
        log.info(
            "call %s: dialling %s via %s:%d/%s for room %s",
            call_id,
            plan.to_user,
            plan.host,
            plan.port,
            plan.transport,
            plan.room,
        )
        call.send()
        return state

    def _invite(
        self, plan: DialPlan, peer: Peer, sip_call_id: str, body: bytes, timer: dict[str, str]
    ) -> Request:
        """Our INVITE: the SDP offer, and session timers offered (RFC 4028 s7.1: `timer` in
        Supported - all we support -, Session-Expires and Min-SE); the 2xx decides who
        refreshes."""
        transport = (("transport", plan.transport),) if plan.transport != "udp" else ()
        target = Uri(
            scheme="sip", user=plan.to_user, host=plan.host, port=plan.port, params=transport
        )
        uri = parse_uri(plan.request_uri) if plan.request_uri else target
        from_uri = Uri(scheme="sip", user=plan.from_number, host=plan.from_host or self.ua.host)
        from_ = Address(uri=from_uri, display_name=plan.display_name).with_tag(secrets.token_hex(8))
        to = Address(uri=Uri(scheme="sip", user=plan.to_user, host=plan.host))
        request = Request(method="INVITE", uri=uri)
        via = self.ua.via(peer).with_params(branch=new_branch())
        request.headers.add("Via", str(via))
        request.headers.add("Max-Forwards", "70")
        request.headers.add("From", str(from_))
        request.headers.add("To", str(to))
        request.headers.add("Call-ID", sip_call_id)
        request.headers.add("CSeq", "1 INVITE")
        request.headers.add("Contact", str(self.ua.contact(peer)))
        request.headers.add("Allow", ", ".join(self.ua.service.endpoint.settings.allow))
        request.headers.add("Supported", ", ".join(self.ua.service.endpoint.settings.supported))
        for name, value in timer.items():
            request.headers.add(name, value)
        for name, value in plan.headers.items():
            request.headers.add(name, value)
        request.headers.add("Content-Type", "application/sdp")
        request.body = body
        return request

    def _join(
        self, state: OutboundCallState, req: proto.CreateSIPParticipantRequest, full: str
    ) -> Participant:
        """The participant, in the room before the INVITE leaves (s6), with its audio track."""
        plan = state.plan
        attributes = dial_attributes(
            plan,
            call_id=state.info.call_id,
            call_id_full=full,
            extra=req.participant_attributes,
        )
        try:
            room, participant = self.join_room(
                state, name=plan.name, metadata=req.participant_metadata, attributes=attributes
            )
        finally:
            self.rooms.commit()
        state.info.room_id = room.sid
        state.record_attributes(participant.attributes)
        return participant

    # -- responses -------------------------------------------------------------------------

    def _progress(self, state: OutboundCallState, response: Response) -> None:
        """18x: ringing (and carrier ids from the response). One with SDP (183 Session
        Progress, typically) starts early media: the carrier's ringback or announcements are
        what the room hears from the phone's track until the answer."""
        if not state.machine.can(CallInput.RING):
            return
        extra = answer_attributes(state.plan.trunk, response.headers.items, 0)
        self.feed(state, CallInput.RING, extra)
        if not response.body or state.early:
            return
        leg = state.media_leg
        try:
            leg.play_to_room(None)
            self.media.accept_answer(leg, response.body)
        except SipProtocolError as err:
            log.info("call %s: early media refused: %s", state.info.call_id, err.detail)
            return
        state.early = True
        self._count("early_media")
        self.media.start_early(leg)
        self.media.attach(leg, state.room)

    def _answered(self, state: OutboundCallState, response: Response) -> None:
        call, leg = state.call, state.media_leg
        if not state.machine.can(CallInput.ANSWER):
            # Answered after we gave up (a 2xx crossing our CANCEL is hung up by the UA).
            return
        try:
            leg.play_to_room(None)
            if response.body:
                self.media.accept_answer(leg, response.body)
            elif not state.early:  # (with early media, the 183's SDP was the answer)
                raise SipProtocolError(488, "Not Acceptable Here", "a 200 without SDP")
        except SipProtocolError as err:
            log.info("call %s: answer refused: %s", state.info.call_id, err.detail)
            state.info.error = f"unusable answer: {err.detail}"
            state.info.disconnect_reason = Reason.MEDIA_FAILURE
            state.cause = EndCause.ERROR
            self.feed(state, CallInput.ANSWER)
            self.feed(state, CallInput.HANG_UP)
            call.hangup({"Reason": f'SIP;cause=488;text="{err.reason}"'})
            self._settle(state, call_failed(488, "Not Acceptable Here", state.info.error))
            return
        self.feed(state, CallInput.ANSWER)
        now = self.rooms.now()
        state.info.started_at, state.info.started_at_ns = int(now), int(now * 1e9)
        state.info.audio_codec = leg.spec.name
        tag = response.to.tag or ""
        extra = answer_attributes(state.plan.trunk, response.headers.items, state.include_headers)
        if tag:
            extra[ATTR_CALL_TAG] = tag
        self.media.start(
            leg, timeout=state.policy.media_timeout, on_timeout=lambda: self.media_timeout(state)
        )
        if state.session_timer is not None:
            state.session_timer.timer.answer_received(response)
            state.session_timer.start()
        self.media.attach(leg, state.room)
        if state.dtmf:
            self.feed(state, CallInput.AUTOMATE, extra)
            leg.send_dtmf(state.dtmf)
            length = sum(DTMF_PAUSE_S if c == "W" else DTMF_DIGIT_S for c in state.dtmf)
            self.set_deadline(state, Deadline.AUTOMATION, length)
        else:
            self.feed(state, CallInput.MEDIA_UP, extra)
        self._settle(state, None)

    def _failed(self, state: OutboundCallState, status: int, reason: str) -> None:
        """A final response >= 300, or none at all: the participant leaves."""
        if not state.info.error:
            state.info.error = f"{status} {reason}".strip()
        state.info.call_status_code.code = status  # type: ignore[assignment]
        state.info.call_status_code.status = reason
        if not state.info.disconnect_reason:
            state.info.disconnect_reason = failure_reason(status)  # type: ignore[assignment]
        self._count(f"failed_{status}")
        self._settle(state, call_failed(status, reason))

    def _settle(self, state: OutboundCallState, error: ApiError | None) -> None:
        if state.answered.done():
            return
        if error is None:
            state.answered.set_result(None)
        else:
            state.answered.set_exception(error)
            state.answered.exception()  # retrieved: nobody may be waiting for it

    def give_up(self, state: OutboundCallState, cause: EndCause, headers: dict[str, str]) -> None:
        """Give up an unanswered call: CANCEL (once the far end has the INVITE), and the
        participant leaves at once, unavailable."""
        if cause is EndCause.RINGING_TIMEOUT:
            status, reason, error = 408, "Request Timeout", "ringing timeout"
        else:
            status, reason, error = 487, "Request Terminated", cause.value
        state.info.error = state.info.error or error
        self._settle(state, call_failed(status, reason, state.info.error))
        state.outgoing.cancel(headers)
        self.leave(state)

    def reoffer_media(self, state: OutboundCallState, request: Request) -> bytes:
        leg = state.media_leg
        if not request.body:
            # An UPDATE without SDP only refreshes; a re-INVITE without one asks for our
            # session as the offer, answered in the ACK (RFC 3261 s14.2).
            if request.method == "UPDATE":
                return b""
            leg.offered_codecs = (sdp_codec(leg.spec), sdp.TELEPHONE_EVENT)
            state.call.on_answer = lambda body: self.media.accept_answer(leg, body)
            return state.sdp
        state.sdp = self.media.renegotiate(leg, request.body, state.policy)
        return state.sdp

    def on_finished(self, state: OutboundCallState, reason: str) -> None:
        if state.call.answered:
            state.info.call_status = proto.SIPCallStatus.SCS_DISCONNECTED
        else:
            state.info.call_status = proto.SIPCallStatus.SCS_ERROR
        self._settle(state, call_failed(487, "Request Terminated", state.info.error or reason))
