"""What a call is while it runs (`LiveCall`) and what the runners of both directions work with
(`CallServices`): the data of `CallRunner` (server/calls/runner.py), which re-exports both."""

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
from sipbridge.telephony.media import MediaPolicy


@dataclass(eq=False, kw_only=True)
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
