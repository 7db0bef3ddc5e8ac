"""RTP ports: UDP sockets bound from `--rtp-ports`, read straight from the event loop.

A call takes an even port for RTP and the odd one above it for RTCP (RFC 3550 s11), or the even
one alone when the peer multiplexes RTCP (RFC 5761). Sockets are bound synchronously, so the
port is known while the SDP answer is written; reading uses `add_reader` and one `recvfrom`
with a small buffer per wake-up - no transport object, no 256 KiB allocation per datagram
(DESIGN.md, performance principles), into one buffer per socket that the relay's fast path
(`media/relay.py`) rewrites and sends from; a socket woken faster than media comes is drained in
bounded batches, so a flood neither overflows it nor starves the others. Ports in use by anyone
else are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import Callable

READ_SIZE = 2048  # an RTP packet fits a path MTU; larger datagrams are truncated and dropped
DRAIN_LIMIT = 64  # datagrams per busy wake-up, so one flooded socket cannot starve the loop
BUSY_S = 0.005  # wake-ups closer than this (media comes every 20 ms) mean a queue to drain
RECEIVE_BUFFER = 256 * 1024

Receiver = Callable[[bytes, tuple[str, int]], None]
# The fast path (`media/relay.py`): (the socket's buffer, the datagram in it, source, now) ->
# whether it took the datagram; when not, `receiver` gets it as bytes.
FastPath = Callable[[bytearray, memoryview, tuple[str, int], float], bool]


def _closed(data: bytes, source: tuple[str, int]) -> None:
    """The receiver of a closed socket."""


class MediaSocket:
    """One bound, non-blocking UDP socket delivering datagrams to `receiver`."""

    def __init__(self, sock: socket.socket, receiver: Receiver) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.receiver = receiver
        self.truncated = 0
        self.send_errors = 0
        self._last_wake = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: Callable[[], float] = time.monotonic
        self.fast: FastPath | None = None
        # One receive buffer per socket, read into (`recvfrom_into`): a relayed datagram is
        # rewritten and sent from it without a copy; views of it by length, made once.
        self._buffer = bytearray(READ_SIZE)
        self._whole = memoryview(self._buffer)
        self._views: dict[int, memoryview] = {}

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._clock = loop.time  # the time the legs are given: the loop's, as timers have it
        loop.add_reader(self.sock.fileno(), self._readable)

    @property
    def reading(self) -> bool:
        """Whether the event loop reads it (`start`), not the relay engine (`stop_reading`)."""
        return self._loop is not None

    def stop_reading(self) -> None:
        """The event loop stops reading it: the relay engine (`crelay.py`) does for a while."""
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None

    def _readable(self) -> None:
        # A call's socket holds one packet per 20 ms: read one per wake-up, since draining to
        # EAGAIN would cost a second, empty receive (and an exception) per packet. When wake-ups
        # come faster than media does (a flood, a burst after a stall), drain up to DRAIN_LIMIT
        # so the kernel buffer does not overflow and drop the real packets among them.
        now = self._clock()
        limit = DRAIN_LIMIT if now - self._last_wake < BUSY_S else 1
        self._last_wake = now
        recv_into = self.sock.recvfrom_into
        buffer, views, fast = self._buffer, self._views, self.fast
        for _ in range(limit):
            try:
                size, addr = recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP port unreachable for an earlier send and the like: nothing to read.
                continue
            if size >= READ_SIZE:
                self.truncated += 1
                continue
            view = views.get(size)
            if view is None:
                view = views[size] = self._whole[:size]
            if fast is not None and fast(buffer, view, addr, now):
                continue
            self.receiver(view.tobytes(), addr)

    def send(self, data: bytes | memoryview, address: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, address)
        except OSError:
            # A full socket buffer or an unreachable peer: drop this packet, never block.
            self.send_errors += 1

    def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()
        self.receiver = _closed  # (a leg's bound method: the leg holds us, no cycle left)


class PortPool:
    """Even/odd port pairs from a range, handed out round robin, skipping busy ones."""

    def __init__(self, host: str, low: int, high: int) -> None:
        if low > high:
            raise ValueError("empty RTP port range")
        self.host = host
        self.low = low + (low % 2)
        self.high = high
        self._next = self.low
        self.in_use: set[int] = set()
        self.exhausted = 0

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def open(self, rtp: Receiver, rtcp: Receiver | None) -> tuple[MediaSocket, MediaSocket | None]:
        """Bind an RTP socket (and the RTCP one above it unless `rtcp` is None)."""
        span = (self.high - self.low) // 2 + 1
        for _ in range(span):
            port = self._next
            self._next = port + 2 if port + 2 <= self.high else self.low
            if port in self.in_use or (rtcp is not None and port + 1 > self.high):
                continue
            first = self._bind(port)
            if first is None:
                continue
            second = None
            if rtcp is not None:
                second = self._bind(port + 1)
                if second is None:
                    first.close()
                    continue
            self.in_use.add(port)
            return (
                MediaSocket(first, rtp),
                MediaSocket(second, rtcp) if second is not None and rtcp is not None else None,
            )
        self.exhausted += 1
        raise OSError(errno.EADDRINUSE, "no free RTP port in the range")

    def _bind(self, port: int) -> socket.socket | None:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((self.host, port))
        except OSError:
            sock.close()
            return None
        return sock

    def release(self, port: int) -> None:
        self.in_use.discard(port)
