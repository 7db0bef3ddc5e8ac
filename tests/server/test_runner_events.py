"""Which room events the call runners hear (`CallRunner.room_events`): those they act on, not
every event of every room (issue 18). Inbound: a phone's track subscribed to and another SIP
participant joining answer a ringing call; both: a participant that left ends its call, data
goes to phones as DTMF."""

from __future__ import annotations

import time
from pathlib import Path
from typing import get_args

from sipbridge.rooms import RoomRegistry
from sipbridge.rooms import events as ev
from sipbridge.server.api.webhooks import WebhookNotifier
from sipbridge.server.calls.inbound import InboundCalls
from sipbridge.server.calls.live_call import CallServices
from sipbridge.server.calls.outbound import OutboundCalls
from sipbridge.server.media.service import MediaService
from sipbridge.server.sip.user_agent import SipUserAgent
from sipbridge.server.state.call_log import CallLog
from sipbridge.server.state.rooms_runtime import RoomsRuntime
from sipbridge.server.state.trunk_cache import SipConfig
from sipbridge.store import SQLiteStore


def heard(runtime: RoomsRuntime, listener: object) -> set[type]:
    return {kind for kind in get_args(ev.RoomEvent) if listener in runtime._route(kind)}


def test_each_runner_hears_only_the_room_events_it_acts_on(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "calls.db")
    runtime = RoomsRuntime(RoomRegistry(), WebhookNotifier([], "key", "secret" * 6), time.time)
    media = MediaService("127.0.0.1", (30000, 39999))
    try:
        services = CallServices(
            config=SipConfig(store, time.time),
            rooms=runtime,
            call_log=CallLog(store, time.time),
            media=media,
            max_calls=10,
        )
        inbound = InboundCalls(services)
        outbound = OutboundCalls(services, SipUserAgent("127.0.0.1", 5060))
        assert heard(runtime, inbound.on_room_event) == {
            ev.DataSent,
            ev.ParticipantLeft,
            ev.SubscriptionChanged,
            ev.ParticipantJoined,
        }
        assert heard(runtime, outbound.on_room_event) == {ev.DataSent, ev.ParticipantLeft}
    finally:
        media.close()
