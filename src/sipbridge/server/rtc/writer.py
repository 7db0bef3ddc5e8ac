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

A join's first messages leave with the handshake's response: the signal server corks the
connection (`cork`) before the WebSocket's `101 Switching Protocols` is written, and the writer
pulls the cork once it has written its first batch (the join response), so the two go in one
TCP transmit instead of two.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Iterator
from typing import cast

from aiohttp import web
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


async def write_messages(
    ws: web.WebSocketResponse,
    outbox: asyncio.Queue[Outgoing | None],
    transport: asyncio.BaseTransport | None = None,
    held: socket.socket | None = None,
) -> None:
    """Write what `outbox` gives until None, a leave message (then the socket is closed) or the
    socket closing; what queued up together is written in one go to `transport` (the
    WebSocket's: `request.transport`) when it keeps up, else corked. `held`: the connection's
    socket, corked by the caller (`cork`) since before the handshake's response; uncorked once
    the first batch is written, so that the response and the first messages (a join's) leave
    in one TCP transmit."""
    try:
        message = await outbox.get()
        while message is not None:
            batch: list[Outgoing | None] = [message]
            while not outbox.empty() and len(batch) < MAX_BATCH:
                batch.append(outbox.get_nowait())
            gathering = _gathering(ws, transport)
            if gathering is not None:
                more, leave = _write_gathered(gathering, batch)
            else:
                more, leave = await _write_through_aiohttp(ws, batch)
            if held is not None:
                uncork(held)
                held = None
            if leave:  # (uncorked first: the close frame must not wait)
                await ws.close()
                return
            if not more:
                return
            message = await outbox.get()
    finally:
        if held is not None:
            uncork(held)


def _write_gathered(
    transport: asyncio.WriteTransport, batch: list[Outgoing | None]
) -> tuple[bool, bool]:
    """The batch's frames up to its end (None) or a leave, in one write (`writelines`: a single
    frame costs no more, and less than aiohttp's writer); (more to come, a leave written)."""
    frames: list[bytes] = []
    more = True
    leave = False
    for item in batch:
        if item is None:
            more = False
            break
        if isinstance(item, Encoded):
            data, sent = item.data, item.message
        else:
            data, sent = item.SerializeToString(), item
        frames.append(frame(data))
        if _is_leave(sent):
            leave = True
            break
    try:
        if len(frames) == 1:
            transport.write(frames[0])
        elif frames:
            transport.writelines(frames)
    except (ConnectionError, RuntimeError):
        return False, False
    return more and not leave, leave


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
