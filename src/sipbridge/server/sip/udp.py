"""The SIP UDP sockets: the event loop's datagram endpoint (where udp_thread.py's reader thread,
the default, is not built, or with `SIPBRIDGE_SIP_UDP=endpoint`), or, asked for with
`SIPBRIDGE_SIP_UDP=batched` where `sipbridge/_csipudp.c` is built, read and written in batches.

Batched, one readiness of the socket is read with one `recvmmsg` (up to 32 datagrams), each
datagram handed to `SipService.receive` as the event loop's datagram endpoint would; what the
handling of each produced (180 and 200 for an INVITE answered at once) is sent with one
`sendmmsg` as soon as it is done (`SipService.on_flushed`), not at the end of the batch: a
response never waits for the datagrams read after its request. Sends outside a read (timers,
calls answered later) go out the same way. Everything runs on the loop's thread
(`loop.add_reader` on the socket's descriptor).

Why not the default: measured on a quiet machine (bench/sip.py, our bare UAS, compiled core)
the batched path cost 0.135-0.147 ms of CPU a call against the endpoint's 0.103 under uvloop,
which reads its sockets in C already; it stays, tested, for the work of batching a whole read's
sends. Hostile input either way: a datagram longer than the read buffer is dropped and counted
(`udp_oversized`), a failed read or send is counted (`udp_error`), never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, cast

from sipbridge.server.loop_calls import remove_reader
from sipbridge.sip.endpoint import Peer

if TYPE_CHECKING:
    from sipbridge.server.sip.transport import SipService

try:
    from sipbridge import _csipudp  # type: ignore[attr-defined]
except ImportError:  # not built: the event loop's datagram endpoint
    _csipudp = None

log = logging.getLogger(__name__)

UDP_BUFFER_BYTES = 4 * 1024 * 1024
UDP_READ_SIZE = 65535  # never asyncio's 256 KiB default per datagram (DESIGN.md)
ENV = "SIPBRIDGE_SIP_UDP"  # "batched": recvmmsg / sendmmsg where built; else the endpoint
MAX_UDP_PEERS = 4096  # source addresses whose Peer is kept (bounded: cleared when full)


def built() -> bool:
    """Whether the batched I/O extension is built here."""
    return _csipudp is not None


def available() -> bool:
    """Whether the SIP UDP socket is read and written in batches here (asked for, and built)."""
    return built() and os.environ.get(ENV, "") == "batched"


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, service: SipService) -> None:
        self.service = service
        self.transport: asyncio.DatagramTransport | None = None
        # The Peer of each source address seen lately (made once, not per datagram; bounded:
        # cleared when full, so that a flood of sources cannot grow it).
        self._peers: dict[tuple[str, int], Peer] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's and asyncio's datagram transports do not share the DatagramTransport base.
        self.transport = cast(asyncio.DatagramTransport, transport)
        if hasattr(transport, "max_size"):  # the selector loop's per-read allocation
            transport.max_size = UDP_READ_SIZE
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER_BYTES)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        peers = self._peers
        peer = peers.get(addr)
        if peer is None:
            if len(peers) >= MAX_UDP_PEERS:
                peers.clear()
            peer = peers[addr] = Peer("udp", str(addr[0]), int(addr[1]))
        self.service.receive(data, peer)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier sends (port unreachable...): nothing to do per datagram.
        self.service.stats_error("udp_error")


class SocketTransport:
    """What a SIP UDP socket driven here (not by the event loop's endpoint) tells about itself,
    as an asyncio transport would."""

    def __init__(self, service: SipService, sock: socket.socket) -> None:
        self.service = service
        self.sock = sock
        self.fd = sock.fileno()
        self.family = int(sock.family)
        self._peers: dict[tuple[str, int], Peer] = {}
        self._pending: list[tuple[bytes, tuple[str, int]]] = []
        self._closed = False
        sock.setblocking(False)

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        """Queue a datagram: sent when the service's flush that produced it is done."""
        self._pending.append((data, address))

    def _taken(self) -> list[tuple[bytes, tuple[str, int]]]:
        """The datagrams queued since the last flush, taken to be sent (none once closed)."""
        pending = self._pending
        if not pending:
            return pending
        self._pending = []
        return [] if self._closed else pending

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self.sock.getsockname()
        if name == "socket":
            return self.sock
        return default


class BatchedUdp(SocketTransport):
    """A bound non-blocking UDP socket of `service`, read and written in batches."""

    def __init__(self, service: SipService, sock: socket.socket) -> None:
        assert _csipudp is not None
        super().__init__(service, sock)
        self._io: Any = _csipudp
        self.read_size = UDP_READ_SIZE  # longer datagrams are dropped and counted
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER_BYTES)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._readable)
        service.on_flushed.append(self.flush)

    def _readable(self) -> None:
        """One `recvmmsg` a readiness (up to BATCH datagrams, as libuv reads up to 32 a
        readiness): each datagram handled in turn, what its handling produced sent at its end."""
        service = self.service
        datagrams, _read, truncated, error = self._io.recv_batch(self.fd, self.read_size)
        if truncated:
            service.endpoint.stats["udp_oversized"] += truncated
        if error:
            # ICMP errors for earlier sends (port unreachable...): counted, as the datagram
            # endpoint's error_received does.
            service.stats_error("udp_error")
        peers = self._peers
        for data, addr in datagrams:
            peer = peers.get(addr)
            if peer is None:
                if len(peers) >= MAX_UDP_PEERS:
                    peers.clear()
                peer = peers[addr] = Peer("udp", addr[0], addr[1])
            service.receive(data, peer)  # (its flush sends what it produced: `flush`)

    def flush(self) -> None:
        """Send what the service's flush produced, with one `sendmmsg` (`on_flushed`)."""
        pending = self._taken()
        if not pending:
            return
        _sent, failed, error = self._io.send_batch(self.fd, self.family, pending)
        if failed:  # (counted as the datagram endpoint's error_received counts them)
            self.service.endpoint.stats["udp_error"] += failed
            log.debug("SIP UDP: %d datagrams not sent (errno %d)", failed, error)

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        remove_reader(self._loop, self.fd)  # (uvloop's result differs: loop_calls.py)
        if self.flush in self.service.on_flushed:
            self.service.on_flushed.remove(self.flush)
        self.sock.close()


def open_socket(host: str, port: int) -> socket.socket:
    """A UDP socket bound to (host, port), as the event loop's datagram endpoint binds one."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock
