"""Silence made by the tick's sender (`server/media/silence.py`, `_crelay.c` `SilentStream`):
the legs of a mixing room that hear nothing get, from the sender, the very datagrams the loop's
`RtpLeg.send_pcm(None)` makes - same bytes, same socket, same order - through late and skipped
ticks, digits, a player, a leg that closes in a tick; and the legs' objects read back (counters,
sequence numbers, timeline) are what the loop would have left (issue 18).

Real `MediaService`s and phones on loopback; the clock driven through `MediaClock.advance` on an
irregular but fixed schedule, so that a run with the sender and one without compare byte for
byte."""

from __future__ import annotations

import itertools
import socket

import numpy as np
import pytest

from sipbridge.media.rtp import parse_rtp
from sipbridge.server.media import crelay
from sipbridge.server.media.leg_driver import PcmPlayer
from sipbridge.server.media.service import MediaService
from tests.harness import eventually
from tests.server.media_phone import HOST, FakePhone
from tests.server.test_call_media import PLAIN, free_ports

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not crelay.available(), reason="the relay engine is not built"),
]

LEGS = 4
TICKS = 80
# Gaps between ticks: the grid, ticks late by a fraction of a sample, ticks skipped, one early,
# and late by exactly half a sample more than a whole (3/128 s is 187.5 samples at 8 kHz, 5/128
# s 312.5, 9/128 s 562.5: exact in binary, so the timestamp's step rounds a tie to even).
GAPS = [0.02, 0.02, 3 / 128, 0.02, 0.0201875, 5 / 128, 0.02, 0.019, 9 / 128, 0.06, 0.1, 0.02013]


def _receive(sock: socket.socket, into: list[bytes]) -> None:
    while True:
        try:
            into.append(sock.recvfrom(4096)[0])
        except BlockingIOError:
            return


async def _run(batched: bool) -> tuple[list[list[bytes]], list[tuple[int, ...]], int]:
    """Every datagram each phone got, each leg's state read back at the end, and the most legs
    armed at once."""
    svc = MediaService(HOST, free_ports(2 * LEGS + 8))
    phones = [FakePhone() for _ in range(LEGS)]
    batch = svc.clock.batch
    try:
        assert batch.sender is not None
        if not batched:
            batch.close()  # no sender: every frame made by the loop, sent by its socket
        legs = []
        for index, phone in enumerate(phones):
            answer, leg = svc.negotiate(phone.offer(), PLAIN)
            phone.accept(answer)
            svc.start(leg, timeout=30.0, on_timeout=lambda: None)
            svc.attach(leg, "room")
            leg.sender.ssrc = 0x2000 + index
            leg.sender._sequence = 65500 - 30 * index  # wraps within the run
            leg.timeline.last = (0xFFFFFF00 + 4099 * index) % (1 << 32)
            legs.append(leg)
        clock = svc.clock
        clock.on_second = None  # no RTCP reports (random intervals) in the comparison
        tone = (np.sin(np.arange(1600) * 0.2) * 6000).astype(np.int16)
        room = svc.rooms["room"]
        got: list[list[bytes]] = [[] for _ in phones]
        armed = 0
        at = 1000.0
        for tick in range(TICKS):
            if tick == 10:
                legs[1].send_dtmf("7")
            if tick == 25:
                legs[2].play(PcmPlayer(tone))
            if tick == 40:
                legs[3].sync()  # a reader mid-run: the stream goes on from where it was
            at += GAPS[tick % len(GAPS)]
            clock._next = at
            if tick == 60:  # the leg ends inside a tick, its frame queued
                if batch.sender is not None:  # (the tick before sent, as 20 ms later it is)
                    batch.sender.wait()
                batch.begin(at)
                room.tick(at)
                legs[0].close()
                batch.flush()
                clock.ticks += 1
            else:
                clock.advance(at)
            armed = max(armed, sum(leg.silent is not None for leg in legs))
            for phone, into in zip(phones, got, strict=True):
                _receive(phone.sock, into)
        clock.stop()
        for leg in legs:
            leg.sync()

        def complete() -> bool:
            for phone, into in zip(phones, got, strict=True):
                _receive(phone.sock, into)
            pairs = zip(legs, got, strict=True)
            return all(len(into) >= leg.stats.packets_out for leg, into in pairs)

        await eventually(complete, "every datagram the legs sent", timeout=5.0)
        states = [
            (
                leg.stats.packets_out,
                leg.stats.mixed_frames,
                leg.sender._sequence,
                leg.sender._timestamp,
                leg.sender.packets_sent,
                leg.sender.octets_sent,
                leg.timeline.last,
                int(leg._sent_since_report),
                leg.rtp.send_errors,
            )
            for leg in legs
        ]
        return got, states, armed
    finally:
        svc.close()
        for phone in phones:
            phone.close()


async def test_the_senders_silence_is_the_loops_to_the_byte() -> None:
    batched, batched_states, armed = await _run(batched=True)
    plain, plain_states, plain_armed = await _run(batched=False)
    assert armed >= 3 and plain_armed == 0  # the sender made silence, the loop alone did not
    assert batched == plain
    assert batched_states == plain_states
    for index, datagrams in enumerate(batched):
        packets = [parse_rtp(data) for data in datagrams]
        assert {p.ssrc for p in packets} == {0x2000 + index}
        sequences = [p.sequence_number for p in packets]
        assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(sequences))
        assert packets[0].marker
        if index != 1:  # (the digit's events take some ticks of the second)
            assert len(packets) == (61 if index == 0 else TICKS)  # the first closed in tick 61
    assert len({parse_rtp(d).payload for d in batched[2]}) > 2  # the tone among the silence
    assert {parse_rtp(d).payload_type for d in batched[1]} == {0, 101}  # the digit


async def test_a_leg_armed_for_silence_counts_on_its_objects_when_read() -> None:
    """Quality, metrics and the RTCP report read the leg's objects after `sync`: they show the
    frames the sender made."""
    svc = MediaService(HOST, free_ports(8))
    phone = FakePhone()
    try:
        answer, leg = svc.negotiate(phone.offer(), PLAIN)
        phone.accept(answer)
        svc.start(leg, timeout=30.0, on_timeout=lambda: None)
        svc.attach(leg, "alone")
        clock = svc.clock
        clock.stop()
        clock.on_second = None
        at = 2000.0
        for _ in range(12):
            at += 0.02
            clock._next = at
            clock.advance(at)
        assert leg.silent is not None
        assert leg.stats.mixed_frames < 12  # stale until read
        assert svc.samples()["rtp_mixed_frames"] == 12  # a reader syncs first
        assert leg.stats.mixed_frames == 12 and leg.sender.packets_sent == 12
        got: list[bytes] = []
        await eventually(lambda: _receive(phone.sock, got) or len(got) == 12, "12 frames")
        last = parse_rtp(got[-1])
        assert leg.sender._sequence == (last.sequence_number + 1) % 65536
        assert leg.timeline.last == last.timestamp
    finally:
        svc.close()
        phone.close()
