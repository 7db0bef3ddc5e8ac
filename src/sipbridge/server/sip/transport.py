"""SIP over UDP, TCP and TLS: the asyncio edge around the sans-IO `SipEndpoint`.

It feeds received bytes and the time into the endpoint, transmits what the endpoint returns,
keeps one `call_at` timer for all transactions, and hands endpoint events to the application.
Responses go back over the connection the request came on (RFC 3261 s18.2.2); on UDP to the
source address and port (RFC 3581 symmetric response routing).

Every message in and out passes `receive` and `_transmit`: there each is handed, with the wall
clock time and both addresses, to the per-call trace (`sipbridge.sip.trace`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import resource
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sipbridge.server.deadline import DeadlineTimer
from sipbridge.server.sip.udp import BatchedUdp, _Udp, open_socket
from sipbridge.server.sip.udp import available as batched_udp_available
from sipbridge.server.sip.udp_thread import ThreadedUdp
from sipbridge.server.sip.udp_thread import available as threaded_udp_available
from sipbridge.sip.admission import Admission
from sipbridge.sip.endpoint import EndpointEvent, EndpointSettings, Peer, SipEndpoint
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.message import StreamFramer
from sipbridge.sip.trace import CallTraces

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 10_000
MAX_CONNECTIONS_PER_SOURCE = 32  # TCP/TLS connections from one address at once
FD_SHARE = 4  # SIP connections take at most a quarter of the open-file limit (issue 17 s5)
# Without a complete message (or a keepalive) for this long a connection is closed; a trickle of
# bytes does not count: a message begun must be complete within the message timeout
# (`SipService.message_timeout`, --sip-message-timeout).
IDLE_TIMEOUT_S = 600.0
MESSAGE_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0  # to open a TCP/TLS connection to a trunk
MAX_QUEUED_WHILE_CONNECTING = 64  # messages waiting for a connection being opened

Application = Callable[["SipService", EndpointEvent], None]


@dataclass(frozen=True, slots=True)
class Listen:
    transport: str  # udp, tcp, tls
    host: str
    port: int


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection, framed by Content-Length."""

    def __init__(self, service: SipService, kind: str) -> None:
        self.service = service
        self.kind = kind
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.message_timer: asyncio.TimerHandle | None = None  # a message begun, not complete
        self.dialled: Peer | None = None  # the trunk we opened this connection to
        self.local: tuple[str, int] | None = None  # our address on this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)
        self.transport = stream
        host, port = transport.get_extra_info("peername")[:2]
        service = self.service
        if len(service.connections) >= service.max_connections:
            service.stats_error("connections_refused")
            stream.abort()
            return
        if service.per_source[str(host)] >= MAX_CONNECTIONS_PER_SOURCE:
            service.stats_error("connections_refused_per_source")
            stream.abort()
            return
        self.peer = Peer(self.kind, str(host), int(port), next(service.connection_ids))
        sockname = transport.get_extra_info("sockname")
        if sockname:
            self.local = (str(sockname[0]), int(sockname[1]))
        service.connections[self.peer.connection or 0] = self
        service.per_source[self.peer.host] += 1
        self._touch()

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.transport is not None
        try:
            self.framer.feed(data)
            while (message := self.framer.next_message()) is not None:
                self._touch()
                self.service.receive(message, self.peer)
            while self.framer.keepalives:
                self._touch()
                self.framer.keepalives -= 1
                self.transport.write(b"\r\n")  # RFC 5626 s3.5.1 pong
            self._watch_partial()
        except SipProtocolError as err:
            # The stream can no longer be framed: drop the connection (counted).
            self.service.stats_error("stream_framing")
            log.info("SIP %s from %s:%d: %s", self.kind, self.peer.host, self.peer.port, err)
            self.transport.close()

    def _touch(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        loop = asyncio.get_running_loop()
        self.idle_timer = loop.call_later(IDLE_TIMEOUT_S, self._idle)

    def _watch_partial(self) -> None:
        """A message begun must be complete within the message timeout, however it trickles in."""
        if not self.framer.buffered:
            if self.message_timer is not None:
                self.message_timer.cancel()
                self.message_timer = None
        elif self.message_timer is None:
            loop = asyncio.get_running_loop()
            self.message_timer = loop.call_later(self.service.message_timeout, self._too_slow)

    def _too_slow(self) -> None:
        self.message_timer = None
        self.service.stats_error("stream_too_slow")
        self._idle()

    def _idle(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.idle_timer, self.message_timer):
            if timer is not None:
                timer.cancel()
        if self.peer is not None:
            if self.service.connections.pop(self.peer.connection or 0, None) is self:
                self.service.per_source[self.peer.host] -= 1
                if self.service.per_source[self.peer.host] <= 0:
                    del self.service.per_source[self.peer.host]
            self.service.connection_lost(self.peer)
        if self.dialled is not None:
            self.service.dialled_lost(self.dialled, self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


def connection_budget() -> int:
    """How many SIP TCP/TLS connections to accept at once: a share of the open-file limit, so
    that however many a peer opens, the HTTP API, `/healthz` and the calls' RTP sockets still
    get descriptors (issue 17 s5)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft // FD_SHARE))


class SipService:
    """Listeners plus the endpoint; `application` receives every endpoint event."""

    def __init__(
        self,
        application: Application,
        settings: EndpointSettings | None = None,
        *,
        clock: Callable[[], float] | None = None,
        admission: Admission | None = None,
        message_timeout: float = MESSAGE_TIMEOUT_S,
        traces: CallTraces | None = None,
        advertised_host: str = "",
    ) -> None:
        self.endpoint = SipEndpoint(settings, admission)
        # Every SIP message of recent calls (set to None to record none); times are the wall
        # clock's, as a capture file's are.
        self.traces: CallTraces | None = CallTraces() if traces is None else traces
        self.wall_clock: Callable[[], float] = time.time
        # Our address in traces when a listener is bound to every address (0.0.0.0, ::).
        self.advertised_host = advertised_host
        self._local_udp: tuple[str, int] = ("0.0.0.0", 0)
        self._local_stream: dict[str, tuple[str, int]] = {}
        self.message_timeout = message_timeout
        self.application = application
        self.connections: dict[int, _Stream] = {}
        self.per_source: Counter[str] = Counter()  # accepted connections by address
        self.max_connections = connection_budget()
        self.connection_ids = itertools.count(1)
        # UDP sockets read and written in batches when the extension is built (udp.py)
        self.batched_udp = batched_udp_available()
        # or read on a thread of their own, a new INVITE's 100 sent there (udp_thread.py; the
        # default where built): `early_trying` False for an application that answers INVITEs
        # within their handling, whose lazy 100 (`SipEndpoint.send_trying`) is then never sent
        self.threaded_udp = threaded_udp_available()
        self.early_trying = True
        self._udp: dict[tuple[str, int], asyncio.DatagramTransport | BatchedUdp | ThreadedUdp] = {}
        self._udp_out: asyncio.DatagramTransport | BatchedUdp | ThreadedUdp | None = None
        self._servers: list[asyncio.Server] = []
        # the transactions' deadlines (lazy: moved later or gone, the wake-up stays, see there)
        self._timer = DeadlineTimer(self.now, self._on_timer, lazy=True)
        self._flushing = 0  # flushes in progress (one inside another's application call)
        # Called once the outermost flush is done (a datagram handled, the application's act
        # delivered): the drivers above re-arm their timers there, once, not per event.
        self.on_flushed: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock = clock
        # `now` while a message is handled: its arrival (-1.0: none; asked ten times a call)
        self._now = -1.0
        self.bound: list[Listen] = []
        # Connections we open (TCP/TLS trunks): by the trunk's (transport, host, port); what is
        # sent while one is being opened waits in `_dialling`.
        self.dialled: dict[Peer, _Stream] = {}
        self._dialling: dict[Peer, list[bytes]] = {}
        self._dial_tasks: set[asyncio.Task[None]] = set()
        # Verifies trunks' certificates: the system's CAs, or `tls_ca`'s. Made when first needed
        # (loading the system's CAs takes 40 ms, and most servers dial no TLS trunk).
        self.tls_ca = ""
        self._client_tls: ssl.SSLContext | None = None

    def client_tls(self) -> ssl.SSLContext:
        if self._client_tls is None:
            self._client_tls = ssl.create_default_context(cafile=self.tls_ca or None)
        return self._client_tls

    def now(self) -> float:
        if self._now >= 0.0:
            return self._now
        if self._clock is not None:
            return self._clock()
        assert self._loop is not None
        return self._loop.time()

    async def listen(self, what: Listen, tls: ssl.SSLContext | None = None) -> Listen:
        """Bind one listener; returns it with the real port (for port 0)."""
        self._loop = asyncio.get_running_loop()
        if what.transport == "udp":
            transport: asyncio.DatagramTransport | BatchedUdp | ThreadedUdp
            if self.threaded_udp:  # a reader thread (udp_thread.py)
                transport = ThreadedUdp(self, open_socket(what.host, what.port))
            elif self.batched_udp:  # recvmmsg / sendmmsg (udp.py)
                sock = open_socket(what.host, what.port)
                transport = BatchedUdp(self, sock)
            else:
                transport, _ = await self._loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=(what.host, what.port)
                )
            port = transport.get_extra_info("sockname")[1]
            self._udp[(what.host, port)] = transport
        else:
            kind = what.transport
            context = tls if kind == "tls" else None
            if kind == "tls" and context is None:
                raise ValueError("TLS listener needs a certificate")
            server = await self._loop.create_server(
                lambda: _Stream(self, kind), what.host, what.port, ssl=context, reuse_address=True
            )
            self._servers.append(server)
            # (uvloop's servers give a list where typeshed says a tuple: read untyped, which
            # compiled code does not check to be a tuple)
            sockets: Sequence[socket.socket] = cast(Any, server).sockets
            port = sockets[0].getsockname()[1]
        bound = Listen(what.transport, what.host, int(port))
        self.bound.append(bound)
        host = what.host
        if host in ("0.0.0.0", "::", "") and self.advertised_host:
            host = self.advertised_host
        if what.transport == "udp":
            if len(self._udp) == 1:  # the socket `_transmit` sends from
                self._local_udp = (host, int(port))
        else:
            self._local_stream.setdefault(what.transport, (host, int(port)))
        return bound

    def local_port(self, transport: str) -> int:
        """The port we listen on for a transport (for Contact and Via)."""
        for bound in self.bound:
            if bound.transport == transport:
                return bound.port
        return self.bound[0].port if self.bound else 0

    def refuse_new(self, refusing: bool = True) -> None:
        """The node refuses new calls (its drain) or takes them again: the UDP reader threads
        (udp_thread.py) answer no INVITE meanwhile, so a 503 goes out alone."""
        for transport in self._udp.values():
            if isinstance(transport, ThreadedUdp):
                transport.refuse_new(refusing)

    async def close(self) -> None:
        self._timer.cancel()
        for transport in self._udp.values():
            transport.close()
        self._udp_out = None
        for server in self._servers:
            server.close()
        for task in list(self._dial_tasks):
            task.cancel()
        for connection in list(self.connections.values()):
            if connection.transport is not None:
                connection.transport.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    # -- the loop between network, endpoint and application ------------------------------

    def receive(self, data: bytes, peer: Peer, trying_sent: bool = False) -> None:
        """One message in; `trying_sent`: a 100 Trying for it went out already (udp_thread.py)."""
        if self.traces is not None:
            self.traces.record(
                data,
                self.wall_clock(),
                outgoing=False,
                transport=peer.transport,
                local=self._local_udp if peer.transport == "udp" else self._local(peer),
                remote=peer.address,
            )
        now = self._now = self.now()
        try:
            self.endpoint.receive(data, peer, now, trying_sent)
            self._flush()
        finally:
            self._now = -1.0

    def connection_lost(self, peer: Peer) -> None:
        self.endpoint.transport_error(peer, self.now())
        self._flush()

    def stats_error(self, name: str) -> None:
        self.endpoint.stats[name] += 1

    def _flush(self) -> None:
        """Transmit, deliver events (which may produce more to transmit), re-arm the timer.
        The application may flush again while it handles an event (`after_application`):
        only the outermost flush re-arms, once everything is done."""
        self._flushing += 1
        try:
            while True:
                for data, peer in self.endpoint.outgoing():
                    self._transmit(data, peer)
                event = self.endpoint.next_event()
                if event is None:
                    break
                try:
                    self.application(self, event)
                except Exception:
                    log.exception("SIP application failed on %s", type(event).__name__)
        finally:
            self._flushing -= 1
        if not self._flushing:
            self._arm_timer()
            for flushed in self.on_flushed:
                flushed()

    def after_application(self) -> None:
        """Call after the application acted outside an event (e.g. a call answered later)."""
        self._flush()

    def hold_flushes(self) -> None:
        """The messages received until `release_flushes` are one batch (a drain of a reader
        thread's queue): the timers are re-armed and `on_flushed` runs once, at its end."""
        self._flushing += 1

    def release_flushes(self) -> None:
        self._flushing -= 1
        self._flush()

    def _local(self, peer: Peer) -> tuple[str, int]:
        """Our address for a message to or from `peer` (for its trace)."""
        if peer.transport == "udp":
            return self._local_udp
        if peer.connection is None:
            stream = self.dialled.get(peer)
        else:
            stream = self.connections.get(peer.connection)
        if stream is not None and stream.local is not None:
            return stream.local
        return self._local_stream.get(peer.transport, self._local_udp)

    def _trace_out(self, data: bytes, peer: Peer) -> None:
        if self.traces is not None:
            self.traces.record(
                data,
                self.wall_clock(),
                outgoing=True,
                transport=peer.transport,
                local=self._local(peer),
                remote=peer.address,
            )

    def _transmit(self, data: bytes, peer: Peer) -> None:
        if peer.transport == "udp":
            transport = self._udp_out
            if transport is None:
                transport = self._udp_out = next(iter(self._udp.values()), None)
                if transport is None:
                    self.stats_error("no_udp_socket")
                    return
            address = peer.address
            if self.traces is not None:
                self.traces.record(
                    data,
                    self.wall_clock(),
                    outgoing=True,
                    transport="udp",
                    local=self._local_udp,
                    remote=address,
                )
            transport.sendto(data, address)
            return
        if peer.connection is None:
            # A request of ours to a trunk: over the connection we opened to it, or a new one.
            self._trace_out(data, peer)
            dialled = self.dialled.get(peer)
            if dialled is not None:
                dialled.write(data)
            else:
                self._dial(peer, data)
            return
        connection = self.connections.get(peer.connection)
        if connection is None:
            # The connection the request came on is gone (a response cannot follow it): count
            # and let the transaction time out.
            self.stats_error("send_no_connection")
            return
        self._trace_out(data, peer)
        connection.write(data)

    def _dial(self, peer: Peer, data: bytes) -> None:
        queued = self._dialling.get(peer)
        if queued is not None:
            if len(queued) >= MAX_QUEUED_WHILE_CONNECTING:
                self.stats_error("send_queue_full")
                return
            queued.append(data)
            return
        self._dialling[peer] = [data]
        task = asyncio.get_running_loop().create_task(self._connect(peer))
        self._dial_tasks.add(task)
        task.add_done_callback(self._dial_tasks.discard)

    async def _connect(self, peer: Peer) -> None:
        """Open a TCP/TLS connection to a trunk; on failure its transactions fail at once."""
        assert self._loop is not None
        tls = peer.transport == "tls"
        try:
            _, protocol = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: _Stream(self, peer.transport),
                    peer.host,
                    peer.port,
                    ssl=self.client_tls() if tls else None,
                    server_hostname=peer.host if tls else None,
                ),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError, ssl.SSLError) as err:
            self._dialling.pop(peer, None)
            self.stats_error("connect_failed")
            log.info("SIP %s to %s:%d: %s", peer.transport, peer.host, peer.port, err)
            self.endpoint.transport_error(peer, self.now())
            self._flush()
            return
        stream = protocol
        if stream.transport is None or stream.transport.is_closing():
            self._dialling.pop(peer, None)
            self.endpoint.transport_error(peer, self.now())
            self._flush()
            return
        stream.dialled = peer
        self.dialled[peer] = stream
        for data in self._dialling.pop(peer, []):
            stream.write(data)

    def dialled_lost(self, peer: Peer, stream: _Stream) -> None:
        """A connection we opened closed: the next request to that trunk opens another."""
        if self.dialled.get(peer) is stream:
            del self.dialled[peer]
        self.endpoint.transport_error(peer, self.now())
        self._flush()

    def _arm_timer(self) -> None:
        self._timer.arm(self.endpoint.get_timer())

    def _on_timer(self) -> None:
        self.endpoint.handle_timer(self.now())
        self._flush()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
