"""A libpcap file from captured messages: bytes in, bytes out, no I/O.

The trace keeps each SIP message as the bytes that crossed the socket, with its addresses; a
capture file wraps each in IP and UDP or TCP headers synthesised here, so that Wireshark and
`tshark` dissect it as if it had been captured on the wire.

Format (https://wiki.wireshark.org/Development/LibpcapFileFormat, and the IETF draft
draft-ietf-opsawg-pcap): a 24-byte global header (magic 0xA1B2C3D4 for microsecond time
stamps, version 2.4, snap length, link type), then per packet a 16-byte record header (seconds,
microseconds, captured length, original length) and the packet. The link type is
LINKTYPE_RAW (101): each packet starts with its IPv4 or IPv6 header, no Ethernet framing.

- UDP (RFC 768) as it went: one datagram per message.
- TCP and TLS (RFC 9293): messages sent over a stream become a synthetic stream per direction,
  sequence numbers counting the bytes sent so far, acknowledging what the other side sent,
  segments of at most `MAX_SEGMENT` bytes. There is no handshake: Wireshark follows a stream
  caught in the middle. Messages that went over TLS are written decrypted, as the bytes of the
  TCP stream they were in, on their real ports (Wireshark's SIP heuristics find the plain
  text on the TLS port 5061 too).
- Checksums are computed (RFC 1071), so no dissector flags the packets as damaged.
- A packet kept cut short (an RTP header without its payload: `original_length` more than the
  bytes given) is written as a capture cut at the snap length is: the headers give the whole
  length, the record's captured length is what there is, and the UDP checksum is 0 ("none").
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

LINKTYPE_RAW = 101
MAGIC_MICROSECONDS = 0xA1B2C3D4
SNAPLEN = 262_144
MAX_SEGMENT = 65_000  # TCP payload per packet: fits the IPv4 and IPv6 16-bit length fields
MAX_DATAGRAM = 65_507  # a UDP payload that fits an IPv4 packet (65535 - 20 - 8)
TCP_PSH_ACK = 0x18
TTL = 64
PROTO_TCP = 6
PROTO_UDP = 17

_GLOBAL_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_TCP = struct.Struct("!HHIIBBHHH")


@dataclass(frozen=True, slots=True)
class Packet:
    """One message as it crossed a socket: `transport` is udp, tcp or tls (written as TCP)."""

    time: float  # seconds since the epoch
    transport: str
    source: tuple[str, int]
    destination: tuple[str, int]
    payload: bytes
    original_length: int = 0  # of the payload on the wire, when more than `payload` kept


def write_pcap(packets: Iterable[Packet]) -> bytes:
    """A complete libpcap file holding `packets` in the order given."""
    out = bytearray(_GLOBAL_HEADER.pack(MAGIC_MICROSECONDS, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW))
    # the next sequence number of each direction of each synthetic stream
    sequence: dict[tuple[str, tuple[str, int], tuple[str, int]], int] = {}
    for packet in packets:
        source, destination = _addresses(packet.source[0], packet.destination[0])
        if packet.transport == "udp":
            frames = [_udp(packet, source, destination)]
        else:
            frames = [(frame, 0) for frame in _tcp(packet, source, destination, sequence)]
        seconds = int(packet.time)
        micros = min(999_999, max(0, round((packet.time - seconds) * 1_000_000)))
        for frame, missing in frames:
            out += _RECORD_HEADER.pack(seconds, micros, len(frame), len(frame) + missing)
            out += frame
    return bytes(out)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _addresses(source: str, destination: str) -> tuple[Address, Address]:
    """Both ends in one IP version. An end that is no address (a host name) becomes the
    unspecified address of its peer's version; with one end IPv4 and the other IPv6, the IPv4
    one is written IPv4-mapped (RFC 4291 s2.5.5.2), as a dual-stack socket reports it."""
    a, b = _parse(source), _parse(destination)
    if a is None:
        a = _unspecified(b.version if b is not None else 4)
    if b is None:
        b = _unspecified(a.version)
    if a.version != b.version:
        a, b = _as_ipv6(a), _as_ipv6(b)
    return a, b


def _as_ipv6(address: Address) -> Address:
    if address.version == 6:
        return address
    return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + address.packed)


def _parse(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _unspecified(version: int) -> Address:
    return ipaddress.IPv4Address(0) if version == 4 else ipaddress.IPv6Address(0)


def _udp(packet: Packet, source: Address, destination: Address) -> tuple[bytes, int]:
    """The IP packet as captured, and how many bytes of it were not kept."""
    payload = packet.payload[:MAX_DATAGRAM]
    missing = max(0, min(packet.original_length, MAX_DATAGRAM) - len(payload))
    length = _UDP.size + len(payload) + missing
    header = _UDP.pack(packet.source[1], packet.destination[1], length, 0)
    if not missing:
        pseudo = _pseudo_header(source, destination, PROTO_UDP, length)
        checksum = _checksum(pseudo + header + payload)
        header = _UDP.pack(packet.source[1], packet.destination[1], length, checksum or 0xFFFF)
    return _ip(source, destination, PROTO_UDP, header + payload, missing), missing


def _tcp(
    packet: Packet,
    source: Address,
    destination: Address,
    sequence: dict[tuple[str, tuple[str, int], tuple[str, int]], int],
) -> list[bytes]:
    forward = (packet.transport, packet.source, packet.destination)
    backward = (packet.transport, packet.destination, packet.source)
    frames = []
    for start in range(0, max(1, len(packet.payload)), MAX_SEGMENT):
        chunk = packet.payload[start : start + MAX_SEGMENT]
        seq = sequence.get(forward, 1)
        ack = sequence.get(backward, 1)
        sequence[forward] = (seq + len(chunk)) & 0xFFFFFFFF
        fields = [packet.source[1], packet.destination[1], seq, ack, 5 << 4, TCP_PSH_ACK, 65535]
        header = _TCP.pack(*fields, 0, 0)
        length = len(header) + len(chunk)
        checksum = _checksum(
            _pseudo_header(source, destination, PROTO_TCP, length) + header + chunk
        )
        frames.append(_ip(source, destination, PROTO_TCP, _TCP.pack(*fields, checksum, 0) + chunk))
    return frames


def _ip(
    source: Address, destination: Address, protocol: int, payload: bytes, missing: int = 0
) -> bytes:
    """`payload` behind an IP header whose length counts `missing` bytes more."""
    if source.version == 4:
        total = _IPV4.size + len(payload) + missing
        fields = (0x45, 0, total, 0, 0x4000, TTL, protocol)  # DF set, no fragments
        header = _IPV4.pack(*fields, 0, source.packed, destination.packed)
        checksum = _checksum(header)
        return _IPV4.pack(*fields, checksum, source.packed, destination.packed) + payload
    length = len(payload) + missing
    header = _IPV6.pack(6 << 28, length, protocol, TTL, source.packed, destination.packed)
    return header + payload


def _pseudo_header(source: Address, destination: Address, protocol: int, length: int) -> bytes:
    """The addresses the UDP and TCP checksums cover (RFC 768; RFC 8200 s8.1 for IPv6)."""
    if source.version == 4:
        return source.packed + destination.packed + struct.pack("!BBH", 0, protocol, length)
    return source.packed + destination.packed + struct.pack("!IxxxB", length, protocol)


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): the ones' complement of the ones' complement sum of
    16-bit words. 65536 = 1 (mod 65535), so that sum is the big-endian integer mod 65535: one
    C-speed operation instead of a Python loop over the words."""
    if len(data) % 2:
        data += b"\x00"
    total = int.from_bytes(data, "big") % 0xFFFF
    return ~total & 0xFFFF
