"""sip/pcap.py: capture files that read back (tests/pcap_reader.py checks lengths and checksums)
and, when `tshark` is installed, that Wireshark's dissectors read as SIP."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sipbridge.sip.pcap import MAX_SEGMENT, Packet, write_pcap
from tests.pcap_reader import read_pcap

INVITE = (
    b"INVITE sip:100@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-1\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=a\r\nTo: <sip:100@127.0.0.1>\r\n"
    b"Call-ID: pcap-1@127.0.0.1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
)
OK = (
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-1\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=a\r\nTo: <sip:100@127.0.0.1>;tag=b\r\n"
    b"Call-ID: pcap-1@127.0.0.1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
)
T0 = 1_765_000_000.25


def test_empty_capture_is_the_global_header() -> None:
    data = write_pcap([])
    assert len(data) == 24
    assert read_pcap(data) == []


def test_udp_ipv4_reads_back_with_times_ports_and_checksums() -> None:
    packets = [
        Packet(T0, "udp", ("127.0.0.1", 5062), ("127.0.0.1", 5060), INVITE),
        Packet(T0 + 0.0123, "udp", ("127.0.0.1", 5060), ("127.0.0.1", 5062), OK),
    ]
    read = read_pcap(write_pcap(packets))
    assert [(p.protocol, p.source, p.destination, p.payload) for p in read] == [
        ("udp", ("127.0.0.1", 5062), ("127.0.0.1", 5060), INVITE),
        ("udp", ("127.0.0.1", 5060), ("127.0.0.1", 5062), OK),
    ]
    assert read[0].time == pytest.approx(T0, abs=1e-6)
    assert read[1].time - read[0].time == pytest.approx(0.0123, abs=2e-6)


def test_ipv6_and_odd_lengths() -> None:
    odd = INVITE + b"x"
    read = read_pcap(write_pcap([Packet(T0, "udp", ("::1", 5062), ("2001:db8::5", 5060), odd)]))
    assert read[0].source == ("::1", 5062)
    assert read[0].destination == ("2001:db8::5", 5060)
    assert read[0].payload == odd


def test_mixed_versions_and_host_names_still_make_packets() -> None:
    read = read_pcap(
        write_pcap(
            [
                Packet(T0, "udp", ("192.0.2.1", 5060), ("2001:db8::5", 5060), INVITE),
                Packet(T0, "udp", ("sip.example.com", 5060), ("192.0.2.9", 5060), INVITE),
                Packet(T0, "udp", ("a.example", 5060), ("b.example", 5060), INVITE),
            ]
        )
    )
    assert read[0].source == ("::ffff:c000:201", 5060)  # IPv4-mapped (RFC 4291)
    assert read[1].source == ("0.0.0.0", 5060)
    assert read[2].destination == ("0.0.0.0", 5060)


def test_tcp_streams_number_their_bytes_per_direction() -> None:
    a, b = ("127.0.0.1", 40000), ("127.0.0.1", 5060)
    read = read_pcap(
        write_pcap(
            [
                Packet(T0, "tcp", a, b, INVITE),
                Packet(T0, "tcp", b, a, OK),
                Packet(T0, "tcp", a, b, INVITE),
            ]
        )
    )
    assert [(p.seq, p.ack) for p in read] == [
        (1, 1),
        (1, 1 + len(INVITE)),
        (1 + len(INVITE), 1 + len(OK)),
    ]


def test_a_large_tcp_message_is_split_into_segments() -> None:
    body = INVITE + b"v" * (MAX_SEGMENT + 10)
    read = read_pcap(write_pcap([Packet(T0, "tls", ("::1", 1), ("::1", 5061), body)]))
    assert [len(p.payload) for p in read] == [MAX_SEGMENT, len(body) - MAX_SEGMENT]
    assert b"".join(p.payload for p in read) == body
    assert read[1].seq == 1 + MAX_SEGMENT


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_dissects_every_message_as_sip(tmp_path: Path) -> None:
    path = tmp_path / "call.pcap"
    path.write_bytes(
        write_pcap(
            [
                Packet(T0, "udp", ("127.0.0.1", 5062), ("127.0.0.1", 5060), INVITE),
                Packet(T0 + 0.01, "udp", ("127.0.0.1", 5060), ("127.0.0.1", 5062), OK),
                Packet(T0 + 0.02, "tcp", ("::1", 40000), ("::1", 5060), INVITE),
                Packet(T0 + 0.03, "tcp", ("::1", 5060), ("::1", 40000), OK),
                Packet(T0 + 0.04, "tls", ("::1", 40001), ("::1", 5061), INVITE),
                Packet(T0 + 0.05, "tls", ("::1", 5061), ("::1", 40001), OK),
            ]
        )
    )
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "sip", "-T", "fields", "-e", "sip.Method",
         "-e", "sip.Status-Code", "-e", "sip.Call-ID"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[:2] for r in rows] == [["INVITE", ""], ["", "200"]] * 3
    assert {r[2] for r in rows} == {"pcap-1@127.0.0.1"}


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_reads_rtp_headers_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "rtp.pcap"
    header = bytes.fromhex("80000001000000a0deadbeef")
    packets = [
        Packet(T0 + i * 0.02, "udp", ("127.0.0.1", 10000), ("127.0.0.1", 40000), header, 172)
        for i in range(3)
    ]
    path.write_bytes(write_pcap(packets))
    out = subprocess.run(
        ["tshark", "-r", str(path), "-d", "udp.port==10000,rtp", "-T", "fields",
         "-e", "frame.len", "-e", "frame.cap_len", "-e", "rtp.ssrc", "-e", "rtp.p_type"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert out.splitlines() == ["200\t40\t0xdeadbeef\t0"] * 3


def test_a_packet_cut_short_keeps_its_whole_length_in_the_headers() -> None:
    header = bytes.fromhex("80000001000000a0deadbeef")  # RTP: PT 0, seq 1, ts 160
    packets = [
        Packet(T0, "udp", ("127.0.0.1", 10000), ("127.0.0.1", 40000), header, 172),
        Packet(T0, "udp", ("::1", 10000), ("::1", 40000), header, original_length=172),
        Packet(T0, "udp", ("::1", 10000), ("::1", 40000), header, original_length=12),  # whole
    ]
    read = read_pcap(write_pcap(packets))
    assert [(p.payload, p.original_length) for p in read] == [
        (header, 172),
        (header, 172),
        (header, 0),
    ]
