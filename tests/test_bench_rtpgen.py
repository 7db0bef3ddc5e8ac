"""bench/media.py's load generator: its RTP loop in C (bench/_rtpgen.c) counts what its Python loop
counts. The generator's figures are the media benchmark's evidence (issue 18), so they are
checked here against packets whose fate is known: streams sent straight between the phones'
own sockets (no relay: nothing may be lost, misrouted or reordered), and hand-made datagrams
that must land in the stray, misrouted and server-silence counters.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench import media, rtpgen

ROOT = Path(__file__).resolve().parent.parent


def generate(engine: str, calls: int = 40) -> dict[str, object]:
    cmd = [
        *(sys.executable, str(ROOT / "bench" / "media.py"), "--generator", "--direct"),
        *("--calls", str(calls), "--seconds", "1", "--warmup", "0.2", "--engine", engine),
    ]
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=120, cwd=ROOT).stdout
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("engine", ["c", "python"])
def test_direct_streams_arrive_whole_and_are_counted_once(engine: str) -> None:
    result = generate(engine)
    assert result["generator_engine"] == engine
    sent = result["packets_sent"]
    assert isinstance(sent, int) and sent >= 40 * 40  # 40 streams, 50 packets a second, 1 s
    assert result["packets_received"] == sent
    assert result["lost"] == 0
    for key in ("stray", "misrouted", "duplicates", "reordered", "seq_gaps", "send_errors"):
        assert result[key] == 0, key
    latency = result["latency_ms"]
    assert isinstance(latency, dict)
    assert latency["count"] == sent  # one latency per packet received in the window
    assert 0 <= latency["p50"] < 50


def test_the_c_loop_sorts_foreign_datagrams_as_the_python_loop_does() -> None:
    lib = rtpgen.load()
    assert lib is not None, rtpgen.why_not
    socks = [media._bind_udp(1 << 16) for _ in range(4)]  # phone 0: rtp, rtcp; phone 1: rtp, rtcp
    outsider = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    engine = rtpgen.Engine(lib, 2, 1, media.FRAME_NS)
    try:
        engine.phone(0, socks[0], socks[1], ssrc=1, seq=0, ts=0)
        engine.phone(1, socks[2], socks[3], ssrc=2, seq=0, ts=0)
        now_ns = time.time_ns()
        engine.window(now_ns - 10**9, now_ns + 60 * 10**9)
        to_phone_0 = socks[0].getsockname()

        def packet(src: int, counter: int, sent_at: int) -> bytes:
            return media.PACKET.pack(0x80, 0, counter, 0, 9, sent_at, src, counter) + media.FILL

        outsider.sendto(b"\x80\x00short", to_phone_0)  # stray: too short
        outsider.sendto(packet(7, 0, now_ns), to_phone_0)  # misrouted: not phone 0's partner
        silence = b"\x80\x00\x00\x01" + b"\x00" * 8 + b"\xff" * media.SAMPLES
        outsider.sendto(silence, to_phone_0)  # the server's own silence frame
        outsider.sendto(packet(1, 0, now_ns), to_phone_0)  # from the partner
        outsider.sendto(packet(1, 0, now_ns), to_phone_0)  # again: a duplicate
        outsider.sendto(b"rtcp", socks[1].getsockname())
        expected = {"stray": 1, "misrouted": 1, "server_silence": 1, "duplicates": 1}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            engine.run(time.monotonic_ns() + 20_000_000)
            seen = {name: engine.counter(name) for name in expected}
            if seen == expected and engine.figure(0, rtpgen.RTCP_IN) == 1:
                break
        assert {name: engine.counter(name) for name in expected} == expected
        assert engine.counter("window_received") == 1
        assert engine.figure(0, rtpgen.RECEIVED) == 1
        assert engine.figure(0, rtpgen.RTCP_IN) == 1
        assert len(engine.series(rtpgen.LATENCY)) == 1
        ((to, src, counter, seq, _after),) = engine.samples()
        assert (to, src, counter, seq) == (0, 7, 0, 0)
    finally:
        engine.close()
        outsider.close()
        for sock in socks:
            sock.close()


def test_the_c_loop_stamps_its_packets_as_the_python_loop_does() -> None:
    lib = rtpgen.load()
    assert lib is not None, rtpgen.why_not
    phone = [media._bind_udp(1 << 16) for _ in range(2)]
    listener = media._bind_udp(1 << 16)
    engine = rtpgen.Engine(lib, 2, 1, media.FRAME_NS)
    try:
        engine.phone(0, phone[0], phone[1], ssrc=0xDEADBEEF, seq=0xFFFF, ts=0xFFFFFFF0)
        engine.schedule_from(time.monotonic_ns())
        engine.stream(0, listener.getsockname(), time.monotonic_ns())
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            engine.run(time.monotonic_ns() + 25_000_000)
            try:
                got.append(listener.recv(2048))
            except BlockingIOError:
                continue
        assert len(got) == 2
        first, second = (media.PACKET.unpack_from(p) for p in got)
        assert all(len(p) == media.RTP_HEADER + media.SAMPLES for p in got)
        assert got[0][media.PACKET.size :] == media.FILL
        # V=2, PCMU with the marker on the first packet only, sequence and timestamp wrapping
        assert first[:5] == (0x80, 0x80, 0xFFFF, 0xFFFFFFF0, 0xDEADBEEF)
        assert second[:5] == (0x80, 0x00, 0x0000, 0x00000090, 0xDEADBEEF)
        assert first[6:] == (0, 0) and second[6:] == (0, 1)  # phone 0, counters 0 and 1
        assert 0 < second[5] - first[5] < 10**9  # CLOCK_REALTIME send stamps
    finally:
        engine.close()
        listener.close()
        for sock in phone:
            sock.close()
