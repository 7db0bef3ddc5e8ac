"""A session's messages over a real WebSocket on loopback (server/rtc/writer.py): what queued up
together is written corked and arrives as the same frames in the same order as one at a time;
a leave message is the last, and the socket closes after it (issue 18)."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web
from livekit.protocol import rtc

from sipbridge.server.rtc.session import Encoded, Outgoing
from sipbridge.server.rtc.writer import corked, write_messages

pytestmark = pytest.mark.timeout(20)


async def next_turn() -> None:
    loop = asyncio.get_running_loop()
    turn = loop.create_future()
    loop.call_soon(turn.set_result, None)
    await turn


def pong(n: int) -> rtc.SignalResponse:
    return rtc.SignalResponse(pong=n)


async def frames_from(messages: list[Outgoing | None], *, queued_first: bool) -> list[bytes]:
    """Serve one WebSocket that writes `messages` (all queued before the writer starts, or one
    a turn); what a real client receives until the socket closes."""
    corks: list[int] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        outbox: asyncio.Queue[Outgoing | None] = asyncio.Queue()
        sock = ws.get_extra_info("socket")
        assert sock is not None and sock.family == socket.AF_INET
        if queued_first:
            for message in messages:
                outbox.put_nowait(message)
            with corked(ws):  # (the cork is on inside, off after)
                corks.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))
            corks.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))
            await write_messages(ws, outbox)
        else:
            writer = asyncio.create_task(write_messages(ws, outbox))
            for message in messages:
                outbox.put_nowait(message)
                await next_turn()  # the writer takes it alone
            await writer
        if not ws.closed:
            await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    got: list[bytes] = []
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws,
        ):
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    got.append(msg.data)
    finally:
        await runner.cleanup()
    if queued_first:
        assert corks[0] != 0 and corks[1] == 0
    return got


@pytest.mark.parametrize("queued_first", [True, False])
async def test_messages_arrive_whole_and_in_order(queued_first: bool) -> None:
    messages: list[Outgoing | None] = [pong(n) for n in range(150)]  # more than one batch
    messages[7] = Encoded.of(pong(7))  # encoded once for many sessions: the same bytes
    got = await frames_from([*messages, None], queued_first=queued_first)
    assert [rtc.SignalResponse.FromString(data).pong for data in got] == list(range(150))


async def test_a_leave_is_the_last_message_and_closes_the_socket() -> None:
    leave = rtc.SignalResponse(leave=rtc.LeaveRequest(can_reconnect=False))
    got = await frames_from([pong(1), pong(2), leave, pong(3), None], queued_first=True)
    assert [rtc.SignalResponse.FromString(data).WhichOneof("message") for data in got] == [
        "pong",
        "pong",
        "leave",
    ]
