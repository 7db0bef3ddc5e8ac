"""A signalling session's messages to its client, in order, over its WebSocket.

Messages that queued up together (the events of one room change, a burst of participant
updates while calls come and go) are written with the connection corked (Linux `TCP_CORK`):
each is still its own WebSocket frame, byte for byte as written one at a time, but the kernel
sends them together when the cork is pulled instead of running its TCP transmit path once per
frame. On loopback that path runs in the writer's own system call, the receiver's side included:
one participant update written alone cost the server 40-50 us there (issue 18: 15% of the
event loop's CPU at 200 inbound calls/s into a shared room with one subscriber). A message
alone is written without the cork (no two extra system calls).

Better still, when the connection keeps up (nothing of ours waits in its transport) and the
WebSocket is not compressed, the batch's frames are made here, byte for byte as aiohttp makes
them (`frame`), and handed to the transport together (`writelines`: one `writev`), with no cork
needed: one system call for the batch instead of one per frame and two for the cork. A
message alone goes the same way (one `write`, without aiohttp's writer in between). A batch
finding bytes still waiting (a slow reader) goes through aiohttp's writer, one frame at a time
with its flow control, as before.

A join's first messages leave with the handshake's response, in the same write: the signal
server's WebSocket (`HeldHandshakeWebSocket`) keeps its `101 Switching Protocols` until the
writer writes its first batch (the join response), which goes after it in one `write`. (Before,
the connection was corked around the two: two more system calls a join, each through a socket
object made for it, 3-6% of a room's signalling; issue 18.)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Iterator
from typing import Any, cast

from aiohttp import WSCloseCode, web
from aiohttp.abc import AbstractStreamWriter
from livekit.protocol import rtc

from sipbridge.server.rtc.session import Encoded, Outgoing

MAX_BATCH = 64  # messages written under one cork, so that a flood cannot hold them back long
_TCP = (socket.AF_INET, socket.AF_INET6)
_CORK = getattr(socket, "TCP_CORK", None)  # Linux only: elsewhere, written one at a time
_BINARY = 0x82  # FIN and the binary opcode, in a frame's first byte (RFC 6455 s5.2)
_LEN1, _LEN2, _LEN3 = (struct.Struct(f).pack for f in ("!BB", "!BBH", "!BBQ"))


def frame(data: bytes) -> bytes:
    """`data` as one unmasked, uncompressed binary WebSocket frame (a server's), byte for byte
    as aiohttp's `WebSocketWriter` writes it."""
    n = len(data)
    if n < 126:
        return _LEN1(_BINARY, n) + data
    if n < 65536:
        return _LEN2(_BINARY, 126, n) + data
    return _LEN3(_BINARY, 127, n) + data


def _gathering(
    ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None
) -> asyncio.WriteTransport | None:
    """`transport` when a batch may go to it as frames of our own, together: an uncompressed
    WebSocket still open, and nothing of ours waiting in its transport (otherwise aiohttp's
    writer, with its flow control). (uvloop's transports are not `asyncio.WriteTransport`
    instances: their methods are what is checked.)"""
    if transport is None or ws.closed or ws.compress or transport.is_closing():
        return None
    writer = cast(asyncio.WriteTransport, transport)
    if not callable(getattr(writer, "writelines", None)):
        return None
    return writer if writer.get_write_buffer_size() == 0 else None


def cork(transport: asyncio.BaseTransport | web.WebSocketResponse | None) -> socket.socket | None:
    """Hold back partial TCP segments of the connection (`transport`'s, or a WebSocket's) until
    `uncork`: its socket (to give to `uncork`), or None when it is not TCP, the platform has no
    TCP_CORK, or the connection is gone. (Linux sends what is held after 200 ms at most even
    without `uncork`.)"""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if _CORK is None or sock is None or getattr(sock, "family", None) not in _TCP:
        return None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
    except OSError:  # gone meanwhile: nothing to hold back
        return None
    return cast(socket.socket, sock)


def uncork(sock: socket.socket) -> None:
    """What `cork` held back goes now."""
    if _CORK is None:  # (`cork` gave no socket then)
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)


@contextlib.contextmanager
def corked(ws: web.WebSocketResponse) -> Iterator[None]:
    """Hold back partial TCP segments of `ws` until the block ends (a no-op when the connection
    is not TCP, or the platform has no TCP_CORK)."""
    sock = cork(ws)
    try:
        yield
    finally:
        if sock is not None:
            uncork(sock)


class HeldHandshakeWebSocket(web.WebSocketResponse):
    """A server WebSocket whose handshake response (`101 Switching Protocols`) waits for the
    first frame written, and goes with it in one write (`write_messages`).

    aiohttp keeps a response's head until its first body write when the response class asks
    for it (`_send_headers_immediately`, as its own `Response` does), and then writes the two
    together (`StreamWriter.write`). Its WebSocket writer writes frames to the transport itself,
    past the head kept: so the head is sent (`send_handshake`, public `send_headers`) before
    any frame that does not come through `write_after_handshake`, and by `close`. A client
    sends nothing before it has the 101 (RFC 6455 s4.1), so nothing aiohttp answers on its own
    (a pong) can come first. With an aiohttp that writes heads at once, the head is out after
    `prepare` and all of this writes frames as usual."""

    _send_headers_immediately = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._held: AbstractStreamWriter | None = None  # the head's writer, while it is held

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter:
        writer = await super().prepare(request)
        self._held = writer
        return writer

    @property
    def handshake_held(self) -> bool:
        return self._held is not None

    async def write_after_handshake(self, data: bytes) -> None:
        """`data` (whole frames) after the head, in one write (`data` alone when the head is
        out already)."""
        writer, self._held = self._held, None
        if writer is None:
            raise RuntimeError("the handshake is not held")
        await writer.write(data)

    def send_handshake(self) -> None:
        """The head now, if it is still held."""
        writer, self._held = self._held, None
        if writer is not None:
            with contextlib.suppress(ConnectionError):  # gone: nothing to send it on
                writer.send_headers()

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        self.send_handshake()
        return await super().close(code=code, message=message, drain=drain)


async def write_messages(
    ws: web.WebSocketResponse,
    outbox: asyncio.Queue[Outgoing | None],
    transport: asyncio.BaseTransport | None = None,
) -> None:
    """Write what `outbox` gives until None, a leave message (then the socket is closed) or the
    socket closing; what queued up together is written in one go to `transport` (the
    WebSocket's: `request.transport`) when it keeps up, else corked. A `HeldHandshakeWebSocket`
    whose head is still held gets it in the first write, before the first batch."""
    message = await outbox.get()
    while message is not None:
        batch: list[Outgoing | None] = [message]
        while not outbox.empty() and len(batch) < MAX_BATCH:
            batch.append(outbox.get_nowait())
        gathering = _gathering(ws, transport)
        held = isinstance(ws, HeldHandshakeWebSocket) and ws.handshake_held
        if gathering is not None and held:
            more, leave = await _write_after_handshake(cast(HeldHandshakeWebSocket, ws), batch)
        elif gathering is not None:
            more, leave = _write_gathered(gathering, batch)
        else:
            if held:  # (aiohttp's writer writes frames to the transport, past a held head)
                cast(HeldHandshakeWebSocket, ws).send_handshake()
            more, leave = await _write_through_aiohttp(ws, batch)
        if leave:
            await ws.close()
            return
        if not more:
            return
        message = await outbox.get()


def _frames(batch: list[Outgoing | None]) -> tuple[list[bytes], bool, bool]:
    """The batch's frames up to its end (None) or a leave; (frames, more to come, a leave)."""
    frames: list[bytes] = []
    for item in batch:
        if item is None:
            return frames, False, False
        if isinstance(item, Encoded):
            data, sent = item.data, item.message
        else:
            data, sent = item.SerializeToString(), item
        frames.append(frame(data))
        if _is_leave(sent):
            return frames, False, True
    return frames, True, False


async def _write_after_handshake(
    ws: HeldHandshakeWebSocket, batch: list[Outgoing | None]
) -> tuple[bool, bool]:
    """The batch's frames after the held handshake response, in one write."""
    frames, more, leave = _frames(batch)
    try:
        await ws.write_after_handshake(b"".join(frames))
    except (ConnectionError, RuntimeError):
        return False, False
    return more, leave


def _write_gathered(
    transport: asyncio.WriteTransport, batch: list[Outgoing | None]
) -> tuple[bool, bool]:
    """The batch's frames up to its end (None) or a leave, in one write (`writelines`: a single
    frame costs no more, and less than aiohttp's writer); (more to come, a leave written)."""
    frames, more, leave = _frames(batch)
    try:
        if len(frames) == 1:
            transport.write(frames[0])
        elif frames:
            transport.writelines(frames)
    except (ConnectionError, RuntimeError):
        return False, False
    return more, leave


async def _write_through_aiohttp(
    ws: web.WebSocketResponse, batch: list[Outgoing | None]
) -> tuple[bool, bool]:
    """The batch one frame at a time through aiohttp's writer (its flow control), corked when
    more than one; (more to come, a leave written)."""
    with corked(ws) if len(batch) > 1 else contextlib.nullcontext():
        for item in batch:
            if item is None or ws.closed:
                return False, False
            if isinstance(item, Encoded):
                data, sent = item.data, item.message
            else:
                data, sent = item.SerializeToString(), item
            try:
                await ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                return False, False
            if _is_leave(sent):
                return False, True
    return True, False


def _is_leave(message: rtc.SignalResponse) -> bool:
    return bool(message.WhichOneof("message") == "leave")
