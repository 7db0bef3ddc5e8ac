"""A session's messages over a real WebSocket on loopback (server/rtc/writer.py): what queued up
together is written corked and arrives as the same frames in the same order as one at a time;
a leave message is the last, and the socket closes after it; the signal server's handshake
response leaves with its first batch (issue 18)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from typing import cast

import aiohttp
import pytest
import uvloop
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import WebSocketWriter
from livekit.protocol import models, rtc

from sipbridge.server.rtc.session import Encoded, Outgoing
from sipbridge.server.rtc.writer import HeldHandshakeWebSocket, corked, frame, write_messages

pytestmark = pytest.mark.timeout(20)


async def next_turn() -> None:
    loop = asyncio.get_running_loop()
    turn = loop.create_future()
    loop.call_soon(turn.set_result, None)
    await turn


def room(metadata_size: int) -> models.Room:
    return models.Room(name="r", metadata="m" * metadata_size)


def pong(n: int) -> rtc.SignalResponse:
    return rtc.SignalResponse(pong=n)


class CountingTransport:
    """The WebSocket's real transport, its writes counted (what `write_messages` hands it);
    not an `asyncio.WriteTransport`, as uvloop's are not."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.writes: list[int] = []  # frames per call

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(1)
        self.inner.write(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.inner.get_extra_info(name, default)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        chunks = list(list_of_data)
        self.writes.append(len(chunks))
        self.inner.writelines(chunks)

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()


async def frames_from(
    messages: list[Outgoing | None],
    *,
    queued_first: bool,
    gathered: list[int] | None = None,
    alone: list[int] | None = None,
    held: list[bytes] | None = None,
) -> list[bytes]:
    """Serve one WebSocket that writes `messages` (all queued before the writer starts, or one
    a turn); what a real client receives until the socket closes. With `gathered`, the writer
    is given the connection's transport (as the signal server gives it), and the number of
    frames in each of its own writes go there (those of more than one), and to `alone` the
    number of its writes of one frame. With `held`, the WebSocket is the signal server's
    (`HeldHandshakeWebSocket`, its handshake response held for the first write) and whatever
    the server's connection is given to send goes there, a bytes string each time (its
    `write` or `writelines`: one system call each)."""
    corks: list[int] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse() if held is None else HeldHandshakeWebSocket()
        if held is not None:
            record_writes(request, held)
        await ws.prepare(request)
        outbox: asyncio.Queue[Outgoing | None] = asyncio.Queue()
        sock = ws.get_extra_info("socket")
        assert sock is not None and sock.family == socket.AF_INET
        transport: asyncio.BaseTransport | None = None
        if gathered is not None:
            assert request.transport is not None
            counting = CountingTransport(request.transport)
            transport = cast(asyncio.BaseTransport, counting)
        if held is not None:
            writer = asyncio.create_task(write_messages(ws, outbox, transport))
            for message in messages:
                outbox.put_nowait(message)
            await writer
        elif queued_first:
            for message in messages:
                outbox.put_nowait(message)
            with corked(ws):  # (the cork is on inside, off after)
                corks.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))
            corks.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))
            await write_messages(ws, outbox, transport)
        else:
            writer = asyncio.create_task(write_messages(ws, outbox, transport))
            for message in messages:
                outbox.put_nowait(message)
                await next_turn()  # the writer takes it alone
            await writer
        if not ws.closed:
            await ws.close()
        if gathered is not None:
            gathered.extend(n for n in counting.writes if n > 1)
        if alone is not None:
            alone.append(sum(1 for n in counting.writes if n == 1))
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
    if queued_first and held is None:
        assert corks[0] != 0 and corks[1] == 0
    return got


def record_writes(request: web.Request, writes: list[bytes]) -> None:
    """What the request's connection is given to send, one bytes string a call (asyncio's own
    transport, a Python object whose methods can be wrapped)."""
    transport = request.transport
    assert transport is not None
    write, writelines = transport.write, transport.writelines

    def recorded_write(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        write(data)

    def recorded_writelines(chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        chunks = list(chunks)
        writes.append(b"".join(chunks))
        writelines(chunks)

    transport.write = recorded_write  # type: ignore[method-assign]
    transport.writelines = recorded_writelines  # type: ignore[method-assign]


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


@pytest.mark.parametrize("queued_first", [True, False])
async def test_given_the_transport_a_batch_goes_in_one_write_and_arrives_whole(
    queued_first: bool,
) -> None:
    """With the transport (as the signal server runs it), what queued up together goes in one
    `writelines` of our own frames; a client reads the same messages in the same order."""
    messages: list[Outgoing | None] = [pong(n) for n in range(150)]
    messages[7] = Encoded.of(pong(7))
    for n, size in ((40, 300), (41, 70_000)):  # frames with 16- and 64-bit lengths
        messages[n] = rtc.SignalResponse(room_update=rtc.RoomUpdate(room=room(size)))
    gathered: list[int] = []
    got = await frames_from([*messages, None], queued_first=queued_first, gathered=gathered)
    decoded = [rtc.SignalResponse.FromString(data) for data in got]
    assert decoded == [m.message if isinstance(m, Encoded) else m for m in messages]
    if queued_first:  # 150 at once: batches of MAX_BATCH, each in one write
        assert gathered and sum(gathered) >= 100
    else:
        assert gathered == []  # one a turn: each alone, a write of one frame


async def test_given_the_transport_a_message_alone_is_our_frame_in_one_write() -> None:
    """A message written alone (one a turn) goes to the transport as our own frame too, not
    through aiohttp's writer: one write each, the same messages arriving."""
    messages: list[Outgoing | None] = [pong(n) for n in range(20)]
    alone: list[int] = []
    got = await frames_from([*messages, None], queued_first=False, gathered=[], alone=alone)
    assert [rtc.SignalResponse.FromString(data).pong for data in got] == list(range(20))
    assert alone == [20]


async def test_the_handshake_response_and_the_first_batch_go_in_one_write() -> None:
    """The signal server's WebSocket holds its `101` until the writer writes its first batch
    (a join's response): the connection is given the two in one write, the messages after in
    the next, and every message arrives."""
    messages: list[Outgoing | None] = [pong(n) for n in range(5)]
    writes: list[bytes] = []
    got = await frames_from([*messages, None], queued_first=True, gathered=[], held=writes)
    assert [rtc.SignalResponse.FromString(data).pong for data in got] == list(range(5))
    assert writes[0].startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    head_end = writes[0].index(b"\r\n\r\n") + 4
    first_batch = b"".join(frame(pong(n).SerializeToString()) for n in range(5))
    assert writes[0][head_end:] == first_batch


async def test_without_the_transport_the_handshake_response_goes_before_aiohttps_frames() -> None:
    """Frames through aiohttp's writer (a slow reader, a compressed WebSocket) go to the
    connection past the head held: it is sent first, alone, and every message arrives."""
    messages: list[Outgoing | None] = [pong(n) for n in range(3)]
    writes: list[bytes] = []
    got = await frames_from([*messages, None], queued_first=True, held=writes)
    assert [rtc.SignalResponse.FromString(data).pong for data in got] == list(range(3))
    assert writes[0].startswith(b"HTTP/1.1 101 ") and writes[0].endswith(b"\r\n\r\n")
    assert writes[1] == frame(pong(0).SerializeToString())


async def test_a_held_handshake_closed_before_any_message_is_sent_then_the_close() -> None:
    """A WebSocket closed before the writer wrote anything: its close sends the held `101`
    first, so the client is told of the close as a WebSocket, not sent a stray frame."""
    writes: list[bytes] = []
    got = await frames_from([None], queued_first=True, gathered=[], held=writes)
    assert got == []
    assert writes[0].startswith(b"HTTP/1.1 101 ") and writes[0].endswith(b"\r\n\r\n")
    assert writes[1][:1] == b"\x88"  # the close frame (RFC 6455 s5.5.1)


async def test_given_the_transport_a_leave_is_still_the_last_and_closes() -> None:
    leave = rtc.SignalResponse(leave=rtc.LeaveRequest(can_reconnect=False))
    gathered: list[int] = []
    got = await frames_from(
        [pong(1), pong(2), leave, pong(3), None], queued_first=True, gathered=gathered
    )
    assert [rtc.SignalResponse.FromString(data).WhichOneof("message") for data in got] == [
        "pong",
        "pong",
        "leave",
    ]
    assert gathered == [3]


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
async def test_our_frames_are_aiohttps_byte_for_byte(size: int) -> None:
    """A server's binary frame as `frame` makes it and as aiohttp's own writer writes it."""
    transport = Recording()
    protocol = BaseProtocol(asyncio.get_running_loop())
    writer = WebSocketWriter(protocol, transport, use_mask=False, compress=0)
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    await writer.send_frame(payload, aiohttp.WSMsgType.BINARY)
    assert frame(payload) == bytes(transport.data)


def test_under_uvloop_a_batch_goes_in_one_write_and_arrives_whole() -> None:
    """The server's loop: uvloop's transports (not `asyncio.WriteTransport` instances) are
    written to together too."""
    messages: list[Outgoing | None] = [pong(n) for n in range(100)]
    gathered: list[int] = []
    got = uvloop.run(frames_from([*messages, None], queued_first=True, gathered=gathered))
    assert [rtc.SignalResponse.FromString(data).pong for data in got] == list(range(100))
    assert gathered and sum(gathered) >= 90
