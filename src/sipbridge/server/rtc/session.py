"""One client's signalling session: its WebSocket's outbox, its choices, its peer connection."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from livekit.protocol import rtc

from sipbridge.server.rtc.peer import RtcPeer


@dataclass(eq=False, kw_only=True)
class Session:
    room: str
    identity: str
    ws: web.WebSocketResponse
    outbox: asyncio.Queue[rtc.SignalResponse | None] = field(default_factory=asyncio.Queue)
    participant_sid: str = ""
    # single-PC (`/rtc/v1`): `peer` is the one connection; two-PC (`/rtc`): `peer` is the
    # client's publisher connection and `subscriber` the one we offer
    two_pc: bool = False
    peer: RtcPeer | None = None
    subscriber: RtcPeer | None = None
    # client track id (AddTrackRequest.cid) -> our TR_ sid, until its media arrives (shared
    # with the peer that receives it, which may not exist yet when the track is added)
    published: dict[str, str] = field(default_factory=dict)
    expiry: asyncio.TimerHandle | None = None  # while the WebSocket is gone, awaiting a resume
    auto_subscribe: bool = True  # the client's connection_settings: every track unless told
    choices: dict[str, bool] = field(default_factory=dict)  # track sid -> subscribe, as told
    # who may subscribe to this client's tracks (its SubscriptionPermission); None: everyone
    permission: rtc.SubscriptionPermission | None = None
    refused: dict[str, bool] = field(default_factory=dict)  # track sid -> refused, as told
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def downlink(self) -> RtcPeer | None:
        """The connection the room's audio and data reach the client on."""
        return self.subscriber if self.two_pc else self.peer

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def send(self, message: rtc.SignalResponse) -> None:
        self.outbox.put_nowait(message)

    def close(self) -> None:
        self.outbox.put_nowait(None)


def in_room(sessions: Iterable[Session], room: str) -> list[Session]:
    """The sessions of `room`."""
    return [session for session in sessions if session.room == room]


def leave_message(reason: int) -> rtc.SignalResponse:
    """The `leave` that tells a client it is out of the room, and why."""
    return rtc.SignalResponse(
        leave=rtc.LeaveRequest(reason=reason, action=rtc.LeaveRequest.Action.DISCONNECT)  # type: ignore[arg-type]
    )
