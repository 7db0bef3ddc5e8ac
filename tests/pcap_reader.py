"""A small libpcap reader for the tests: the file read back into packets, with every length and
checksum checked, so a test of the writer does not test it against itself."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class ReadPacket:
    time: float
    protocol: str  # udp, tcp
    source: tuple[str, int]
    destination: tuple[str, int]
    payload: bytes
    seq: int = 0
    ack: int = 0
    original_length: int = 0  # of the payload on the wire, when the capture was cut short


def _ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):  # word by word, unlike the writer
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def read_pcap(data: bytes) -> list[ReadPacket]:
    magic, major, minor, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 101)
    offset = 24
    packets = []
    while offset < len(data):
        seconds, micros, captured, original = struct.unpack_from("<IIII", data, offset)
        offset += 16
        assert captured <= original and captured <= snaplen
        missing = original - captured  # a packet cut short: its headers count the whole
        frame = data[offset : offset + captured]
        assert len(frame) == captured
        offset += captured
        version = frame[0] >> 4
        if version == 4:
            header_length = (frame[0] & 0x0F) * 4
            total, protocol = struct.unpack_from("!H", frame, 2)[0], frame[9]
            assert total == len(frame) + missing
            assert _ones_complement_sum(frame[:header_length]) == 0xFFFF, "IPv4 checksum"
            source, destination = frame[12:16], frame[16:20]
            pseudo = source + destination + struct.pack("!BBH", 0, protocol, total - header_length)
        else:
            assert version == 6
            length, protocol = struct.unpack_from("!HB", frame, 4)
            header_length = 40
            assert length + 40 == len(frame) + missing
            source, destination = frame[8:24], frame[24:40]
            pseudo = source + destination + struct.pack("!IxxxB", length, protocol)
        segment = frame[header_length:]
        if not missing:
            assert _ones_complement_sum(pseudo + segment) == 0xFFFF, "transport checksum"
        src = str(ipaddress.ip_address(source))
        dst = str(ipaddress.ip_address(destination))
        when = seconds + micros / 1e6
        if protocol == 17:
            sport, dport, length, checksum = struct.unpack_from("!HHHH", segment)
            assert length == len(segment) + missing
            assert checksum != 0 or missing, "a whole datagram has its checksum"
            packets.append(
                ReadPacket(
                    when, "udp", (src, sport), (dst, dport), segment[8:],
                    original_length=length - 8 if missing else 0,
                )
            )  # fmt: skip
        else:
            assert protocol == 6
            sport, dport, seq, ack, offset_byte, flags = struct.unpack_from("!HHIIBB", segment)
            assert flags == 0x18
            start = (offset_byte >> 4) * 4
            packets.append(
                ReadPacket(when, "tcp", (src, sport), (dst, dport), segment[start:], seq, ack)
            )
    return packets
