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
from collections.abc import Callable
from dataclasses import dataclass, field

from livekit.protocol import models
from livekit.protocol import sip as proto

from sipbridge import ids, sdp
from sipbridge.errors import ApiError
from sipbridge.media.dtmf import DIGITS, digit_code
from sipbridge.media.tones import RINGBACK_ETSI
from sipbridge.rooms import events as ev
from sipbridge.server.auth import Claims
from sipbridge.server.call_log import CallLog
from sipbridge.server.call_media import CallMedia
from sipbridge.server.inbound import (
    DEFAULT_MAX_CALL_DURATION_S,
    DEFAULT_RINGING_TIMEOUT_S,
    dtmf_digits_for_sip,
    room_participant_key,
    seconds_of,
)
from sipbridge.server.media_service import MediaService
from sipbridge.server.rooms_runtime import RoomsRuntime
from sipbridge.server.sip_config import SipConfig
from sipbridge.server.sip_ua import OutgoingCall, SipUserAgent
from sipbridge.sip.digest import DigestClient
from sipbridge.sip.endpoint import Peer
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import Address
from sipbridge.sip.message import Request, Response
from sipbridge.sip.transaction import new_branch
from sipbridge.sip.uri import Uri, parse_uri
from sipbridge.telephony.inbound import ATTR_CALL_STATUS, ATTR_CALL_TAG
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


@dataclass(eq=False, kw_only=True)
class OutboundCallState:
    plan: DialPlan
    call: OutgoingCall
    leg: CallMedia
    policy: MediaPolicy
    info: proto.SIPCallInfo
    include_headers: int = 0
    dtmf: str = ""
    sdp: bytes = b""  # our side of the session as last described (offer, or latest answer)
    early: bool = False  # a provisional response's SDP is playing (early media)
    max_duration: float = 0.0  # from the answer
    answered: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    leaving: bool = False
    media_started: bool = False

    @property
    def room(self) -> str:
        return self.plan.room

    @property
    def identity(self) -> str:
        return self.plan.identity

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


class OutboundCalls:
    """CreateSIPParticipant, and the outbound calls it starts."""

    def __init__(
        self,
        config: SipConfig,
        rooms: RoomsRuntime,
        call_log: CallLog,
        media: MediaService,
        ua: SipUserAgent,
        *,
        max_calls: int,
    ) -> None:
        self.config = config
        self.rooms = rooms
        self.call_log = call_log
        self.media = media
        self.ua = ua
        self.max_calls = max_calls
        self.active: dict[str, OutboundCallState] = {}  # by participant key
        self.stats: dict[str, int] = {}
        rooms.listeners.append(self.on_room_event)

    # -- the API ---------------------------------------------------------------------------

    async def create(
        self, req: proto.CreateSIPParticipantRequest, _: Claims
    ) -> proto.SIPParticipantInfo:
        trunk = outbound_trunk(req, self.config.outbound)
        numbers = len(trunk.numbers)
        plan = dial_plan(req, trunk, secrets.randbelow(numbers) if numbers else 0)
        if len(self.active) >= self.max_calls:
            raise ApiError("resource_exhausted", "too many calls in progress")
        host = await self._resolve(plan)
        state = self._dial(req, plan, host)
        info = proto.SIPParticipantInfo(
            participant_id=self._participant_sid(state),
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
            self._cancel(state, 408, "Request Timeout", "ringing timeout")
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

    def _participant_sid(self, state: OutboundCallState) -> str:
        room = self.rooms.registry.find(state.room)
        participant = room.participants.get(state.identity) if room else None
        return participant.sid if participant else ""

    # -- dialling --------------------------------------------------------------------------

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
        holder: dict[str, OutboundCallState] = {}

        def on_dtmf(digit: str) -> None:
            if "state" in holder:
                self._dtmf_from_phone(holder["state"], digit)

        try:
            body, leg = self.media.offer(policy, on_dtmf=on_dtmf)
        except SipProtocolError as err:  # no RTP port left: refused, and logged as an error
            self._count("no_media_port")
            info.call_status = proto.SIPCallStatus.SCS_ERROR
            info.error = err.detail or err.reason
            self.call_log.record(info)
            raise ApiError("resource_exhausted", f"cannot place the call: {info.error}") from None
        invite = self._invite(plan, peer, sip_call_id, body)
        info.from_uri.CopyFrom(proto.SIPUri(user=plan.from_number, host=invite.from_.uri.host))
        info.to_uri.CopyFrom(proto.SIPUri(user=plan.to_user, host=plan.host, port=plan.port))
        call = OutgoingCall(ua=self.ua, request=invite, peer=peer, local_tag=invite.from_.tag or "")
        if plan.trunk.auth_username:
            call.credentials = DigestClient(plan.trunk.auth_username, plan.trunk.auth_password)
        state = OutboundCallState(
            plan=plan,
            call=call,
            leg=leg,
            policy=policy,
            info=info,
            include_headers=req.include_headers or plan.trunk.include_headers,
            dtmf="".join(c for c in req.dtmf.upper() if c in DIGITS or c == "W"),
            sdp=body,
        )
        holder["state"] = state
        try:
            self._join(state, req, sip_call_id)
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
        call.on_progress = lambda response: self._progress(state, response)
        call.on_answered = lambda response: self._answered(state, response)
        call.on_failed = lambda status, reason, response: self._failed(state, status, reason)
        call.on_end = lambda reason: self._ended(state, reason)
        call.on_offer = lambda request: self._reoffer(state, request)
        self.active[room_participant_key(plan.room, plan.identity)] = state
        info.call_status = proto.SIPCallStatus.SCS_PARTICIPANT_JOINED
        self.call_log.record(info)
        ringing = seconds_of(req.ringing_timeout) or DEFAULT_RINGING_TIMEOUT_S
        self._later(state, ringing, lambda: self._ringing_timeout(state))
        state.max_duration = min(
            seconds_of(req.max_call_duration) or DEFAULT_MAX_CALL_DURATION_S,
            DEFAULT_MAX_CALL_DURATION_S,
        )
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

    def _invite(self, plan: DialPlan, peer: Peer, sip_call_id: str, body: bytes) -> Request:
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
        request.headers.add("Supported", "timer, replaces")
        for name, value in plan.headers.items():
            request.headers.add(name, value)
        request.headers.add("Content-Type", "application/sdp")
        request.body = body
        return request

    def _join(
        self, state: OutboundCallState, req: proto.CreateSIPParticipantRequest, full: str
    ) -> None:
        """The participant, in the room before the INVITE leaves (s6), with its audio track."""
        plan, registry, now = state.plan, self.rooms.registry, self.rooms.now()
        attributes = dial_attributes(
            plan,
            call_id=state.info.call_id,
            call_id_full=full,
            extra=req.participant_attributes,
        )
        try:
            room, _ = registry.create(plan.room, now)
            participant = registry.join(
                plan.room,
                plan.identity,
                now,
                name=plan.name,
                kind=models.ParticipantInfo.Kind.SIP,
                active=True,
                metadata=req.participant_metadata,
                attributes=attributes,
                permission=models.ParticipantPermission(
                    can_subscribe=True, can_publish=True, can_publish_data=True
                ),
            )
            track_sid = registry.publish_track(
                plan.room,
                plan.identity,
                models.TrackInfo(
                    type=models.TrackType.AUDIO,
                    source=models.TrackSource.MICROPHONE,
                    name="phone",
                    mime_type=f"audio/{state.leg.spec.name}",
                ),
            )
        finally:
            self.rooms.commit()
        self.media.track_legs[track_sid] = state.leg
        state.info.room_id = room.sid
        state.info.participant_attributes.update(participant.attributes)

    # -- responses -------------------------------------------------------------------------

    def _progress(self, state: OutboundCallState, response: Response) -> None:
        """18x: ringing (and carrier ids from the response). One with SDP (183 Session
        Progress, typically) starts early media: the carrier's ringback or announcements are
        what the room hears from the phone's track until the answer."""
        extra = answer_attributes(state.plan.trunk, response.headers.items, 0)
        self._set_status(state, "ringing", extra)
        if not response.body or state.early:
            return
        leg = state.leg
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
        call, leg = state.call, state.leg
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
            call.hangup({"Reason": f'SIP;cause=488;text="{err.reason}"'})
            self._settle(state, call_failed(488, "Not Acceptable Here", state.info.error))
            return
        self._not_ringing_timer(state)
        now = self.rooms.now()
        state.info.started_at, state.info.started_at_ns = int(now), int(now * 1e9)
        state.info.audio_codec = leg.spec.name
        tag = response.to.tag or ""
        extra = answer_attributes(state.plan.trunk, response.headers.items, state.include_headers)
        if tag:
            extra[ATTR_CALL_TAG] = tag
        self.media.start(
            leg, timeout=state.policy.media_timeout, on_timeout=lambda: self._media_timeout(state)
        )
        self._later(state, state.max_duration, lambda: self._hangup(state, "max"))
        self.media.attach(leg, state.room)
        if state.dtmf:
            self._set_status(state, "automation", extra)
            leg.send_dtmf(state.dtmf)
            length = sum(DTMF_PAUSE_S if c == "W" else DTMF_DIGIT_S for c in state.dtmf)
            self._later(state, length, lambda: self._active(state))
        else:
            self._set_status(state, "active", extra)
            self._active(state)
        self._settle(state, None)

    def _active(self, state: OutboundCallState) -> None:
        self._set_status(state, "active")
        state.info.call_status = proto.SIPCallStatus.SCS_ACTIVE
        self.call_log.record(state.info)

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

    def _ringing_timeout(self, state: OutboundCallState) -> None:
        if not state.call.answered and not state.call.ended:
            self._cancel(state, 408, "Request Timeout", "ringing timeout")

    def _cancel(self, state: OutboundCallState, status: int, reason: str, error: str) -> None:
        """Give up ringing: CANCEL, the participant leaves as unavailable."""
        if state.call.answered or state.call.ended:
            return
        state.info.error = state.info.error or error
        if not state.info.disconnect_reason:  # (removed from the room: PARTICIPANT_REMOVED...)
            state.info.disconnect_reason = Reason.USER_UNAVAILABLE
        self._settle(state, call_failed(status, reason, error))
        state.call.cancel(self._attributes_to_headers(state))
        self._leave(state, state.info.disconnect_reason)

    def _reoffer(self, state: OutboundCallState, request: Request) -> bytes:
        """A re-INVITE or UPDATE from the phone's side: hold, resume, a new address or codec."""
        if not request.body:
            # An UPDATE without SDP only refreshes; a re-INVITE without one asks for our
            # session as the offer, answered in the ACK (RFC 3261 s14.2).
            if request.method == "UPDATE":
                return b""
            state.leg.offered_codecs = (sdp_codec(state.leg.spec), sdp.TELEPHONE_EVENT)
            state.call.on_answer = lambda body: self.media.accept_answer(state.leg, body)
            return state.sdp
        state.sdp = self.media.renegotiate(state.leg, request.body, state.policy)
        return state.sdp

    def _media_timeout(self, state: OutboundCallState) -> None:
        log.info("call %s: no media, hanging up", state.info.call_id)
        state.info.error = "media timeout"
        state.info.disconnect_reason = Reason.MEDIA_FAILURE
        self._hangup(state, "media-timeout")

    def _hangup(self, state: OutboundCallState, why: str) -> None:
        if state.call.ended:
            return
        if state.call.answered:
            state.call.hangup(self._attributes_to_headers(state))
        else:
            self._cancel(state, 487, "Request Terminated", why)

    # -- the end ---------------------------------------------------------------------------

    def _ended(self, state: OutboundCallState, reason: str) -> None:
        """The call is over (BYE either way, a failure, CANCEL): out of the room, logged."""
        state.cancel_timers()
        self.media.release(state.leg)
        self.active.pop(room_participant_key(state.room, state.identity), None)
        info = state.info
        now = self.rooms.now()
        info.ended_at, info.ended_at_ns = int(now), int(now * 1e9)
        if reason == "bye":
            info.disconnect_reason = info.disconnect_reason or Reason.CLIENT_INITIATED
        if state.call.answered:
            info.call_status = proto.SIPCallStatus.SCS_DISCONNECTED
        else:
            info.call_status = proto.SIPCallStatus.SCS_ERROR
        self._settle(state, call_failed(487, "Request Terminated", info.error or reason))
        self._leave(state, info.disconnect_reason or Reason.CLIENT_INITIATED)
        self.call_log.record(info)

    def _leave(self, state: OutboundCallState, reason: int) -> None:
        if state.leaving:
            return
        state.leaving = True
        self._set_status(state, "hangup", force=True)
        registry = self.rooms.registry
        room = registry.find(state.room)
        if room is not None and state.identity in room.participants:
            registry.remove(state.room, state.identity, self.rooms.now(), reason)
            self.rooms.commit()

    def _set_status(
        self,
        state: OutboundCallState,
        status: str,
        extra: dict[str, str] | None = None,
        *,
        force: bool = False,
    ) -> None:
        if state.leaving and not force:
            return
        registry = self.rooms.registry
        room = registry.find(state.room)
        if room is None or state.identity not in room.participants:
            return
        attributes = {**(extra or {}), ATTR_CALL_STATUS: status}
        try:
            participant = registry.update_participant(
                state.room, state.identity, attributes=attributes
            )
        except ApiError:
            return
        state.info.participant_attributes.update(participant.attributes)
        self.rooms.commit()

    def _attributes_to_headers(self, state: OutboundCallState) -> dict[str, str]:
        mapping = state.plan.trunk.attributes_to_headers
        room = self.rooms.registry.find(state.room)
        participant = room.participants.get(state.identity) if room else None
        if not mapping or participant is None:
            return {}
        return {
            header: participant.attributes[attribute]
            for attribute, header in mapping.items()
            if participant.attributes.get(attribute)
        }

    def _later(self, state: OutboundCallState, delay: float, fn: Callable[[], None]) -> None:
        state.timers.append(asyncio.get_running_loop().call_later(delay, fn))

    def _not_ringing_timer(self, state: OutboundCallState) -> None:
        """The ringing timeout is the first timer; the answer disarms it."""
        if state.timers:
            state.timers.pop(0).cancel()

    # -- DTMF and the room -----------------------------------------------------------------

    def _dtmf_from_phone(self, state: OutboundCallState, digit: str) -> None:
        if state.leaving or not state.call.answered:
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

    def on_room_event(self, event: ev.RoomEvent) -> None:
        match event:
            case ev.DataSent():
                found = dtmf_digits_for_sip(event)
                if found is None:
                    return
                digits, targets = found
                for key in targets(self.active):
                    state = self.active.get(key)
                    if state is not None and state.call.answered and not state.leaving:
                        state.leg.send_dtmf(digits[:64])
            case ev.ParticipantLeft(room=room, participant=p):
                state = self.active.get(room_participant_key(room.name, p.identity))
                if state is not None and not state.leaving:
                    state.leaving = True
                    state.info.disconnect_reason = p.disconnect_reason
                    self._hangup(state, "removed")
            case _:
                pass

    def shutdown(self) -> int:
        """End every call before the server stops."""
        ended = 0
        for state in list(self.active.values()):
            state.info.disconnect_reason = Reason.SERVER_SHUTDOWN
            self._hangup(state, "shutdown")
            ended += 1
        return ended

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1
