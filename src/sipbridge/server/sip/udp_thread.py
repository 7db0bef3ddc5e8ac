"""The SIP UDP socket read on a thread of its own (`sipbridge/_csipthr.c`): the default where it
is built (`SIPBRIDGE_SIP_UDP=endpoint` asks for the event loop's datagram endpoint instead,
`=batched` for udp.py's batches); the datagram endpoint where it is not built.

A C thread blocks on the socket, reads it with `recvmmsg` into a bounded queue (full: dropped
and counted as `udp_queue_full`) and wakes the loop through an eventfd once a batch; the loop
takes up to DRAIN datagrams a turn (`_readable`, again on the next turn when more wait) and
hands each to `SipService.receive` as the datagram endpoint does. Sends (`SIPBRIDGE_SIP_UDP_SEND`):
by default what a flush produced is queued for the thread to send (one eventfd write when the
queue was empty), what a drain's datagrams produced handed over once at its end; `=batch`, it
goes out from the loop with one `sendmmsg` (`_csipudp.send_batch`, as `BatchedUdp`); `=each`,
one `sendto` each. Measured on the shared 2-core machine, alternated (bench/sip.py's bare UAS
at a fixed 2,000 calls/s): 0.21-0.25 ms of CPU a call queued for the thread (the loop's own
0.18-0.22), 0.28-0.33 with `=batch` (0.26-0.31), 0.32-0.35 on the datagram endpoint; with a
room's calls (bench/inbound.py, shared, 250/s) the same CPU either way within the noise and
INVITE->100 p99 2.8 ms against 4.9-24.9.

The thread answers a new INVITE's 100 Trying itself, at once, before the datagram reaches the
queue, so the 100 never waits for the loop (issue 18): only a plain INVITE outside a dialog
whose top Via branch it has not seen lately, from a source `SipService`'s admission control
has let through and will judge again before it could drop one of its requests (`_admission`:
after each of a source's INVITEs and REGISTERs, how many more it judges at the least; a refusal
or a drop makes that 0).
(Only where the service asks for it, `SipService.early_trying`: an application that answers its
INVITEs within their handling, as tests/sip_app.py's, gets no 100 from the thread, and the
loop's lazy one only when its handling left an INVITE unanswered.)
Such a datagram is handed on marked (`trying_sent`): the transaction records that 100 as its
last response, Python sends no second one, and a retransmission gets the transaction's last
response as always. Everything else (a retransmission, anything unusual)
is left to Python, which decides as it always did. The C builder's 100 is byte for byte the
Python stack's (tests/server/test_sip_thread.py compares them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from sipbridge.server.loop_calls import remove_reader
from sipbridge.server.sip.udp import MAX_UDP_PEERS, UDP_BUFFER_BYTES, SocketTransport
from sipbridge.sip.endpoint import Peer

if TYPE_CHECKING:
    from sipbridge.server.sip.transport import SipService

try:
    from sipbridge import _csipthr  # type: ignore[attr-defined]
except ImportError:  # not built: the event loop's datagram endpoint
    _csipthr = None
try:
    from sipbridge import _csipudp  # type: ignore[attr-defined]
except ImportError:
    _csipudp = None

log = logging.getLogger(__name__)

ENV = "SIPBRIDGE_SIP_UDP"  # "thread" or unset: this reader where built; "endpoint", "batched"
# How the loop's datagrams go out: "thread" (default), queued for the reader thread to send;
# "batch", one sendmmsg a flush from the loop; "each", one sendto each from the loop.
SEND_ENV = "SIPBRIDGE_SIP_UDP_SEND"
DRAIN = 32  # datagrams handled a turn of the loop (as libuv reads up to 32 a readiness)
QUEUE: int | None = None  # datagrams the thread keeps for the loop (None: _csipthr.QUEUE_MAX)
_REFUSALS = ("refused_flood", "dropped_flood", "dropped_not_allowed")
_LIMITED = (b"INVITE ", b"REGISTER ")


def built() -> bool:
    """Whether the reader thread's extension is built here."""
    return _csipthr is not None


def available() -> bool:
    """Whether the SIP UDP socket is read on its own thread here (built, and not opted out of)."""
    return built() and os.environ.get(ENV, "") in ("", "thread")


def trying(data: bytes, host: str, port: int, server: str) -> bytes | None:
    """The 100 Trying the reader thread would send for `data` from (host, port), or None when
    it leaves that datagram to Python (for tests)."""
    assert _csipthr is not None
    result: bytes | None = _csipthr.trying(data, host, port, server)
    return result


class ThreadedUdp(SocketTransport):
    """A bound UDP socket of `service`, read on a C thread (module docstring)."""

    def __init__(self, service: SipService, sock: socket.socket) -> None:
        assert _csipthr is not None
        self._io: Any = _csipthr
        self._send: Any = _csipudp
        self.send_mode = os.environ.get(SEND_ENV, "thread")
        if self.send_mode == "batch" and _csipudp is None:
            self.send_mode = "each"
        super().__init__(service, sock)
        self._again: asyncio.Handle | None = None
        # Sends queued for the thread wait for the end of the drain that produced them: one
        # hand-over (a lock, at most one wake of the thread) per drain, not per datagram.
        self._draining = False
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER_BYTES)
        admission = service.endpoint.admission
        self.early_trying = service.early_trying
        self._queue = QUEUE or self._io.QUEUE_MAX
        self._refusing = self._crowded = False
        self._reader = self._io.start(
            self.fd,
            self.family,
            service.endpoint.settings.user_agent,
            DRAIN,  # (taken by the loop, not yet handled: what the thread cannot see)
            admission is None,
            self.early_trying,
            self._queue,
        )
        self._check_crowded()
        self._wake_fd = self._io.wake_fd(self._reader)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._wake_fd, self._readable)
        service.on_flushed.append(self.flush)

    def _readable(self) -> None:
        self._again = None
        if self._closed:
            return
        datagrams, more, oversized, errors, queue_full, tried = self._io.drain(self._reader, DRAIN)
        service = self.service
        stats = service.endpoint.stats
        if oversized:
            stats["udp_oversized"] += oversized
        if errors:
            stats["udp_error"] += errors
        if queue_full:
            stats["udp_queue_full"] += queue_full
        if tried:
            stats["trying_early"] += tried
        peers = self._peers
        watch = self.early_trying and service.endpoint.admission is not None
        draining = self._draining = self.send_mode == "thread"
        if draining:
            # the timers re-armed and the sends handed over once a drain, not once a datagram
            service.hold_flushes()
        try:
            self._handle(datagrams, peers, watch)
        finally:
            if draining:
                self._draining = False
                service.release_flushes()  # (which runs `flush`)
            else:
                self._check_crowded()
            if more and not self._closed:  # (the thread wakes the loop only once it is empty)
                self._again = self._loop.call_soon(self._readable)

    def _handle(
        self,
        datagrams: list[tuple[bytes, tuple[str, int], bool]],
        peers: dict[tuple[str, int], Peer],
        watch: bool,
    ) -> None:
        service = self.service
        stats = service.endpoint.stats
        for data, addr, trying_sent in datagrams:
            peer = peers.get(addr)
            if peer is None:
                if len(peers) >= MAX_UDP_PEERS:
                    peers.clear()
                peer = peers[addr] = Peer("udp", addr[0], addr[1])
            try:
                if watch and data.startswith(_LIMITED):
                    before = _refusals(stats)
                    service.receive(data, peer, trying_sent)
                    self._admission(peer.host, data, _refusals(stats) > before)
                else:
                    service.receive(data, peer, trying_sent)
            except Exception:  # (as the datagram endpoint's loop would: logged, the next handled)
                log.exception("SIP UDP: handling a datagram from %s failed", peer.host)

    def _admission(self, host: str, data: bytes, refused: bool) -> None:
        """Tell the thread how many more of `host`'s INVITEs and REGISTERs the admission control
        judges before it could drop one (`Admission.allowance`): 0 once one was refused or
        dropped. (Told after each: the thread's table is bounded, and forgets when full.)"""
        admission = self.service.endpoint.admission
        if refused or admission is None:
            self._io.admit(self._reader, host, 0)
        else:
            self._io.admit(self._reader, host, admission.allowance(host, self.service.now()))

    def refuse_new(self, refusing: bool) -> None:
        """While `refusing` (the node drains: new INVITEs get 503 at once), the thread answers
        no INVITE: the 503 goes alone, as with the other sockets."""
        self._refusing = refusing
        if not self._closed:
            self._io.refuse_new(self._reader, refusing or self._crowded)

    def _check_crowded(self) -> None:
        """The thread answers no INVITE while the endpoint is near its max_transactions: everything
        the service's UDP sockets' threads may have answered and queued, or the loop taken and
        not yet handled (QUEUE and DRAIN each), could make a transaction, and one past the
        limit is refused 503 (its 100 from the thread would go before). Checked after each
        drain and flush (where transactions are made); told to the thread on a change."""
        endpoint = self.service.endpoint
        reserve = (self._queue + DRAIN) * max(1, len(self.service._udp))
        crowded = len(endpoint.server_transactions) + reserve >= endpoint.max_transactions
        if crowded != self._crowded and not self._closed:
            self._crowded = crowded
            self._io.refuse_new(self._reader, self._refusing or crowded)

    def flush(self) -> None:
        self._check_crowded()
        if self._draining:
            return  # (at the end of the drain)
        pending = self._taken()
        if not pending:
            return
        mode = self.send_mode
        if mode == "batch":
            _sent, failed, _error = self._send.send_batch(self.fd, self.family, pending)
        elif mode == "thread":  # (its failures come back with the next drain, as udp_error)
            failed = self._io.send(self._reader, pending)
        else:
            failed = 0
            for data, address in pending:
                try:
                    self.sock.sendto(data, address)
                except OSError:
                    failed += 1
        if failed:
            self.service.endpoint.stats["udp_error"] += failed

    def close(self) -> None:
        if self._closed:
            return
        self._draining = False  # (closed from within a drain: its sends go now)
        self.flush()
        self._closed = True
        if self._again is not None:
            self._again.cancel()
        remove_reader(self._loop, self._wake_fd)
        self._io.stop(self._reader)  # the thread joined, its eventfds closed
        if self.flush in self.service.on_flushed:
            self.service.on_flushed.remove(self.flush)
        self.sock.close()


def _refusals(stats: dict[str, int]) -> int:
    return sum(stats.get(name, 0) for name in _REFUSALS)
