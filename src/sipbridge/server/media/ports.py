"""RTP ports: UDP sockets bound from `--rtp-ports`, read straight from the event loop.

A call takes an even port for RTP and the odd one above it for RTCP (RFC 3550 s11), or the even
one alone when the peer multiplexes RTCP (RFC 5761). Sockets are bound synchronously, so the
port is known while the SDP answer is written; reading uses `add_reader` and one `recvfrom`
with a small buffer per wake-up - no transport object, no 256 KiB allocation per datagram
(DESIGN.md, performance principles), into one buffer per socket that the relay's fast path
(`media/relay.py`) rewrites and sends from; a socket woken faster than media comes is drained in
bounded batches, so a flood neither overflows it nor starves the others. Ports in use by anyone
else are skipped.

A datagram's time is when the loop read it, except on a socket whose packets feed a jitter buffer
(`stamped`): there it is when the kernel received it (`SO_TIMESTAMPNS`), so that the packets
queued while the loop was held up (GC, a heavy request, CPU contention) keep the times they came
at instead of all looking late - their spread grew the jitter buffer and later cut frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from sipbridge.server.loop_calls import remove_reader

READ_SIZE = 2048  # an RTP packet fits a path MTU; larger datagrams are truncated and dropped
DRAIN_LIMIT = 64  # datagrams per busy wake-up, so one flooded socket cannot starve the loop
BUSY_S = 0.005  # wake-ups closer than this (media comes every 20 ms) mean a queue to drain
RECEIVE_BUFFER = 256 * 1024
# A datagram socket, non-blocking as it is made where the system can (Linux)
_DGRAM_NONBLOCK = socket.SOCK_DGRAM | getattr(socket, "SOCK_NONBLOCK", 0)
# The kernel's receive time of each datagram, as a `struct timespec` of CLOCK_REALTIME in the
# ancillary data (Linux socket(7); Python 3.11 names neither constant: 35 in asm-generic, which
# x86 and arm use, with a 64-bit timespec on 64-bit systems). Elsewhere datagrams have the time
# the loop read them.
_LINUX64 = sys.platform == "linux" and sys.maxsize > 2**32
SO_TIMESTAMPNS: int = getattr(socket, "SO_TIMESTAMPNS", 35 if _LINUX64 else 0)
_TIMESPEC = struct.Struct("@qq")
_STAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) if SO_TIMESTAMPNS else 0
# A receive time older than this is not believed (the wall clock stepped): the read time is used.
MAX_AGE = 1.0

# (the datagram, its source, when it arrived on the loop's clock)
Receiver = Callable[[bytes, tuple[str, int], float], None]
# The fast path (`media/relay.py`): (the socket's buffer, the datagram in it, source, now) ->
# whether it took the datagram; when not, `receiver` gets it as bytes.
FastPath = Callable[[bytearray, memoryview, tuple[str, int], float], bool]


def _closed(data: bytes, source: tuple[str, int], now: float) -> None:
    """The receiver of a closed socket."""


class SendBatch:
    """The sends of one tick of the shared 20 ms clock, made in one call (issue 18).

    A mixing room sends every leg a frame every tick, one `sendto` per leg (each leg has its own
    socket): at 250 legs, a millisecond of the loop's every 20. While a tick runs (`begin` ..
    `flush`, `MediaClock.advance`) the sockets of this batch collect their datagrams instead of
    sending them, and `flush` hands them all to `sender`, the compiled relay's `Sender`
    (`_crelay.c`), whose own thread makes the system calls beside the loop: the same datagrams
    from the same sockets in the same order, each socket's failed sends counted on it when the
    next batch is handed over. Without a sender (not built, `SIPBRIDGE_NO_CRELAY=1`) nothing is
    collected: every datagram leaves through its socket's `sendto` as it is made. The one
    difference on the wire: a leg that stops mixing just after a tick (a second caller joins its
    room) can have its first forwarded packet leave while the sender still sends the tick, a
    moment before its last mixed frame; their sequence numbers are in order all the same."""

    def __init__(self, sender: Any = None) -> None:
        self.sender = sender
        # The tick's datagrams while one runs: (fd, family, data, address, socket).
        self.pending: list[tuple[int, int, bytes | memoryview, tuple[str, int], MediaSocket]] | None
        self.pending = None
        # The legs whose silence the sender makes this tick (`CallMedia.send_pcm`), and their
        # streams (`_crelay.SilentStream`), while a tick runs; the tick's time (`at`).
        self.silent: list[Any] | None = None
        self.silent_legs: list[Any] = []
        self.at = 0.0
        self._in_flight: list[tuple[int, int, bytes | memoryview, tuple[str, int], MediaSocket]]
        self._in_flight = []
        self._flying = False  # a batch handed to the sender may not be sent yet
        # Sockets closed while a batch was in flight: their descriptors close once it is sent
        # (`close_deferred`), at the next flush, instead of the loop waiting for the sender.
        self._deferred: list[socket.socket] = []
        self.batches = 0
        self.sent = 0

    def begin(self, at: float = 0.0) -> None:
        """A tick at `at` starts: its sends are collected (with a sender; else they go at once),
        and the silence of the legs that hear none is made by the sender (`silent`)."""
        if self.sender is not None:
            self.pending = []
            self.silent = []
            self.silent_legs = []
            self.at = at

    def flush(self) -> None:
        """The tick is over: what it collected goes to the sender, then the silent legs' frames
        it makes."""
        pending, self.pending = self.pending, None
        silent, self.silent = self.silent, None
        legs, self.silent_legs = self.silent_legs, []
        if not pending and not silent:
            if self._deferred:
                self.close_deferred()
            return
        pending = pending or []
        deferred, self._deferred = self._deferred, []
        in_flight, self._in_flight = self._in_flight, pending
        try:
            failed = self.sender.submit(pending, silent, self.at)
        except (TypeError, ValueError, OverflowError, OSError, RuntimeError):
            # an entry the sender cannot take (an IPv6 zone by name, a closed sender): the
            # loop sends them, as without a sender, and the silent legs make their own frames
            self._in_flight = []
            self._flying = False
            with contextlib.suppress(RuntimeError):  # (a closed sender has nothing in flight)
                self.sender.wait()
            for _fd, _family, data, address, sock in pending:
                sock.send_now(data, address)
            for leg in legs:
                leg.silent_by_loop(self.at)
            failed = []
        else:
            self._flying = True
            self.batches += 1
            self.sent += len(pending) + len(legs)
        for index in failed:  # (of the batch before; one whose sockets closed is gone)
            if index < len(in_flight):
                in_flight[index][4].send_errors += 1
        # `submit` returned once the batch before was sent: what waited on it closes now.
        for closing in deferred:
            closing.close()

    def settle(self, sock: MediaSocket) -> bool:
        """`sock` is about to close: what it collected in the tick that runs is sent now (the
        tick's player ended the call, say). True when a batch is in flight that may send on its
        descriptor: the socket is handed over (`defer`) to close once that batch is sent, so
        that its descriptor is never sent on once closed (and maybe reused) - without the loop
        waiting for the sender's thread (at every call's end during a tick's sends: a tail of
        INVITE->100 at hundreds of calls a second, issue 18)."""
        pending = self.pending
        if pending is not None:
            kept = [entry for entry in pending if entry[4] is not sock]
            if len(kept) != len(pending):
                for entry in pending:
                    if entry[4] is sock:
                        sock.send_now(entry[2], entry[3])
                pending[:] = kept
        return self._flying and self.sender is not None

    def defer(self, sock: socket.socket) -> None:
        """Close `sock` once the batch in flight is sent (at the next flush at the latest)."""
        self._deferred.append(sock)

    @property
    def deferring(self) -> bool:
        """Whether sockets wait to close after the batch in flight."""
        return bool(self._deferred)

    def close_deferred(self) -> None:
        """The batch in flight sent (waited for, if need be), the sockets deferred close."""
        deferred, self._deferred = self._deferred, []
        if self.sender is not None:
            with contextlib.suppress(RuntimeError):
                self.sender.wait()
        # (`_in_flight` stays: the next `submit` reports that batch's failed sends by index)
        for closing in deferred:
            closing.close()

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        self.pending = None
        self.silent = None
        self.close_deferred()
        self._in_flight = []
        self._flying = False


_NO_BATCH = SendBatch()


class MediaSocket:
    """One bound, non-blocking UDP socket delivering datagrams to `receiver`."""

    def __init__(
        self,
        sock: socket.socket,
        receiver: Receiver,
        batch: SendBatch = _NO_BATCH,
        port: int = 0,
        family: int = 0,
    ) -> None:
        self.sock = sock
        self.batch = batch
        self.fd = sock.fileno()
        # (given by a pool that knows it: `sock.family` builds an enum member each time)
        self.family = family or int(sock.family)
        # the port it was bound to, when the caller knows it (a `getsockname` less per socket)
        self.port: int = port or sock.getsockname()[1]
        self.receiver = receiver
        self.truncated = 0
        self.send_errors = 0
        # Whether datagrams get the kernel's receive time (`stamp`): a `recvmsg_into` with
        # ancillary data costs more than a `recvfrom_into`, so only where it feeds a jitter buffer.
        self.stamped = False
        self._stamping = False  # SO_TIMESTAMPNS set on the socket
        self._last_wake = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: Callable[[], float] = time.monotonic
        self.fast: FastPath | None = None
        # One receive buffer per socket, read into (`recvfrom_into`): a relayed datagram is
        # rewritten and sent from it without a copy; views of it by length, made once.
        self._buffer = bytearray(READ_SIZE)
        self._buffers = [self._buffer]
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
            remove_reader(self._loop, self.sock.fileno())
            self._loop = None

    def stamp(self, on: bool) -> None:
        """Give datagrams the kernel's receive time from now on (`on`), or the read time."""
        if on and not self._stamping:
            if not SO_TIMESTAMPNS:
                return
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                return
            self._stamping = True
        self.stamped = on

    def _readable(self) -> None:
        # A call's socket holds one packet per 20 ms: read one per wake-up, since draining to
        # EAGAIN would cost a second, empty receive (and an exception) per packet. When wake-ups
        # come faster than media does (a flood, a burst after a stall), drain up to DRAIN_LIMIT
        # so the kernel buffer does not overflow and drop the real packets among them.
        now = self._clock()
        limit = DRAIN_LIMIT if now - self._last_wake < BUSY_S else 1
        self._last_wake = now
        if self.stamped:
            self._read_stamped(now, limit)
        else:
            self._read(now, limit)

    def drain(self) -> None:
        """Read what the socket holds now (up to DRAIN_LIMIT datagrams), without waiting for the
        loop to poll it: the media clock does before it runs the ticks it is behind on."""
        if self._loop is None:
            return
        now = self._clock()
        if self.stamped:
            self._read_stamped(now, DRAIN_LIMIT)
        else:
            self._read(now, DRAIN_LIMIT)

    def _read(self, now: float, limit: int) -> None:
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
            self.receiver(view.tobytes(), addr, now)

    def _read_stamped(self, now: float, limit: int) -> None:
        """`_read`, each datagram at the time the kernel received it (on the loop's clock: its
        age, by the wall clock read once, before `now`)."""
        real = time.time()
        recvmsg_into = self.sock.recvmsg_into
        buffer, buffers, views, fast = self._buffer, self._buffers, self._views, self.fast
        unpack = _TIMESPEC.unpack_from
        for _ in range(limit):
            try:
                size, ancillary, _flags, addr = recvmsg_into(buffers, _STAMP_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if size >= READ_SIZE:
                self.truncated += 1
                continue
            at = now
            for _level, kind, data in ancillary:
                if kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
                    seconds, nanoseconds = unpack(data)
                    age = real - seconds - nanoseconds * 1e-9
                    if 0.0 < age < MAX_AGE:
                        at = now - age
            view = views.get(size)
            if view is None:
                view = views[size] = self._whole[:size]
            if fast is not None and fast(buffer, view, addr, at):
                continue
            self.receiver(view.tobytes(), addr, at)

    def send(self, data: bytes | memoryview, address: tuple[str, int]) -> None:
        pending = self.batch.pending
        if pending is not None:  # a tick runs: sent with the others at its end
            pending.append((self.fd, self.family, data, address, self))
            return
        self.send_now(data, address)

    def send_now(self, data: bytes | memoryview, address: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, address)
        except OSError:
            # A full socket buffer or an unreachable peer: drop this packet, never block.
            self.send_errors += 1

    def close(self) -> None:
        # nothing sent on its descriptor once closed (maybe reused): while a batch that may hold
        # it is in flight, the descriptor closes after it (`SendBatch.defer`)
        deferred = self.batch.settle(self)
        if self._loop is not None:
            with contextlib.suppress(Exception):
                remove_reader(self._loop, self.sock.fileno())
            self._loop = None
        if deferred:
            self.batch.defer(self.sock)
        else:
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
        self.batch = _NO_BATCH  # the media clock's sends (`SendBatch`), when it has one
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def open(self, rtp: Receiver, rtcp: Receiver | None) -> tuple[MediaSocket, MediaSocket | None]:
        """Bind an RTP socket (and the RTCP one above it unless `rtcp` is None)."""
        opened = self._open(rtp, rtcp)
        if opened is None and self.batch.deferring:
            # The free ports are held by sockets that close after the tick's sends: now.
            self.batch.close_deferred()
            opened = self._open(rtp, rtcp)
        if opened is None:
            self.exhausted += 1
            raise OSError(errno.EADDRINUSE, "no free RTP port in the range")
        return opened

    def _open(
        self, rtp: Receiver, rtcp: Receiver | None
    ) -> tuple[MediaSocket, MediaSocket | None] | None:
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
            family = int(self.family)
            return (
                MediaSocket(first, rtp, self.batch, port, family),
                MediaSocket(second, rtcp, self.batch, port + 1, family)
                if second is not None and rtcp is not None
                else None,
            )
        return None

    def _bind(self, port: int) -> socket.socket | None:
        # Non-blocking from its creation (one `ioctl` less a socket; a call opens two).
        sock = socket.socket(self.family, _DGRAM_NONBLOCK)
        try:
            if _DGRAM_NONBLOCK == socket.SOCK_DGRAM:
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
