"""What a call is while it runs (`LiveCall`) and what the runners of both directions work with
(`CallServices`): the data of `CallRunner` (server/calls/runner.py), which re-exports both; an
inbound call's (`InboundCallState`, server/calls/inbound.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from livekit.protocol import sip as proto

from sipbridge.server.calls.room_limits import RoomLimits
from sipbridge.server.media.leg_driver import CallMedia
from sipbridge.server.media.service import MediaService
from sipbridge.server.sip.session_timers import SessionTimerDriver
from sipbridge.server.sip.user_agent import IncomingCall, SipCall
from sipbridge.server.state.call_log import CallLog
from sipbridge.server.state.rooms_runtime import RoomsRuntime
from sipbridge.server.state.trunk_cache import SipConfig
from sipbridge.sip.ua.session_timer import RFC_MIN_SE
from sipbridge.telephony.call import Call, EndCause
from sipbridge.telephony.inbound import InboundCall
from sipbridge.telephony.media import MediaPolicy


# Dataclasses made for every call write their own `__init__` (`init=False`): mypyc compiles
# it, where the one the dataclasses module generates stays interpreted (issue 18).
@dataclass(init=False, eq=False, kw_only=True)
class LiveCall:
    """One call in progress, inbound or outbound."""

    call: SipCall
    info: proto.SIPCallInfo
    machine: Call = field(default_factory=Call.unstarted)  # `CallRunner.start_machine`
    leg: CallMedia | None = None
    policy: MediaPolicy = field(default_factory=MediaPolicy)
    attributes_to_headers: Mapping[str, str] = field(default_factory=dict)  # the trunk's
    room: str = ""
    identity: str = ""
    participant_sid: str = ""  # which participant of that identity is this call's
    track_sid: str = ""
    session_timer: SessionTimerDriver | None = None  # RFC 4028, when negotiated
    timer: asyncio.TimerHandle | None = None  # at the machine's next deadline
    cause: EndCause | None = None  # why we ended it, when we did
    done: bool = False  # `finished` ran: out of the room, logged
    sip_end: str = ""  # how the far end ended it, while its aftermath waits (`sip_ended`)
    # The participant's attributes as last put in a call record (which record, and a copy of
    # them): only what changed since is set again (`record_attributes`).
    recorded: tuple[proto.SIPCallInfo, dict[str, str]] | None = None

    def __init__(
        self,
        *,
        call: SipCall,
        info: proto.SIPCallInfo,
        machine: Call | None = None,
        leg: CallMedia | None = None,
        policy: MediaPolicy | None = None,
        attributes_to_headers: Mapping[str, str] | None = None,
        room: str = "",
        identity: str = "",
        participant_sid: str = "",
        track_sid: str = "",
        session_timer: SessionTimerDriver | None = None,
        timer: asyncio.TimerHandle | None = None,
        cause: EndCause | None = None,
        done: bool = False,
        sip_end: str = "",
        recorded: tuple[proto.SIPCallInfo, dict[str, str]] | None = None,
    ) -> None:
        self.call = call
        self.info = info
        self.machine = Call.unstarted() if machine is None else machine
        self.leg = leg
        self.policy = MediaPolicy() if policy is None else policy
        self.attributes_to_headers = {} if attributes_to_headers is None else attributes_to_headers
        self.room = room
        self.identity = identity
        self.participant_sid = participant_sid
        self.track_sid = track_sid
        self.session_timer = session_timer
        self.timer = timer
        self.cause = cause
        self.done = done
        self.sip_end = sip_end
        self.recorded = recorded

    def record_attributes(self, attributes: Mapping[str, str]) -> None:
        """The participant's `attributes` into the call's record (`record_attributes`)."""
        self.recorded = record_attributes(self.info, attributes, self.recorded)


Recorded = tuple[proto.SIPCallInfo, dict[str, str]]


def record_attributes(
    info: proto.SIPCallInfo, attributes: Mapping[str, str], recorded: Recorded | None
) -> Recorded:
    """A participant's `attributes` into its call's record, as the map's `update` (keys added
    or changed, none removed), setting only those that changed since `recorded` (the record
    and the attributes put in it last time, as returned): `update` set every one of a
    phone's 15-20 attributes, 4 us, at each status change (issue 18)."""
    kept = info.participant_attributes
    if recorded is None or recorded[0] is not info:
        kept.update(attributes)
    else:
        last = recorded[1]
        for key, value in attributes.items():
            if last.get(key) != value:
                kept[key] = value
    return info, dict(attributes)


@dataclass(frozen=True, kw_only=True)
class CallServices:
    """What the runners of both directions work with."""

    config: SipConfig  # trunks and dispatch rules
    rooms: RoomsRuntime
    call_log: CallLog
    media: MediaService
    max_calls: int  # the one limit, over every call of both directions
    calls_in_progress: Callable[[], int] | None = None  # (alone: a runner counts its own)
    session_min_se: int = RFC_MIN_SE
    room_limits: RoomLimits = field(default_factory=RoomLimits)  # callers, joins per second
    # Told of each call's media leg as the call joins its room (the SIP trace's RTP capture).
    on_media: Callable[[proto.SIPCallInfo, CallMedia], None] | None = None
    # Whether a new call is refused for load now (the CPU, the loop's lag; counted by reason).
    overloaded: Callable[[], bool] = lambda: False
    # An INVITE for a room (the call, room, trunk id, how to go on here): True when it is
    # decided elsewhere (later, or proxied to the room's node; server/cluster/sip_proxy.py).
    route_call: Callable[[IncomingCall, str, str, Callable[[], None]], bool] | None = None


@dataclass(init=False, eq=False, kw_only=True)
class InboundCallState(LiveCall):
    """One inbound call. Its machine starts when it rings in its room or asks for a PIN."""

    inbound: InboundCall
    pin: str | None = None  # digits entered so far while a PIN is asked for
    trunk: proto.SIPInboundTrunkInfo | None = None
    rule: proto.SIPDispatchRuleInfo | None = None
    answer_sdp: bytes = b""

    # Its own `__init__`, compiled (`LiveCall`'s note): the call's, its INVITE's and record.
    def __init__(
        self,
        *,
        call: SipCall,
        info: proto.SIPCallInfo,
        inbound: InboundCall,
        pin: str | None = None,
        trunk: proto.SIPInboundTrunkInfo | None = None,
        rule: proto.SIPDispatchRuleInfo | None = None,
        answer_sdp: bytes = b"",
    ) -> None:
        super().__init__(call=call, info=info)
        self.inbound = inbound
        self.pin = pin
        self.trunk = trunk
        self.rule = rule
        self.answer_sdp = answer_sdp

    @property
    def incoming(self) -> IncomingCall:
        """`call`, the INVITE we answer or reject. (A property, not a narrower `call`: a
        compiled class cannot narrow the type of an attribute it inherits.)"""
        assert isinstance(self.call, IncomingCall)
        return self.call
