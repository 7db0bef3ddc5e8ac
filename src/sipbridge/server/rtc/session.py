"""One client's signalling session: its WebSocket's outbox, its choices, its peer connection."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from livekit.protocol import rtc

from sipbridge.server.rtc.peer import RtcPeer


class Encoded:
    """A message serialised once for every session of a room it goes to (a participant
    update is the same bytes for each of them). (Not a frozen dataclass: its generated
    __init__ sets each field through `object.__setattr__`, 1.0-1.7 us where this is 0.3-0.6,
    for every room change; issue 18.)"""

    __slots__ = ("data", "message")

    def __init__(self, message: rtc.SignalResponse, data: bytes) -> None:
        self.message = message
        self.data = data

    @classmethod
    def of(cls, message: rtc.SignalResponse) -> Encoded:
        return cls(message, message.SerializeToString())


Outgoing = rtc.SignalResponse | Encoded


# Writes its own `__init__` (`init=False`): mypyc compiles it, where the one the dataclasses
# module generates stays interpreted, one a join (issue 18: a join a call with a room each).
@dataclass(init=False, eq=False, kw_only=True)
class Session:
    room: str
    identity: str
    ws: web.WebSocketResponse
    outbox: asyncio.Queue[Outgoing | None] = field(default_factory=asyncio.Queue)
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

    def __init__(
        self,
        *,
        room: str,
        identity: str,
        ws: web.WebSocketResponse,
        outbox: asyncio.Queue[Outgoing | None] | None = None,
        participant_sid: str = "",
        two_pc: bool = False,
        peer: RtcPeer | None = None,
        subscriber: RtcPeer | None = None,
        published: dict[str, str] | None = None,
        expiry: asyncio.TimerHandle | None = None,
        auto_subscribe: bool = True,
        choices: dict[str, bool] | None = None,
        permission: rtc.SubscriptionPermission | None = None,
        refused: dict[str, bool] | None = None,
        tasks: set[asyncio.Task[None]] | None = None,
    ) -> None:
        self.room = room
        self.identity = identity
        self.ws = ws
        self.outbox = asyncio.Queue() if outbox is None else outbox
        self.participant_sid = participant_sid
        self.two_pc = two_pc
        self.peer = peer
        self.subscriber = subscriber
        self.published = {} if published is None else published
        self.expiry = expiry
        self.auto_subscribe = auto_subscribe
        self.choices = {} if choices is None else choices
        self.permission = permission
        self.refused = {} if refused is None else refused
        self.tasks = set() if tasks is None else tasks

    @property
    def downlink(self) -> RtcPeer | None:
        """The connection the room's audio and data reach the client on."""
        return self.subscriber if self.two_pc else self.peer

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def send(self, message: Outgoing) -> None:
        self.outbox.put_nowait(message)

    def close(self) -> None:
        self.outbox.put_nowait(None)


class SessionTable(dict[tuple[str, str], Session]):
    """The sessions by (room, identity), indexed by room as well: an update to one room's
    clients never scans every other room's (with a room per call, that grew with the square
    of the calls up). Entries come and go by `[key] = `, `del` and `pop` only."""

    def __init__(self) -> None:
        super().__init__()
        self.rooms: dict[str, dict[str, Session]] = {}

    def __setitem__(self, key: tuple[str, str], session: Session) -> None:
        super().__setitem__(key, session)
        self.rooms.setdefault(key[0], {})[key[1]] = session

    def __delitem__(self, key: tuple[str, str]) -> None:
        super().__delitem__(key)
        self._unindex(key)

    def pop(self, key: tuple[str, str], *default: Any) -> Any:
        if key in self:
            self._unindex(key)
        return super().pop(key, *default)

    def _unindex(self, key: tuple[str, str]) -> None:
        room = self.rooms.get(key[0])
        if room is not None:
            room.pop(key[1], None)
            if not room:
                del self.rooms[key[0]]


def in_room(sessions: Mapping[tuple[str, str], Session], room: str) -> list[Session]:
    """The sessions of `room`."""
    if isinstance(sessions, SessionTable):
        return list(sessions.rooms.get(room, {}).values())
    return [session for session in sessions.values() if session.room == room]


def leave_message(reason: int) -> rtc.SignalResponse:
    """The `leave` that tells a client it is out of the room, and why."""
    return rtc.SignalResponse(
        leave=rtc.LeaveRequest(reason=reason, action=rtc.LeaveRequest.Action.DISCONNECT)  # type: ignore[arg-type]
    )
