"""The relay's fast path (`media/relay.py`) against the full path (`RtpLeg.receive`).

Two identical bridges of two legs are fed the same datagrams - ordinary audio both ways, loss,
reordering, a duplicate, a sequence wrap, DTMF, RTCP, padding, CSRCs, a new SSRC, a stranger -
one through `RtpLeg.receive` only, the other through `relay_datagram` first (falling back to
`receive` when it declines, as the server's socket driver does). What leaves each bridge, byte
for byte, and every counter, statistic, report and audio level must be the same; and the fast
path must have taken the ordinary packets, or there is nothing to compare.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sipbridge.media import codecs
from sipbridge.media.leg import RtpLeg, StreamConfig
from sipbridge.media.relay import relay_datagram
from sipbridge.media.room_audio import RoomAudio
from sipbridge.media.rtp import RtpPacket, parse_rtp

PHONE_A = ("192.0.2.10", 4000)
PHONE_B = ("192.0.2.20", 5000)
STRANGER = ("198.51.100.7", 4000)
FRAME = 160


def _fields(stats: object) -> dict[str, Any]:
    """A dataclass's fields as a dict (compiled classes have no `__dict__` for `vars`)."""
    return {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.rooms: set[RoomAudio] = set()

    def add(self, room: RoomAudio) -> None:
        self.rooms.add(room)

    def discard(self, room: RoomAudio) -> None:
        self.rooms.discard(room)


class Bridge:
    """Two legs in a room, their output collected as (leg, bytes, destination)."""

    def __init__(self, fast: bool) -> None:
        self.fast = fast
        self.out: list[tuple[str, bytes, tuple[str, int]]] = []
        self.taken = 0
        self.a = self._leg("a", PHONE_A, 0xAAAA, 1000, 777_000)
        self.b = self._leg("b", PHONE_B, 0xBBBB, 65530, 4_294_967_000)  # both wrap soon
        self.room = RoomAudio("room", Clock())
        self.room.add(self.a)
        self.room.add(self.b)

    def _leg(self, name: str, remote: tuple[str, int], ssrc: int, seq: int, ts: int) -> RtpLeg:
        leg = RtpLeg(
            codecs.PCMU_SPEC,
            StreamConfig(audio_pt=0, event_pt=101, remote=remote),
            ssrc=ssrc,
            cname=name,
        )
        leg.sender._sequence = seq
        leg.sender._timestamp = ts
        leg.timeline.last = ts

        def sink(data: bytes | memoryview, destination: tuple[str, int]) -> None:
            self.out.append((name, bytes(data), destination))

        leg.rtp_sink = sink
        if self.fast:
            leg.relay_sink = sink
        return leg

    def feed(self, to: str, data: bytes, source: tuple[str, int], now: float) -> None:
        leg = self.a if to == "a" else self.b
        if self.fast:
            buffer = bytearray(2048)
            buffer[: len(data)] = data
            if relay_datagram(leg, buffer, memoryview(buffer)[: len(data)], source, now):
                self.taken += 1
                return
        leg.receive(data, source, now)

    def state(self, *, reading: bool = True) -> dict[str, Any]:
        """Everything the legs keep; `reading` also takes what reading changes (reports, levels)."""
        found: dict[str, Any] = {}
        for name, leg in (("a", self.a), ("b", self.b)):
            receiver = leg.receiver
            found[name] = {
                "stats": _fields(leg.stats),
                "receiver": receiver.stats,
                "jitter": receiver._jitter,
                "report": receiver.report_block(10.0) if reading else None,
                "sender": (
                    leg.sender.sequence_number,
                    leg.sender.timestamp,
                    leg.sender.packets_sent,
                    leg.sender.octets_sent,
                ),
                "timeline": (leg.timeline.last, leg.timeline.last_at),
                "latch": (leg.latch.latched, leg.latch._last_seen, leg.latch.refused),
                "last_packet_at": leg.last_packet_at,
                "levels": leg.levels.read() if reading else len(leg.levels._payloads),
                "events": list(leg._events),
                "sent_since_report": leg._sent_since_report,
            }
        return found


def rtp(
    seq: int,
    ts: int,
    ssrc: int,
    payload: bytes,
    *,
    pt: int = 0,
    marker: bool = False,
    **fields: Any,
) -> bytes:
    return RtpPacket(
        payload_type=pt,
        sequence_number=seq % 65536,
        timestamp=ts % 2**32,
        ssrc=ssrc,
        payload=payload,
        marker=marker,
        **fields,
    ).serialize()


def script() -> list[tuple[str, bytes, tuple[str, int], float]]:
    """(to leg, datagram, source, arrival) of a call with everything an RTP path meets."""
    steps: list[tuple[str, bytes, tuple[str, int], float]] = []
    now = 0.0
    seq_a, ts_a, seq_b, ts_b = 65500, 2**32 - 40 * FRAME, 10, 0
    for i in range(120):
        now += 0.02 + (0.003 if i % 7 == 0 else 0.0)  # some arrival jitter
        payload = bytes((i * 7 + k) % 256 for k in range(FRAME))
        skip = i in (30, 31)  # two packets lost from A
        if not skip:
            steps.append(("a", rtp(seq_a, ts_a, 0x1111, payload, marker=i == 0), PHONE_A, now))
        seq_a, ts_a = seq_a + 1, ts_a + FRAME
        steps.append(("b", rtp(seq_b, ts_b, 0x2222, payload[::-1]), PHONE_B, now + 0.001))
        seq_b, ts_b = seq_b + 1, ts_b + FRAME
        if i == 50:  # a duplicate and a late packet
            steps.append(("a", steps[-2][1], PHONE_A, now + 0.002))
            steps.append(("a", rtp(seq_a - 5, ts_a - 5 * FRAME, 0x1111, payload), PHONE_A, now))
        if i == 60:  # a DTMF event, RTCP (multiplexed), a stranger
            event = bytes([1, 0x0A, 0, 160])
            steps.append(("a", rtp(seq_a, ts_a, 0x1111, event, pt=101, marker=True), PHONE_A, now))
            seq_a += 1
            rr = bytes([0x80, 201, 0, 1]) + (0x1111).to_bytes(4, "big")
            steps.append(("a", rr, PHONE_A, now))
            steps.append(("a", rtp(9, 9, 0x9999, payload), STRANGER, now))
        if i == 70:  # padding and a CSRC: legal, not for the fast path
            steps.append(("b", rtp(seq_b, ts_b, 0x2222, payload, padding=4), PHONE_B, now))
            seq_b, ts_b = seq_b + 1, ts_b + FRAME
            steps.append(("b", rtp(seq_b, ts_b, 0x2222, payload, csrc=(7,)), PHONE_B, now))
            seq_b, ts_b = seq_b + 1, ts_b + FRAME
        if i == 90:  # B's phone restarts with a new SSRC (its probation, then a new mapping)
            seq_b, ts_b = 4000, 123_456
            steps[-1] = ("b", rtp(seq_b, ts_b, 0x3333, payload[::-1]), PHONE_B, now + 0.001)
            seq_b, ts_b = seq_b + 1, ts_b + FRAME
    for i, pt in enumerate((13, 96, 99)):  # comfort noise and unknown payload types
        steps.append(("a", rtp(seq_a + i, ts_a, 0x1111, b"\x40", pt=pt), PHONE_A, now))
    return steps


def test_the_fast_path_leaves_what_the_full_path_leaves() -> None:
    full, fast = Bridge(fast=False), Bridge(fast=True)
    for to, data, source, now in script():
        full.feed(to, data, source, now)
        fast.feed(to, data, source, now)
    assert fast.out == full.out
    assert fast.state() == full.state()
    # the ordinary packets took the fast path: most of the 240, not the oddities
    assert 200 <= fast.taken < len(script()) - 10
    forwarded = [parse_rtp(data) for leg, data, _ in full.out if leg == "b"]
    assert {p.ssrc for p in forwarded} == {0xBBBB}  # rewritten for the listener's stream
    assert forwarded[0].marker  # the stream's start


def test_the_fast_path_declines_what_it_does_not_relay() -> None:
    """Someone mixes, no sink, on hold, alone: the fast path changes nothing."""
    bridge = Bridge(fast=True)
    packets = [rtp(i, i * FRAME, 0x1111, bytes(FRAME)) for i in range(4)]
    for i, data in enumerate(packets[:3]):  # past probation and the first packet
        bridge.feed("a", data, PHONE_A, i * 0.02)
    assert bridge.taken == 1

    def declined() -> bool:
        before = bridge.state(reading=False)
        buffer = bytearray(packets[3])
        taken = relay_datagram(bridge.a, buffer, memoryview(buffer), PHONE_A, 0.08)
        return not taken and bridge.state(reading=False) == before and buffer == packets[3]

    bridge.a.buffered = True  # someone mixes it
    assert declined()
    bridge.a.buffered = False
    bridge.b.relay_sink = None  # a listener without a sink (a capture, a WebRTC peer)
    assert declined()
    bridge.b.relay_sink = bridge.a.relay_sink
    bridge.b.sending = False  # on hold
    assert declined()
    bridge.b.sending = True
    bridge.room.remove(bridge.b)  # alone in the room
    assert declined()


def test_a_send_that_fails_is_counted_and_the_relay_goes_on() -> None:
    bridge = Bridge(fast=True)

    def refusing(data: bytes | memoryview, destination: tuple[str, int]) -> None:
        raise BlockingIOError  # the socket's buffer is full

    bridge.b.relay_sink = refusing
    for i in range(5):
        bridge.feed("a", rtp(i, i * FRAME, 0x1111, bytes(FRAME)), PHONE_A, i * 0.02)
    assert bridge.taken == 3  # the first two: probation and the first packet
    assert bridge.b.relay_send_errors == 3
    assert bridge.b.stats.forwarded == 4  # as the full path counts a packet it could not send
