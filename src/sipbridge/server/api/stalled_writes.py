"""HTTP connections whose client takes nothing of what we send are cut off.

aiohttp has no write timeout: a client that asks and then stops reading (a large reply, or
thousands of pipelined `GET /healthz` sent in one go and never read) left its handler blocked in
a write and its connection, task and some megabytes of socket buffers held for ever, with no
token needed; `--http-idle-timeout` covers only connections with nothing to do. Every
`idle_s` seconds each connection with bytes waiting to leave is looked at: if its client has
acknowledged no byte since the last look (Linux's TCP_INFO `tcpi_bytes_acked`; elsewhere, if
what waits has not shrunk), it is aborted (`sipbridge_http_stalled_total`). A slow reader that
takes something each interval keeps its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Protocol, cast

from sipbridge.server.loop_calls import stop_task


class _Connection(Protocol):
    @property
    def transport(self) -> asyncio.BaseTransport | None: ...


# Linux's struct tcp_info (linux/tcp.h): tcpi_bytes_acked (u64) and tcpi_notsent_bytes (u32)
TCP_INFO_BYTES_ACKED = 120
TCP_INFO_NOTSENT = 144
TCP_INFO_SIZE = 148


def tcp_progress(transport: asyncio.BaseTransport) -> tuple[int, int] | None:
    """(bytes the peer has acknowledged, bytes the kernel holds unsent) where the OS says."""
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, TCP_INFO_SIZE)
    except (OSError, AttributeError, TypeError):
        return None
    if len(info) < TCP_INFO_SIZE:
        return None
    acked: int = struct.unpack_from("=Q", info, TCP_INFO_BYTES_ACKED)[0]
    unsent: int = struct.unpack_from("=I", info, TCP_INFO_NOTSENT)[0]
    return acked, unsent


def reset(transport: asyncio.BaseTransport) -> None:
    """Abort with a TCP reset: the kernel drops what it still holds for the peer at once (a
    plain close would keep an orphaned socket and its megabytes queued to a zero window)."""
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError, TypeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cast(asyncio.Transport, transport).abort()


class StalledWrites:
    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.cut = 0  # connections aborted: their client took nothing for a whole interval
        # what each connection with bytes waiting had acknowledged at the last look (or, where
        # the OS does not say, how many bytes waited); connections are not weakly referable
        self._seen: dict[int, tuple[object, int]] = {}
        self._task: asyncio.Task[None] | None = None

    def sweep(self, connections: Iterable[_Connection]) -> int:
        """One look at every connection; how many were cut."""
        cut = 0
        seen: dict[int, tuple[object, int]] = {}
        for connection in connections:
            # (uvloop's transports have the methods but are no asyncio.WriteTransport)
            transport = cast(asyncio.WriteTransport | None, connection.transport)
            if transport is None or transport.is_closing():
                continue
            waiting = transport.get_write_buffer_size()
            tcp = tcp_progress(transport)
            if tcp is not None:
                waiting += tcp[1]
            if not waiting:  # everything sent: nothing held up here
                continue
            mark = tcp[0] if tcp is not None else waiting
            before = self._seen.get(id(connection))
            seen[id(connection)] = (connection, mark)
            if before is None or before[0] is not connection:
                continue
            taken = mark != before[1] if tcp is not None else mark < before[1]
            if not taken:
                reset(transport)
                del seen[id(connection)]
                cut += 1
        self._seen = seen
        self.cut += cut
        return cut

    def start(self, connections: Callable[[], Iterable[_Connection]]) -> None:
        self._task = asyncio.create_task(self._run(connections), name="http stalled writes")

    async def _run(self, connections: Callable[[], Iterable[_Connection]]) -> None:
        while True:
            await asyncio.sleep(self.idle_s)
            self.sweep(connections())

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
