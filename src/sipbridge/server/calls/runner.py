"""What every call does in its room, whichever side dialled: one runner over `telephony.call`.

A call is a `LiveCall`: its SIP side (`IncomingCall` or `OutgoingCall`), its state machine, its
RTP leg, its participant. `CallRunner` keeps them and drives the machine: one `loop.call_at` per
call at the machine's next deadline, `sip.callStatus` written from the machine's state, the end
of a call in one place (`end`: BYE once answered, else the direction's refusal, CANCEL or a
final response) and its aftermath in another (`finished`: out of the room, media released,
logged). The inbound and outbound runners extend it with what only they do: matching an INVITE
to a rule, a PIN; dialling through a trunk. The room side (removals, duplicate identities, DTMF
to and from phones) is handled here, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Generic, TypeVar

from livekit.protocol import models
from livekit.protocol import sip as proto

from sipbridge.errors import ApiError
from sipbridge.rooms import Participant, Room
from sipbridge.rooms import events as ev
from sipbridge.server.call_logging import about_call, log_call_end
from sipbridge.server.calls.keys import key_to_room, keys_to_phones
from sipbridge.server.calls.live_call import CallServices, LiveCall
from sipbridge.server.calls.quality import QualityWriter
from sipbridge.server.calls.turns import OnePerTurn
from sipbridge.server.media.leg_driver import CallMedia
from sipbridge.sip.message import Request
from sipbridge.telephony.call import (
    Call,
    CallInput,
    CallLimits,
    CallState,
    Deadline,
    DeadlineReached,
    Direction,
    EndCause,
    disconnect_reason,
    room_participant_key,
)
from sipbridge.telephony.inbound import ATTR_CALL_STATUS

log = logging.getLogger(__name__)

# The enum values read once: each `models.X.Y` goes through protobuf's enum wrapper's Python
# `__getattr__` (about 1 us each, several a call; issue 18).
SIP_KIND = models.ParticipantInfo.Kind.SIP
AUDIO = models.TrackType.AUDIO
MICROPHONE = models.TrackSource.MICROPHONE
SCS_ACTIVE = proto.SIPCallStatus.SCS_ACTIVE
SCS_PARTICIPANT_JOINED = proto.SIPCallStatus.SCS_PARTICIPANT_JOINED

Reason = models.DisconnectReason
SIP_END_CAUSE = {  # how SipCall says its dialog ended -> why the call ended
    "bye": EndCause.REMOTE_HANGUP,
    "cancel": EndCause.REMOTE_HANGUP,
    "timeout": EndCause.NO_ACK,
}
FAR_END = frozenset({"bye", "cancel"})


C = TypeVar("C", bound=LiveCall)


class CallRunner(Generic[C]):
    """The calls of one direction; `calls_in_progress` counts both for the one call limit."""

    DIRECTION: Direction

    def __init__(self, services: CallServices) -> None:
        self.services = services
        self.config = services.config
        self.rooms = services.rooms
        self.call_log = services.call_log
        self.media = services.media
        self.max_calls = services.max_calls
        self.calls_in_progress = services.calls_in_progress or self.count
        self.session_min_se = services.session_min_se  # RFC 4028: our Min-SE
        self.active: dict[str, C] = {}  # in a room, by participant key (room, identity)
        self.by_participant: dict[str, C] = {}  # in a room, by participant sid
        self.pending: set[C] = set()  # in no room yet (entering a PIN)
        # Calls whose far end hung up, waiting for their aftermath (`sip_ended`), in order.
        self._ending: OnePerTurn[C] = OnePerTurn(
            lambda state: self.finished(state, state.sip_end), "a call's aftermath"
        )
        self.stats: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # (`loop`)
        # Told only of the events it acts on, not every event of every room (issue 18)
        self.rooms.listen(self.on_room_event, self.room_events())
        self.quality = QualityWriter(
            self.call_log,
            self.now,
            lambda: [(s.info, s.leg) for s in self.active.values() if not s.done],
        )

    # -- bookkeeping -----------------------------------------------------------------------

    def count(self) -> int:
        return len(self.active) + len(self.pending)

    def leg_of(self, sip_call_id: str) -> CallMedia | None:
        """The media leg of the call in a room with this SIP Call-ID, if any: a scan, for a
        request about one call (`Server.trace_rtp`), not for every call."""
        for state in self.active.values():
            if state.info.sip_call_id == sip_call_id:
                return state.leg
        return None

    def full(self) -> bool:
        return self.calls_in_progress() >= self.max_calls

    def stuck(self) -> int:
        """Calls that break the invariant "every live call has a deadline that ends it": held
        here though the machine or the SIP side has ended, or with no timer armed."""
        return sum(
            1
            for state in (*self.active.values(), *self.pending)
            if (
                state not in self._ending  # its aftermath is due on the next turns
                and not state.machine.live
            )
            or state.call.ended
            or state.timer is None
            or state.timer.cancelled()
        )

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    def _register(self, state: C, participant: Participant) -> None:
        state.participant_sid = participant.sid
        self.pending.discard(state)
        # A live call with this identity in this room was replaced by the join (the registry
        # removed its participant with DUPLICATE_IDENTITY, as LiveKit does): it ends with BYE
        # when that event reaches `on_room_event`, found by its participant sid.
        self.active[room_participant_key(state.room, state.identity)] = state
        self.by_participant[participant.sid] = state

    def join_room(
        self,
        state: C,
        *,
        name: str,
        metadata: str,
        attributes: Mapping[str, str],
        room_options: Mapping[str, Any] | None = None,
    ) -> tuple[Room, Participant]:
        """The call's participant (kind SIP, up as it joins: its media is the call's) in
        `state.room`, created if need be, with the phone's audio track; the caller commits."""
        registry, now = self.rooms.registry, self.rooms.now()
        limits = self.services.room_limits
        refused = limits.refuse(state.room, registry.find(state.room), state.identity, self.now())
        if refused is not None:
            self._count(refused)
            raise ApiError(
                "resource_exhausted", f"room {state.room!r}: {refused.replace('_', ' ')}"
            )
        room, _ = registry.create(state.room, now, **(room_options or {}))
        participant = registry.join(
            state.room,
            state.identity,
            now,
            name=name,
            kind=SIP_KIND,
            active=True,
            metadata=metadata,
            attributes=attributes,
            permission=models.ParticipantPermission(
                can_subscribe=True, can_publish=True, can_publish_data=True
            ),
        )
        state.track_sid = registry.publish_track(
            state.room,
            state.identity,
            models.TrackInfo(
                type=AUDIO,
                source=MICROPHONE,
                name="phone",
                mime_type=f"audio/{state.leg.spec.name if state.leg else 'PCMU'}",
            ),
        )
        if state.leg is not None:
            if not state.info.audio_codec:
                state.info.audio_codec = state.leg.spec.name
            self.media.track_legs[state.track_sid] = state.leg  # WebRTC subscribers hear it
            if self.services.on_media is not None:
                self.services.on_media(state.info, state.leg)
            self.quality.watch()
        return room, participant

    def _unregister(self, state: C) -> None:
        self.pending.discard(state)
        key = room_participant_key(state.room, state.identity)
        if self.active.get(key) is state:
            del self.active[key]
        self.by_participant.pop(state.participant_sid, None)

    # -- the machine and its deadlines -----------------------------------------------------

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, kept while it runs: `asyncio.get_running_loop` makes a getpid
        system call each time (its check for a fork), and a call asks for the loop a dozen
        times (1-2% of the loop's CPU at 200 inbound calls/s)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def now(self) -> float:
        return self.loop().time()

    def feed(self, state: C, what: CallInput, extra: Mapping[str, str] | None = None) -> None:
        """An input to the call's machine; the participant's `sip.callStatus` follows it (with
        `extra` attributes, e.g. a carrier's ids from the response), and the timer is re-armed."""
        before = state.machine.status
        state.machine.handle(what, self.now())
        status = state.machine.status
        if status is not None and (status != before or extra):
            self._set_attributes(state, {**(extra or {}), ATTR_CALL_STATUS: status})
        self.arm(state)

    def start_machine(self, state: C, initial: CallState, limits: CallLimits) -> None:
        """The call's life begins: dialling, ringing in its room, or at its PIN prompt."""
        state.machine = Call.start(self.DIRECTION, initial, self.now(), limits)

    def arm(self, state: C) -> None:
        """One timer per call, at the machine's next deadline (none once it has ended)."""
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        deadline = state.machine.get_timer()
        if deadline is not None:
            state.timer = self.loop().call_at(deadline, self._on_timer, state)

    def set_deadline(self, state: C, deadline: Deadline, delay: float) -> None:
        state.machine.set_deadline(deadline, self.now() + delay)
        self.arm(state)

    def _on_timer(self, state: C) -> None:
        state.timer = None
        with about_call(state.info):
            for reached in state.machine.handle_timer(self.now()):
                self.guarded(state, partial(self.deadline_reached, state, reached))
            self.arm(state)

    def deadline_reached(self, state: C, reached: DeadlineReached) -> None:
        """A deadline passed. The machine has already moved to ENDING when it ends the call;
        the runner tells the far end. Directions extend this for their own deadlines."""
        match reached.deadline:
            case Deadline.MAX_DURATION:
                self._count("max_duration")
                self.end(state, EndCause.MAX_DURATION)
            case Deadline.RINGING:
                self._count("ringing_timeout")
                state.info.error = state.info.error or "ringing timeout"
                self.end(state, EndCause.RINGING_TIMEOUT)
            case Deadline.CONFIRM if state.machine.can(CallInput.MEDIA_UP):
                self.feed(state, CallInput.MEDIA_UP)  # the ACK and a second: `active`
            case Deadline.AUTOMATION if state.machine.can(CallInput.AUTOMATION_DONE):
                self.feed(state, CallInput.AUTOMATION_DONE)  # the DTMF string was played
            case Deadline.ENDING:
                # The far end never confirmed the end (no answer to BYE or CANCEL): forgotten.
                log.info("call %s: the end was never confirmed", state.info.call_id)
                state.call._end("timeout")  # (its on_end runs `finished`)
                self.finished(state, "timeout")
            case _:
                pass

    def guarded(self, state: C, step: Callable[[], None]) -> None:
        """Run a step of a call; if it fails, the call ends (final response or BYE) rather than
        staying here with nothing left to end it (a zombie). Lines it logs are about the call."""
        with about_call(state.info):
            try:
                step()
            except Exception:
                log.exception("call %s: failed, ending it", state.info.call_id)
                self._count("internal_error")
                state.info.error = state.info.error or "internal error"
                try:
                    self.end(state, EndCause.ERROR)
                except Exception:
                    log.exception("call %s: cannot end it, forgetting it", state.info.call_id)
                    state.call._end("error")

    # -- the end ---------------------------------------------------------------------------

    def end(self, state: C, cause: EndCause, room_reason: int = 0) -> None:
        """End the call from our side, for `cause`: BYE once answered, else the direction's
        refusal (`give_up`). What follows when the SIP side is over is `finished`."""
        if state.call.ended or not state.machine.live:
            return
        state.cause = state.cause or cause
        if not state.info.disconnect_reason:
            state.info.disconnect_reason = disconnect_reason(cause, room_reason)  # type: ignore[assignment]
        headers = self.headers_from_attributes(state)
        if state.machine.can(CallInput.HANG_UP):
            self.feed(state, CallInput.HANG_UP)
        if state.session_timer is not None:
            state.session_timer.close()
        if state.call.answered:
            state.call.hangup(headers)
        else:
            self.give_up(state, cause, headers)

    def reoffer(self, state: C, request: Request) -> bytes:
        """A re-INVITE or UPDATE from the phone's side (hold, resume, a new address or codec):
        our SDP for the 2xx. Either refreshes the session (RFC 4028 s10): a 422 before anything
        changes, and the 2xx says the session timer again."""
        timer = state.session_timer
        if timer is not None:
            timer.check(request)
        body = self.reoffer_media(state, request)
        if timer is not None:
            state.call.response_headers = timer.refreshed(request)
        leg = state.leg
        if leg is not None:  # hold (sendonly/inactive) and resume, as the machine's states
            held = not (leg.sending and leg.receiving)
            what = CallInput.HOLD if held else CallInput.RESUME
            if state.machine.can(what):
                self.feed(state, what)
        return body

    def reoffer_media(self, state: C, request: Request) -> bytes:
        raise NotImplementedError

    def session_expired(self, state: C, reason: str) -> None:
        """No refresh came in time, or ours failed (RFC 4028 s10): BYE."""
        self._count("session_expired")
        state.info.error = reason
        self.guarded(state, partial(self.end, state, EndCause.SESSION_EXPIRED))

    def media_timeout(self, state: C) -> None:
        """No packet from the phone for the media timeout: BYE."""
        with about_call(state.info):
            log.info(
                "call %s: no media, hanging up", state.info.call_id or state.call.request.call_id
            )
        state.info.error = "media timeout"
        self.guarded(state, partial(self.end, state, EndCause.MEDIA_TIMEOUT))

    def give_up(self, state: C, cause: EndCause, headers: dict[str, str]) -> None:
        """End an unanswered call (486 or the trunk's status inbound, CANCEL outbound)."""
        raise NotImplementedError

    def sip_ended(self, state: C, reason: str) -> None:
        """The SIP side is over (`on_end`). Ended by the far end (BYE, CANCEL: inside that
        datagram's handling), `finished` waits for a later turn, one call a turn, in order
        (`turns.py`): the 200 leaves at once. Our own ends finish at once, as callers expect."""
        if reason in FAR_END and not state.done:
            state.sip_end = reason
            self._ending.add(state)
        else:
            self.finished(state, reason)

    def finished(self, state: C, reason: str) -> None:
        """The SIP side is over (BYE either way, CANCEL, a final response, a timeout): out of
        the room with the call's disconnect reason, media released, logged (the call log, and
        one `call_end` line with its outcome)."""
        if state.done:
            return
        state.done = True
        leg = state.leg  # (the inbound side lets go of it as it finishes)
        with about_call(state.info):
            self._finished(state, reason)
        log_call_end(state.info, sip_end=reason, leg=leg, call=state)

    def _finished(self, state: C, reason: str) -> None:
        if state.machine.live:
            state.machine.handle(CallInput.FINISHED, self.now())
        self.arm(state)  # (disarms: an ended call has no deadline)
        if state.session_timer is not None:
            state.session_timer.close()
            # Its callbacks hold the state: no cycle left behind for the cyclic GC to find.
            state.session_timer = None
        if state.leg is not None:
            self.quality.record(state.info, state.leg)  # the call's last word on its quality
            self.media.release(state.leg)
        self._unregister(state)
        info = state.info
        now = self.rooms.now()
        info.ended_at, info.ended_at_ns = int(now), int(now * 1e9)
        if not info.disconnect_reason:
            cause = state.cause or SIP_END_CAUSE.get(reason)
            reason_code = disconnect_reason(cause) if cause else Reason.UNKNOWN_REASON
            info.disconnect_reason = reason_code  # type: ignore[assignment]
        self.on_finished(state, reason)
        self.leave(state)
        self.call_log.record(info)

    def leave(self, state: C) -> None:
        """The participant, `hangup`, out of the room with the call's disconnect reason."""
        if self._participant(state) is None:
            return
        self._set_attributes(state, {ATTR_CALL_STATUS: "hangup"})
        reason = state.info.disconnect_reason or Reason.CLIENT_INITIATED
        self.rooms.registry.remove(state.room, state.identity, self.rooms.now(), reason)
        self.rooms.commit()

    def on_finished(self, state: C, reason: str) -> None:
        """The direction's part of the aftermath (the call's final status, a waiting API)."""

    # -- the participant -------------------------------------------------------------------

    def _participant(self, state: C) -> Participant | None:
        """This call's participant while it is in the room: the one with our sid, not a later
        one that took the same identity."""
        room = self.rooms.registry.find(state.room) if state.room else None
        participant = room.participants.get(state.identity) if room else None
        if participant is None or participant.sid != state.participant_sid:
            return None
        return participant

    def _set_attributes(self, state: C, attributes: Mapping[str, str]) -> None:
        if self._participant(state) is None:
            return
        try:
            participant = self.rooms.registry.update_participant(
                state.room, state.identity, attributes=dict(attributes)
            )
        except ApiError:
            return
        state.record_attributes(participant.attributes)
        if attributes.get(ATTR_CALL_STATUS) == "active":
            state.info.call_status = SCS_ACTIVE
            self.call_log.record(state.info)
        self.rooms.commit()

    def headers_from_attributes(self, state: C) -> dict[str, str]:
        """The trunk's `attributes_to_headers`, from the participant's attributes now."""
        participant = self._participant(state)
        if not state.attributes_to_headers or participant is None:
            return {}
        return {
            header: participant.attributes[attribute]
            for attribute, header in state.attributes_to_headers.items()
            if participant.attributes.get(attribute)
        }

    # -- DTMF ------------------------------------------------------------------------------

    def dtmf_from_phone(self, state: C, digit: str) -> None:
        """A key pressed on the phone: a reliable `sip_dtmf` packet in the room from the SIP
        participant (SIP-BEHAVIOUR.md s5), once the call is answered."""
        if not state.call.answered or state.machine.hanging_up or self._participant(state) is None:
            return
        key_to_room(self.rooms, state.room, state.identity, digit)

    def _play_keys(self, key: str, digits: str) -> bool:
        """DTMF from the room to the phone of this participant key, if its call is up."""
        state = self.active.get(key)
        if state is None or state.leg is None or not state.call.answered:
            return False
        if state.machine.hanging_up:
            return False
        state.leg.send_dtmf(digits)
        return True

    # -- the room side ---------------------------------------------------------------------

    def room_events(self) -> tuple[type, ...]:
        """The kinds of room event `on_room_event` acts on, and the direction's `room_event`."""
        return (ev.DataSent, ev.ParticipantLeft)

    def on_room_event(self, event: ev.RoomEvent) -> None:
        match event:
            case ev.DataSent():
                keys_to_phones(event, self.active, self._play_keys, self._count)
            case ev.ParticipantLeft(participant=p):
                state = self.by_participant.get(p.sid)
                if state is None or state.machine.hanging_up:
                    return
                # Removed from the room side (RemoveParticipant, DeleteRoom, a duplicate
                # identity that replaced it: DUPLICATE_IDENTITY, as LiveKit's server does).
                if p.disconnect_reason == Reason.DUPLICATE_IDENTITY:
                    self._count("duplicate_identity")
                    state.info.error = "replaced by a call with the same identity"
                state.info.disconnect_reason = p.disconnect_reason
                self.guarded(state, partial(self.end, state, EndCause.REMOVED))
            case _:
                self.room_event(event)

    def room_event(self, event: ev.RoomEvent) -> None:
        """Other room events, for the direction that needs them (inbound answers on them)."""

    def shutdown(self) -> int:
        """End every call before the server stops."""
        self._ending.drain()  # the far end hung up: their aftermath now, before the log stops
        calls = [*self.pending, *self.active.values()]
        self.quality.close()
        for state in calls:
            state.info.error = state.info.error or "server shutdown"
            state.info.disconnect_reason = Reason.SERVER_SHUTDOWN
            self.end(state, EndCause.SHUTDOWN)
        return len(calls)
