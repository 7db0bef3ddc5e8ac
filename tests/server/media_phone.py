"""A phone on a loopback UDP socket for in-process tests of the media edge (server/media_service).

`FakePhone` binds 127.0.0.1:0 (and the port above for RTCP when asked), writes its offer with
`sdp.make_offer`, reads the answer for the server's address and payload types, sends RTP built
with `RtpPacket` (optionally SRTP-protected) and receives with bounded waits only: every
receive is an `asyncio.wait_for` of at most the given timeout, every collection a fixed window.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import Sequence

from sipbridge import sdp
from sipbridge.media.rtp import RtcpPacket, RtpPacket, is_rtcp, parse_rtcp, parse_rtp
from sipbridge.media.srtp import SrtpContext

HOST = "127.0.0.1"
RECV_SIZE = 4096


def _udp_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise
    return sock


def _socket_pair() -> tuple[socket.socket, socket.socket]:
    """An RTP socket and an RTCP socket on the port above it (RFC 3550 s11)."""
    for _ in range(50):
        rtp = _udp_socket()
        try:
            rtcp = _udp_socket(rtp.getsockname()[1] + 1)
        except OSError:
            rtp.close()
            continue
        return rtp, rtcp
    raise OSError("no free pair of adjacent UDP ports")


class FakePhone:
    """One SIP phone's media: an RTP socket, its offer, and the stream it sends."""

    def __init__(self, *, rtcp_socket: bool = False) -> None:
        if rtcp_socket:
            self.sock, rtcp = _socket_pair()
            self.rtcp_sock: socket.socket | None = rtcp
        else:
            self.sock, self.rtcp_sock = _udp_socket(), None
        self.port: int = self.sock.getsockname()[1]
        self.ssrc = secrets.randbits(32)
        self.sequence = secrets.randbits(16)
        self.timestamp = secrets.randbits(32)
        self.session_id = secrets.randbelow(2**31)
        self.version = 0
        self.answer: sdp.SessionDescription | None = None
        self.server: tuple[str, int] = ("", 0)
        self.srtp: SrtpContext | None = None

    # -- SDP ----------------------------------------------------------------------------------

    def offer(
        self,
        codecs: Sequence[sdp.Codec] = (sdp.PCMU, sdp.TELEPHONE_EVENT),
        *,
        direction: sdp.Direction = sdp.Direction.SENDRECV,
        ptime: int | None = 20,
        proto: str = "RTP/AVP",
        crypto: Sequence[sdp.CryptoAttribute] = (),
        rtcp_mux: bool = True,
    ) -> bytes:
        """The next offer of this phone's session (its version one higher each time)."""
        self.version += 1
        return sdp.serialize_sdp(
            sdp.make_offer(
                codecs,
                address=HOST,
                port=self.port,
                session_id=self.session_id,
                session_version=self.version,
                ptime=ptime,
                direction=direction,
                proto=proto,
                crypto=crypto,
                rtcp_mux=rtcp_mux,
            )
        )

    def accept(self, answer: bytes) -> sdp.SessionDescription:
        """Take the server's answer: where to send RTP from now on."""
        parsed = sdp.parse_sdp(answer)
        media = parsed.media[0]
        connection = parsed.connection_for(media)
        assert connection is not None
        self.answer = parsed
        self.server = (connection.host, media.port)
        return parsed

    @property
    def payload_types(self) -> dict[str, int]:
        """Encoding name (lower case) -> payload type, as answered."""
        assert self.answer is not None
        return {p.codec.name.lower(): p.payload_type for p in self.answer.media[0].payload_formats}

    # -- sending ------------------------------------------------------------------------------

    def send(self, data: bytes, destination: tuple[str, int] | None = None) -> None:
        self.sock.sendto(data, destination or self.server)

    def packet(
        self,
        payload: bytes,
        *,
        payload_type: int = 0,
        samples: int = 160,
        marker: bool = False,
        timestamp: int | None = None,
    ) -> RtpPacket:
        """The next packet of this phone's stream; sequence and timestamp move on."""
        packet = RtpPacket(
            payload_type=payload_type,
            sequence_number=self.sequence,
            timestamp=self.timestamp if timestamp is None else timestamp,
            ssrc=self.ssrc,
            payload=payload,
            marker=marker,
        )
        self.sequence = (self.sequence + 1) % (1 << 16)
        if timestamp is None:
            self.timestamp = (self.timestamp + samples) % (1 << 32)
        return packet

    def send_rtp(
        self,
        payload: bytes,
        *,
        payload_type: int = 0,
        samples: int = 160,
        marker: bool = False,
        timestamp: int | None = None,
    ) -> RtpPacket:
        """Build, protect when SRTP is on, and send the next packet; returns it (plain)."""
        packet = self.packet(
            payload,
            payload_type=payload_type,
            samples=samples,
            marker=marker,
            timestamp=timestamp,
        )
        data = packet.serialize()
        if self.srtp is not None:
            data = self.srtp.protect(data)
        self.send(data)
        return packet

    def new_source(self) -> None:
        """A new SSRC with fresh sequence numbers and timestamps (RFC 3550 s8.2)."""
        self.ssrc = secrets.randbits(32)
        self.sequence = secrets.randbits(16)
        self.timestamp = secrets.randbits(32)

    # -- receiving ----------------------------------------------------------------------------

    async def recv(
        self, timeout: float = 1.0, sock: socket.socket | None = None
    ) -> tuple[bytes, float]:
        """The next datagram and when it arrived (loop time); TimeoutError after `timeout`."""
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(sock or self.sock, RECV_SIZE), timeout)
        return data, loop.time()

    def _plain(self, data: bytes) -> bytes:
        return self.srtp.unprotect(data) if self.srtp is not None else data

    async def recv_rtp(self, timeout: float = 1.0) -> RtpPacket:
        """The next RTP packet (RTCP on a muxed port is skipped), unprotected when SRTP."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            data, _ = await self.recv(max(deadline - loop.time(), 0.001))
            if not is_rtcp(data):
                return parse_rtp(self._plain(data))

    async def recv_rtcp(self, timeout: float = 1.0) -> list[RtcpPacket]:
        """The next RTCP compound: on the RTCP socket when there is one, else muxed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            data, _ = await self.recv(max(deadline - loop.time(), 0.001), self.rtcp_sock)
            if is_rtcp(data):
                if self.srtp is not None:
                    data = self.srtp.unprotect_rtcp(data)
                return parse_rtcp(data)

    async def collect(
        self, duration: float, *, payload_type: int | None = None
    ) -> list[tuple[RtpPacket, float]]:
        """Every RTP packet (of `payload_type` when given) arriving within `duration` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration
        found: list[tuple[RtpPacket, float]] = []
        while (left := deadline - loop.time()) > 0:
            try:
                data, at = await self.recv(left)
            except TimeoutError:
                break
            if is_rtcp(data):
                continue
            packet = parse_rtp(self._plain(data))
            if payload_type is None or packet.payload_type == payload_type:
                found.append((packet, at))
        return found

    def drain(self) -> int:
        """Drop whatever is queued on the RTP socket; how many datagrams that was."""
        count = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(RECV_SIZE)
                count += 1
        return count

    def close(self) -> None:
        self.sock.close()
        if self.rtcp_sock is not None:
            self.rtcp_sock.close()
