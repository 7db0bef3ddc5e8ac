"""A UDP socket of a test's own for hand-made SIP requests (the cluster tests' raw INVITEs)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(data)


@asynccontextmanager
async def udp_peer() -> AsyncIterator[tuple[asyncio.DatagramTransport, asyncio.Queue[bytes], int]]:
    """(transport, what it receives, its port): a socket on 127.0.0.1, closed after the block."""
    loop = asyncio.get_running_loop()
    transport, datagrams = await loop.create_datagram_endpoint(
        _Datagrams, local_addr=("127.0.0.1", 0)
    )
    try:
        yield transport, datagrams.queue, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()
