"""A signalling-only client of `/rtc/v1`, speaking the official protobuf messages.

It joins a room the way the official SDK does (token in the Authorization header, gzipped
WrappedJoinRequest in the query) and collects what the server sends; it opens no peer connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
from typing import Any

import aiohttp
from livekit import api
from livekit.protocol import models, rtc

from tests.helpers import API_KEY, API_SECRET


def join_token(room: str, identity: str, **grants: Any) -> str:
    tok = api.AccessToken(API_KEY, API_SECRET).with_identity(identity)
    name = grants.pop("name", "")
    if name:
        tok.with_name(name)
    attributes = grants.pop("attributes", None)
    if attributes:
        tok.with_attributes(attributes)
    kind = grants.pop("kind", None)
    if kind:
        tok.with_kind(kind)
    tok.with_grants(api.VideoGrants(room_join=True, room=room, **grants))
    return tok.to_jwt()


def join_query(join: rtc.JoinRequest | None = None) -> str:
    wrapped = rtc.WrappedJoinRequest(
        compression=rtc.WrappedJoinRequest.Compression.GZIP,
        join_request=gzip.compress((join or rtc.JoinRequest()).SerializeToString()),
    )
    return base64.urlsafe_b64encode(wrapped.SerializeToString()).decode().rstrip("=")


class SignalClient:
    def __init__(self, url: str, room: str, identity: str, **grants: Any) -> None:
        self.url = url.replace("http://", "ws://")
        self.token = join_token(room, identity, **grants)
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.received: asyncio.Queue[rtc.SignalResponse] = asyncio.Queue()
        self.log: list[rtc.SignalResponse] = []  # everything received, in order
        self.join: rtc.JoinResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(
        self, timeout: float = 5.0, join: rtc.JoinRequest | None = None
    ) -> rtc.JoinResponse:
        first = await self.open(join, timeout)
        assert first.WhichOneof("message") == "join", first
        self.join = first.join
        return first.join

    async def resume(self, timeout: float = 5.0) -> rtc.SignalResponse:
        """Reconnect after `drop()` as the SDK does: reconnect=true and the participant sid."""
        assert self.join is not None
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        if self.session is not None:
            await self.session.close()
        join = rtc.JoinRequest(reconnect=True, participant_sid=self.join.participant.sid)
        return await self.open(join, timeout)

    async def open(self, join: rtc.JoinRequest | None, timeout: float) -> rtc.SignalResponse:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(
            f"{self.url}/rtc/v1?join_request={join_query(join)}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientWSTimeout(ws_close=2),
        )
        self._reader = asyncio.create_task(self._read())
        return await self.next(timeout)

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                message = rtc.SignalResponse.FromString(msg.data)
                self.log.append(message)
                await self.received.put(message)

    async def next(self, timeout: float = 5.0) -> rtc.SignalResponse:
        return await asyncio.wait_for(self.received.get(), timeout)

    async def wait_for(self, kind: str, timeout: float = 5.0) -> rtc.SignalResponse:
        """The next message of a kind, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.received.get()
                if msg.WhichOneof("message") == kind:
                    return msg

    async def send(self, request: rtc.SignalRequest) -> None:
        assert self.ws is not None
        await self.ws.send_bytes(request.SerializeToString())

    async def publish_audio(self, cid: str = "mic") -> models.TrackInfo:
        await self.send(
            rtc.SignalRequest(
                add_track=rtc.AddTrackRequest(
                    cid=cid,
                    name="microphone",
                    type=models.TrackType.AUDIO,
                    source=models.TrackSource.MICROPHONE,
                )
            )
        )
        published = await self.wait_for("track_published")
        return published.track_published.track

    @property
    def closed(self) -> bool:
        return self.ws is None or self.ws.closed

    async def close(self) -> None:
        """Leave as the official SDK does: a `leave` request, then the WebSocket closed."""
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send(rtc.SignalRequest(leave=rtc.LeaveRequest()))
        await self.drop()

    async def drop(self) -> None:
        """The WebSocket closed without a `leave`: a dropped connection the client may resume."""
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        if self.session is not None:
            await self.session.close()

    async def __aenter__(self) -> SignalClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
