"""PIN rooms (SIP-BEHAVIOUR.md s1 step 10): the call is answered at once, a prompt asks for the
PIN, digits are collected up to '#' (16 at most, 30 s to type them); the right PIN joins the
call to its room, `active`; a wrong one plays a prompt and hangs up. Until then the call is in
no room: its audio goes to a room of its own that only plays prompts."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from livekit.protocol import sip as proto
from numpy.typing import NDArray

from sipbridge import ids
from sipbridge.media import codecs
from sipbridge.media.prompts import PROMPT_RATE, load_prompt
from sipbridge.server.media.leg_driver import CallMedia, PcmPlayer
from sipbridge.sip.errors import SipProtocolError
from sipbridge.telephony.call import Call, CallInput, CallState, Direction
from sipbridge.telephony.inbound import select_rule
from sipbridge.telephony.media import media_policy

if TYPE_CHECKING:
    from sipbridge.server.calls.inbound import InboundCalls
    from sipbridge.server.calls.live_call import InboundCallState

log = logging.getLogger(__name__)

PIN_MAX_DIGITS = 16


class PinEntry:
    """The PIN part of the inbound runner."""

    def __init__(self, runner: InboundCalls) -> None:
        self.runner = runner

    def ask(self, state: InboundCallState) -> None:
        """Answer, play the prompt and collect digits up to '#'."""
        runner = self.runner
        state.policy = media_policy(state.trunk)
        body = state.answer_sdp = runner._open_media(state)
        leg = state.leg
        assert leg is not None
        state.pin = ""
        now = runner.rooms.now()
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
        state.call.on_end = lambda reason: runner.sip_ended(state, reason)
        state.machine = Call.start(
            Direction.INBOUND, CallState.PIN_ENTRY, runner.now(), runner.limits(state)
        )
        runner.pending.add(state)
        runner.arm(state)
        state.incoming.answer(body, headers=dict(state.trunk.headers) if state.trunk else {})
        if not state.call.answered:
            return  # it could not be answered, and was refused instead
        if state.session_timer is not None:  # from the 2xx, PIN entry included (RFC 4028)
            state.session_timer.start()
        runner._count("pin_asked")
        runner.start_media(state)
        runner.media.attach(leg, f"\x00pin\x00{id(state)}")  # a room of its own: prompts only
        leg.play(PcmPlayer(self.prompt("enter_pin", leg)))

    def prompt(self, name: str, leg: CallMedia) -> NDArray[np.int16]:
        pcm = load_prompt(name)
        rate = leg.spec.sample_rate
        if rate == PROMPT_RATE:
            return pcm
        return codecs.Resampler(PROMPT_RATE, rate).process(pcm)

    def digit(self, state: InboundCallState, digit: str) -> None:
        assert state.pin is not None
        if digit == "#":
            self.entered(state)
            return
        state.pin += digit
        if state.leg is not None and state.leg.players:
            state.leg.stop_players()  # typing over the prompt stops it
        if len(state.pin) > PIN_MAX_DIGITS:
            self.entered(state, wrong=True)

    def entered(self, state: InboundCallState, *, wrong: bool = False) -> None:
        """'#', too many digits, or the PIN timeout (`wrong`): into the room, or refused."""
        runner = self.runner
        if state.pin is None or state.call.ended:
            return
        pin, state.pin = state.pin, None
        rules = list(runner.config.rules.values())
        trunk_id = state.trunk.sip_trunk_id if state.trunk is not None else ""
        rule = None if wrong else select_rule(rules, trunk_id, state.inbound, pin=pin)
        leg = state.leg
        assert leg is not None
        runner.media.detach(leg)
        leg.stop_players()
        if rule is None:
            runner._count("pin_wrong")
            state.info.error = "wrong PIN"
            if state.machine.can(CallInput.HANG_UP):
                runner.feed(state, CallInput.HANG_UP)  # ending: the prompt, then BYE
            runner.media.attach(leg, f"\x00pin\x00{id(state)}")
            leg.play(PcmPlayer(self.prompt("wrong_pin", leg), done=state.call.hangup))
            return
        runner._count("pin_right")
        state.policy = media_policy(state.trunk, rule)
        now = runner.now()
        state.machine.handle(CallInput.PIN_ACCEPTED, now)  # (in no room yet: no status)
        state.machine.handle(CallInput.MEDIA_UP, now)  # it joins `active`
        try:
            runner.join(state, rule)
        except SipProtocolError:
            state.call.hangup()

    def finished(self, state: InboundCallState, reason: str) -> None:
        """Ended while a PIN was asked for: logged as an error with what went wrong."""
        runner = self.runner
        runner._count("pin_hangup" if state.info.error != "wrong PIN" else "pin_refused")
        info = state.info
        info.call_status = proto.SIPCallStatus.SCS_ERROR
        info.error = info.error or f"hung up during PIN entry ({reason})"
