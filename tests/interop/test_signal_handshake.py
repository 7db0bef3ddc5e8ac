"""A join's WebSocket handshake response (`101 Switching Protocols`) and its join response reach
the client in one TCP segment (issue 18: one transmit instead of two per join, server/rtc/
writer.py), and the client reads both as ever. A raw TCP client speaks the handshake as the
official SDK opens `/rtc/v1` (token in the Authorization header, gzipped join request in the
query) against a real `sipbridge serve`, and counts the data segments its socket received
(Linux `TCP_INFO`)."""

from __future__ import annotations

import base64
import os
import socket
import struct
import sys
import time

import pytest
from livekit.protocol import rtc

from tests.helpers import ServerProcess
from tests.signal_client import join_query, join_token

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO and TCP_CORK: Linux")

# struct tcp_info (include/uapi/linux/tcp.h): __u32 tcpi_data_segs_in, the segments received
# that carried data (Linux 4.6+), after 8 bytes of __u8 fields, 24 __u32, 4 __u64 and 4 __u32
DATA_SEGS_IN = struct.Struct("=I")
DATA_SEGS_IN_OFFSET = 8 + 24 * 4 + 4 * 8 + 4 * 4
TCP_INFO_SIZE = 232


def data_segments_received(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    if len(info) < DATA_SEGS_IN_OFFSET + 4:
        pytest.skip("this kernel's tcp_info has no tcpi_data_segs_in")
    return int(DATA_SEGS_IN.unpack_from(info, DATA_SEGS_IN_OFFSET)[0])


def handshake(host: str, port: int, room: str, identity: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /rtc/v1?join_request={join_query()} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {join_token(room, identity)}\r\n"
        "\r\n"
    ).encode()


def first_frame(data: bytes) -> bytes | None:
    """The payload of the first (unmasked, server) frame at the start of `data`, if whole."""
    if len(data) < 2:
        return None
    n, at = data[1] & 0x7F, 2
    if n == 126:
        if len(data) < 4:
            return None
        n, at = struct.unpack_from("!H", data, 2)[0], 4
    elif n == 127:
        if len(data) < 10:
            return None
        n, at = struct.unpack_from("!Q", data, 2)[0], 10
    return data[at : at + n] if len(data) >= at + n else None


def test_handshake_and_join_response_arrive_in_one_segment(server: ServerProcess) -> None:
    host, port = server.http_host, server.port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(handshake(host, port, "one-segment", "agent"))
        received = b""
        join: bytes | None = None
        deadline = time.monotonic() + 10
        while join is None:  # (blocking reads, bounded by the socket's timeout and deadline)
            assert time.monotonic() < deadline, received[:200]
            chunk = sock.recv(65536)
            assert chunk, received[:200]
            received += chunk
            head, sep, rest = received.partition(b"\r\n\r\n")
            if sep:
                assert head.startswith(b"HTTP/1.1 101 "), head
                join = first_frame(rest)
        response = rtc.SignalResponse.FromString(join)
        assert response.WhichOneof("message") == "join"
        assert response.join.room.name == "one-segment"
        assert response.join.participant.identity == "agent"
        assert data_segments_received(sock) == 1
