"""The adaptive jitter buffer: scripted arrival patterns played by a fake 20 ms clock.

Every scenario lists when each packet arrives; `play` pushes what has arrived by each tick and then
pops once, like the shared playout clock. Outcomes are the sequence number played, `LOST` for a
concealment frame, or None. Expected outcomes are worked out by hand from the arrival script: with
no jitter the buffer waits `min_delay` (20 ms) after the first arrival, so packet i (arriving at
20i ms) plays at tick i + 1.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.media.jitter import JitterBuffer, JitterFrame, JitterStats
from sipbridge.media.rtp import RtpPacket

SSRC = 0x5EED5EED
CLOCK = 8000
FRAME = 160  # samples in 20 ms at 8 kHz
TICK = 0.02
LOST = "lost"

Outcome = int | str | None
Arrival = tuple[float, RtpPacket]


def rtp(seq: int, ts: int, *, ssrc: int = SSRC, marker: bool = False) -> RtpPacket:
    return RtpPacket(
        payload_type=0,
        sequence_number=seq % (1 << 16),
        timestamp=ts % (1 << 32),
        ssrc=ssrc,
        payload=b"\xff" * 160,
        marker=marker,
    )


def stream(
    count: int,
    *,
    first: int = 0,
    seq0: int = 0,
    ts0: int = 0,
    start: float = 0.0,
    ssrc: int = SSRC,
    step: int = FRAME,
    interval: float = TICK,
) -> list[Arrival]:
    """Packets `first`..`first + count - 1` of a stream, each arriving on time."""
    return [
        (start + i * interval, rtp(seq0 + first + i, ts0 + (first + i) * step, ssrc=ssrc))
        for i in range(count)
    ]


def outcome(frame: JitterFrame | None) -> Outcome:
    if frame is None:
        return None
    if frame.lost:
        assert frame.packet is None
        return LOST
    assert frame.packet is not None
    return frame.packet.sequence_number


def play(
    buffer: JitterBuffer,
    arrivals: Iterable[Arrival],
    *,
    ticks: int,
    first_tick: float = 0.0,
    tick: float = TICK,
) -> list[Outcome]:
    """Pop at `first_tick + k * tick` for k in range(ticks), pushing before each pop every packet
    that has arrived by then (in arrival order; equal times keep script order)."""
    pending = sorted(arrivals, key=lambda arrival: arrival[0])
    results: list[Outcome] = []
    index = 0
    for k in range(ticks):
        now = first_tick + k * tick
        while index < len(pending) and pending[index][0] <= now + 1e-9:
            buffer.push(pending[index][1], pending[index][0])
            index += 1
        results.append(outcome(buffer.pop(now)))
    return results


def new_buffer(**options: int | float) -> JitterBuffer:
    return JitterBuffer(clock_rate=CLOCK, **options)  # type: ignore[arg-type]


def check_accounting(buffer: JitterBuffer) -> None:
    """Every packet pushed is accounted for exactly once."""
    s = buffer.stats
    assert s.received == (
        s.duplicates + s.late + s.overflow + s.played + s.skipped + s.flushed + len(buffer)
    )


# --- steady streams ----------------------------------------------------------------------------


def test_in_order_stream_plays_every_packet_once_after_min_delay() -> None:
    buffer = new_buffer()
    results = play(buffer, stream(50), ticks=54)
    # tick 0 (t=0): packet 0 has just arrived, 20 ms short of the delay; then one packet a tick
    assert results == [None, *range(50), None, None, None]
    assert buffer.delay == 0.02
    assert buffer.stats == JitterStats(received=50, played=50)
    assert len(buffer) == 0


def test_playout_clock_off_phase_and_wobbling() -> None:
    # the clock ticks 13 ms after each arrival, give or take 4 ms of timer wobble
    wobble = random.Random(7)
    buffer = new_buffer()
    pending = stream(500)
    played: list[int] = []
    for k in range(505):
        now = 0.013 + k * TICK + wobble.uniform(-0.004, 0.004)
        while pending and pending[0][0] <= now:
            arrival, packet = pending.pop(0)
            buffer.push(packet, arrival)
        frame = buffer.pop(now)
        if frame is not None:
            assert frame.packet is not None
            played.append(frame.packet.sequence_number)
    assert played == list(range(500))
    assert buffer.stats == JitterStats(received=500, played=500)
    assert buffer.delay == 0.02


def test_every_tenth_packet_lost_is_concealed_in_its_slot() -> None:
    arrivals = [arrival for arrival in stream(95) if arrival[1].sequence_number % 10 != 9]
    buffer = new_buffer()
    results = play(buffer, arrivals, ticks=97)
    assert results == [None, *(LOST if i % 10 == 9 else i for i in range(95)), None]
    assert buffer.stats == JitterStats(received=86, played=86, lost=9)


def test_loss_at_the_end_is_not_concealed() -> None:
    # nothing after the gap: silence, not loss (RFC 3389-style DTX looks the same)
    buffer = new_buffer()
    assert play(buffer, stream(5), ticks=8) == [None, 0, 1, 2, 3, 4, None, None]
    assert buffer.stats.lost == 0


def test_swapped_pairs_play_in_order() -> None:
    # packet i arrives at 20 * (i ^ 1) ms: 1, 0, 3, 2, ... Transit spread 40 ms, so the target
    # delay is 40 ms + the 5 ms guard, and playout starts once packet 0 is 45 ms behind the
    # fastest packet's schedule: at tick 2 (40 ms after packet 1, which was 20 ms early).
    arrivals = [(TICK * (i ^ 1), packet) for i, (_, packet) in enumerate(stream(40))]
    buffer = new_buffer()
    results = play(buffer, arrivals, ticks=43)
    assert results == [None, None, *range(40), None]
    assert buffer.delay == pytest.approx(0.045)
    assert buffer.stats == JitterStats(received=40, played=40)


def test_duplicates_are_dropped_and_counted() -> None:
    arrivals = stream(10)
    arrivals.append((3 * TICK, rtp(3, 3 * FRAME)))  # while the original is buffered
    arrivals.append((5 * TICK + 0.001, rtp(1, FRAME)))  # long after the original played
    buffer = new_buffer()
    assert play(buffer, arrivals, ticks=12) == [None, *range(10), None]
    assert buffer.stats == JitterStats(received=12, played=10, duplicates=2)


def test_packet_after_its_slot_is_late() -> None:
    # packet 50 arrives 60 ms late: its slot (tick 51) conceals it since packet 51 is there; it
    # is dropped when it comes. One outlier in 54 is above the 97th percentile: no delay growth.
    arrivals = [
        (arrival + (0.06 if packet.sequence_number == 50 else 0.0), packet)
        for arrival, packet in stream(60)
    ]
    buffer = new_buffer()
    results = play(buffer, arrivals, ticks=62)
    assert results == [None, *(LOST if i == 50 else i for i in range(60)), None]
    assert buffer.stats == JitterStats(received=60, played=59, lost=1, late=1)
    assert buffer.delay == 0.02


def test_network_gap_then_burst() -> None:
    # packets 10-14 are held by the network and arrive together with 15 at 300 ms
    arrivals = [
        (max(arrival, 0.3) if 10 <= packet.sequence_number <= 15 else arrival, packet)
        for arrival, packet in stream(30)
    ]
    buffer = new_buffer()
    results = play(buffer, arrivals, ticks=34)
    assert results == [
        None,
        *range(10),  # ticks 1-10
        None,  # ticks 11-14: the slots of 10-13 with nothing buffered: silence, not loss
        None,
        None,
        None,
        # tick 15: 10-13 arrive after their slots (late); 14 and 15 are in time. Packet 10's
        # 100 ms transit makes the target 60 ms (max_delay): two ticks of concealment stretch
        # the buffered 20 ms to 60 ms before 14 plays.
        LOST,
        LOST,
        *range(14, 30),
        None,
    ]
    assert buffer.stats == JitterStats(received=30, played=26, late=4, stretched=2)
    assert buffer.delay == 0.06


def test_delay_grows_during_silence_without_concealment() -> None:
    # packet 5 comes 60 ms late and nothing follows: the delay grows while there is nothing to
    # conceal, so the pops stay None
    arrivals = [*stream(5), (5 * TICK + 0.06, rtp(5, 5 * FRAME))]
    buffer = new_buffer()
    assert play(buffer, arrivals, ticks=10) == [None, 0, 1, 2, 3, 4, *[None] * 4]
    assert buffer.stats == JitterStats(received=6, played=5, late=1)
    assert buffer.delay == 0.06


def test_sequence_number_and_timestamp_wrap() -> None:
    seq0, ts0 = 65530, (1 << 32) - 3 * FRAME
    buffer = new_buffer()
    results = play(buffer, stream(20, seq0=seq0, ts0=ts0), ticks=22)
    assert results == [None, *((seq0 + i) % 65536 for i in range(20)), None]
    assert buffer.stats == JitterStats(received=20, played=20)


def test_wrap_with_reordering_across_it() -> None:
    # 65535 and 0 swap places across the wrap of both numbers
    seq0, ts0 = 65533, (1 << 32) - 3 * FRAME
    arrivals = stream(8, seq0=seq0, ts0=ts0)
    (t2, p2), (t3, p3) = arrivals[2], arrivals[3]
    arrivals[2], arrivals[3] = (t2 + 0.015, p2), (t3 - 0.015, p3)
    buffer = JitterBuffer(clock_rate=CLOCK, min_delay=0.04)
    results = play(buffer, arrivals, ticks=11)
    assert results == [None, None, 65533, 65534, 65535, 0, 1, 2, 3, 4, None]
    assert buffer.stats == JitterStats(received=8, played=8)


# --- restarts ----------------------------------------------------------------------------------


def test_ssrc_change_restarts_and_stragglers_are_late() -> None:
    old = stream(10, seq0=100, ts0=5000, ssrc=1)
    new = stream(10, seq0=7000, ts0=900_000, start=0.2, ssrc=2)
    straggler = (0.25, rtp(110, 5000 + 10 * FRAME, ssrc=1))
    # the old source comes back for good at 400 ms and keeps coming: after a quarter second of
    # its packets being refused as late, the buffer switches back to it
    back = stream(20, seq0=200, ts0=50_000, start=0.4, ssrc=1)
    buffer = new_buffer()
    results = play(buffer, [*old, *new, straggler, *back], ticks=42)
    assert results == [
        None,
        *range(100, 109),  # ticks 1-9
        None,  # tick 10: packet 109 was due, but 7000 (new SSRC) flushed it at 200 ms
        *range(7000, 7010),  # ticks 11-20, after min_delay
        *[None] * 13,  # ticks 21-33: old-SSRC packets 200-212 refused as late
        # 213 arrives 260 ms after 200 was refused: switch back; plays 20 ms later
        *range(213, 220),
        None,
    ]
    assert buffer.stats == JitterStats(
        received=41, played=26, late=14, resets=2, flushed=1, duplicates=0
    )


@pytest.mark.parametrize("jump", [5 * CLOCK, -5 * CLOCK], ids=["forward", "backward"])
def test_timestamp_jump_resyncs(jump: int) -> None:
    before = stream(10)
    # same SSRC, sequence numbers go on, the timestamp jumps by 5 s
    after = [
        (arrival, rtp(packet.sequence_number, packet.timestamp + jump))
        for arrival, packet in stream(10, first=10, start=0.2)
    ]
    straggler = (0.25, rtp(8, 8 * FRAME))  # played before the jump; now before the floor
    buffer = new_buffer()
    results = play(buffer, [*before, *after, straggler], ticks=22)
    # packet 9 was still buffered at 200 ms: flushed by the resync
    assert results == [None, *range(9), None, *range(10, 20), None]
    assert buffer.stats == JitterStats(received=21, played=19, late=1, resets=1, flushed=1)


def test_timestamp_step_under_a_second_is_not_a_resync() -> None:
    # RTP timestamps skip 0.5 s with no marker and consecutive sequence numbers: silence the
    # sender did not send. The playout clock ran through it, so the packets are on time.
    before = stream(10)
    after = stream(10, first=35, seq0=-25, start=0.7)
    buffer = new_buffer()
    results = play(buffer, [*before, *after], ticks=47)
    assert results == [None, *range(10), *[None] * 25, *range(10, 20), None]
    assert buffer.stats == JitterStats(received=20, played=20)


def test_marker_after_silence_resyncs_the_talkspurt() -> None:
    # RFC 3551 s4.1: after 300 ms of silence the sender resumes with the marker bit; the new
    # talkspurt arrives 5 ms later than the old schedule and starts after a fresh min_delay
    first = stream(10)
    second = [(0.505 + i * TICK, rtp(10 + i, (24 + i) * FRAME, marker=i == 0)) for i in range(10)]
    buffer = new_buffer()
    results = play(buffer, [*first, *second], ticks=40)
    assert results == [None, *range(10), *[None] * 16, *range(10, 20), *[None] * 3]
    assert buffer.stats == JitterStats(received=20, played=20, resets=1)


def test_talkspurt_without_marker_adapts_instead() -> None:
    # the same silence without the marker: packet 10 (timestamp 3840, slot at tick 25, 500 ms)
    # misses its slot by 5 ms and is late. Its 25 ms transit raises the target to 30 ms; tick 26
    # holds the playout point with nothing buffered (None, no concealment needed) and the rest
    # play 40 ms after their schedule.
    first = stream(10)
    second = [(0.505 + i * TICK, rtp(10 + i, (24 + i) * FRAME)) for i in range(10)]
    buffer = new_buffer()
    results = play(buffer, [*first, *second], ticks=40)
    assert results == [None, *range(10), *[None] * 16, *range(11, 20), *[None] * 4]
    assert buffer.stats == JitterStats(received=20, played=19, late=1)
    assert buffer.delay == pytest.approx(0.03)


def test_marker_inside_a_continuous_stream_is_ignored() -> None:
    # some gateways set the marker on every packet; without a timestamp gap it is no talkspurt
    arrivals = [
        (arrival, rtp(p.sequence_number, p.timestamp, marker=True)) for arrival, p in stream(20)
    ]
    buffer = new_buffer()
    assert play(buffer, arrivals, ticks=22) == [None, *range(20), None]
    assert buffer.stats.resets == 0


def test_lasting_lateness_resyncs() -> None:
    # the network delay steps up by 100 ms at packet 50, beyond max_delay: packets 50-62 are
    # late; 63 arrives 260 ms after 50, so the buffer restarts on it with its 60 ms target
    arrivals = [
        (arrival + (0.1 if packet.sequence_number >= 50 else 0.0), packet)
        for arrival, packet in stream(100)
    ]
    buffer = new_buffer()
    results = play(buffer, arrivals, ticks=110)
    assert results == [None, *range(50), *[None] * 20, *range(63, 100), *[None] * 2]
    assert buffer.stats == JitterStats(received=100, played=87, late=13, resets=1)


def test_late_packets_before_a_resync_floor_resync_when_they_persist() -> None:
    # after a jump the sender goes back to its old numbering for good: refused as older than the
    # resync point, then taken as the stream after a quarter second
    before = stream(5)
    jumped = [(0.1, rtp(5, 5 * FRAME + 5 * CLOCK))]
    # sequence numbers 65436.., 105 behind the resync point
    back = stream(20, seq0=-100, ts0=10 * CLOCK, start=0.12)
    buffer = new_buffer()
    results = play(buffer, [*before, *jumped, *back], ticks=30)
    assert results == [
        None,
        0,
        1,
        2,
        3,
        None,  # tick 5: the jump at 100 ms flushed packet 4 and restarted
        5,
        *[None] * 13,  # 120-360 ms: 13 packets refused as older than the resync point
        # 380 ms is 260 ms into the refusals: restart on it, play 20 ms later
        *(65436 + i for i in range(13, 20)),
        *[None] * 3,
    ]
    assert buffer.stats == JitterStats(received=26, played=12, late=13, resets=2, flushed=1)


# --- packet durations --------------------------------------------------------------------------


def test_30ms_packets_play_by_timestamp() -> None:
    # 30 ms packets under a 20 ms clock: two packets every three ticks; the third tick falls
    # inside audio already delivered and returns None, so nothing drifts
    buffer = new_buffer()
    results = play(buffer, stream(20, step=240, interval=0.03), ticks=33)
    expected: list[Outcome] = [None]
    for pair in range(10):
        expected += [2 * pair, 2 * pair + 1, None]
    assert results == [*expected, None, None]
    assert buffer.stats == JitterStats(received=20, played=20)


@pytest.mark.parametrize(
    ("min_delay", "expected"),
    [
        # packet 4 (timestamp 960) is missing. At 20 ms delay its slot (tick 7, 960-1120) comes
        # before packet 5 arrives (150 ms): nothing buffered, so None, not loss.
        (0.02, [None, 0, 1, None, 2, 3, None, None, 5, None, 6, 7, None, 8, 9, None, None]),
        # at 40 ms packet 5 is buffered when packet 4's slot (tick 8) comes: concealed
        (0.04, [None, None, 0, 1, None, 2, 3, None, LOST, 5, None, 6, 7, None, 8, 9, None]),
    ],
)
def test_30ms_packet_lost(min_delay: float, expected: list[Outcome]) -> None:
    arrivals = [a for a in stream(10, step=240, interval=0.03) if a[1].sequence_number != 4]
    buffer = JitterBuffer(clock_rate=CLOCK, min_delay=min_delay)
    assert play(buffer, arrivals, ticks=17) == expected
    assert buffer.stats == JitterStats(received=9, played=9, lost=expected.count(LOST))


def test_10ms_packets_under_a_20ms_clock_skip_every_other() -> None:
    # documented limit: one packet per pop, so a stream shorter than the tick loses half
    buffer = new_buffer()
    results = play(buffer, stream(40, step=80, interval=0.01), ticks=22)
    assert results == [None, *range(0, 40, 2), None]
    assert buffer.stats == JitterStats(received=40, played=20, skipped=20)


def test_10ms_packets_under_a_10ms_clock() -> None:
    buffer = JitterBuffer(clock_rate=CLOCK, frame_ms=10)
    results = play(buffer, stream(40, step=80, interval=0.01), ticks=43, tick=0.01)
    assert results == [None, None, *range(40), None]
    assert buffer.stats == JitterStats(received=40, played=40)


# --- bounds ------------------------------------------------------------------------------------


def test_burst_of_10000_packets_is_bounded() -> None:
    buffer = new_buffer()
    for i in range(10_000):
        buffer.push(rtp(i, i * FRAME), 0.0)
        assert len(buffer) <= 64
    assert len(buffer) == 64
    assert buffer.stats == JitterStats(received=10_000, overflow=10_000 - 64)
    # The newest 64 are kept (packets 9936-9999, 1.28 s of audio), all arrived at once: playout
    # runs 1.22 s over the 60 ms target (packet 9999 sets the fastest transit). After a 200 ms
    # window of that (ten packets played) it catches up by 61 frames, past the last packet.
    results = [outcome(buffer.pop(0.02 + k * TICK)) for k in range(12)]
    assert results == [*range(9936, 9946), None, None]
    assert buffer.stats.skipped == 54
    check_accounting(buffer)


def test_overflow_drops_the_oldest() -> None:
    buffer = JitterBuffer(clock_rate=CLOCK, max_packets=4)
    for seq in (10, 11, 12, 13):
        buffer.push(rtp(seq, seq * FRAME), seq * TICK)
    buffer.push(rtp(9, 9 * FRAME), 0.27)  # older than all four: it is the one dropped
    buffer.push(rtp(14, 14 * FRAME), 0.28)  # drops 10
    buffer.push(rtp(10, 10 * FRAME), 0.285)  # a copy of the dropped packet
    assert len(buffer) == 4
    assert buffer.stats == JitterStats(received=7, overflow=2, duplicates=1)
    # packet 9's 90 ms transit set a 60 ms target; 11 is 80 ms behind its schedule at 300 ms
    assert buffer.delay == 0.06
    results = [outcome(buffer.pop(0.3 + k * TICK)) for k in range(5)]
    assert results == [11, 12, 13, 14, None]


def test_one_late_tick_drops_nothing() -> None:
    # the clock fires 35 ms late once (55 ms of buffered delay against a 20 ms target) and
    # catches up on its schedule: the buffer neither drops a frame for it nor stretches after
    buffer = new_buffer()
    arrivals = stream(80)
    ticks = [*(k * TICK for k in range(60)), 1.235, 1.236, *(k * TICK for k in range(62, 82))]
    pending = list(arrivals)
    results: list[Outcome] = []
    for now in ticks:
        while pending and pending[0][0] <= now + 1e-9:
            buffer.push(pending[0][1], pending[0][0])
            pending.pop(0)
        results.append(outcome(buffer.pop(now)))
    assert results == [None, *range(80), None]
    assert buffer.stats == JitterStats(received=80, played=80)


def test_playout_clock_stall_is_caught_up() -> None:
    # the clock does not tick between 180 ms and 700 ms (a blocked event loop) and then goes on
    # from there: once playout has run 500 ms late for a whole 200 ms window, the buffer drops
    # the backlog at once rather than playing everything 500 ms late
    buffer = new_buffer()
    arrivals = stream(50)
    before = play(buffer, arrivals[:10], ticks=10)
    assert before == [None, *range(9)]
    after = play(buffer, arrivals[10:], ticks=16, first_tick=0.7)
    # 700-880 ms play 9-18 late; at 900 ms 19-45 are buffered and 19-43 are dropped
    assert after == [*range(9, 19), *range(44, 50)]
    assert buffer.stats == JitterStats(received=50, played=25, skipped=25)


def test_a_stall_of_the_loop_loses_nothing_with_true_arrival_times_and_caught_up_ticks() -> None:
    # The event loop stalls for 90 ms at 1 s: the packets of the stall queue in the kernel and are
    # read after it with the times they came at (the kernel's receive time), and the clock runs
    # the ticks it missed back to back, each at its own scheduled time (server/media: ports.py,
    # `MediaClock`). The buffer plays every packet in order, as without the stall: its delay
    # stays at the target, nothing stretched or dropped (with the read time as arrival, the
    # spread of the stall's packets grew it to max_delay, and it later dropped frames).
    buffer = new_buffer()
    arrivals = [(at + (0.003 if i % 3 else 0.0), p) for i, (at, p) in enumerate(stream(150))]
    before = play(buffer, arrivals[:49], ticks=50)
    assert before == [None, *range(49)]
    for arrival, packet in arrivals[49:]:  # read at 1.092, after the stall
        if arrival < 1.092:
            buffer.push(packet, arrival)
    caught_up = [outcome(buffer.pop(1.0 + k * TICK)) for k in range(5)]  # 1.0 .. 1.08, at once
    assert caught_up == [49, 50, 51, 52, 53]
    after = play(buffer, [a for a in arrivals if a[0] >= 1.092], ticks=100, first_tick=1.1)
    assert after == [*range(54, 150), None, None, None, None]
    assert buffer.delay == pytest.approx(0.02)
    assert buffer.stats == JitterStats(received=150, played=150)


def test_flush() -> None:
    buffer = new_buffer()
    for arrival, packet in stream(3):
        buffer.push(packet, arrival)
    assert len(buffer) == 3
    buffer.flush()
    assert len(buffer) == 0
    assert buffer.pop(1.0) is None
    # the next packet starts afresh, whatever its numbers; a flush is not a reset
    results = play(buffer, stream(3, seq0=500, ts0=77_000, start=2.0), ticks=5, first_tick=2.0)
    assert results == [None, 500, 501, 502, None]
    assert buffer.stats == JitterStats(received=6, played=3, flushed=3)


# --- adaptation --------------------------------------------------------------------------------


def test_adapts_to_random_jitter_then_shrinks_back() -> None:
    # up to 40 ms of uniform jitter for 30 s, then none for 30 s
    rng = random.Random(3550)
    jittery = [(arrival + rng.uniform(0, 0.04), p) for arrival, p in stream(1500)]
    calm = stream(1500, first=1500, start=30.0)
    buffer = new_buffer()
    delays: list[float] = []
    waits: list[float] = []
    arrived = {p.sequence_number: arrival for arrival, p in [*jittery, *calm]}
    pending = sorted([*jittery, *calm], key=lambda arrival: arrival[0])
    index = 0
    for k in range(3010):
        now = k * TICK
        while index < len(pending) and pending[index][0] <= now + 1e-9:
            buffer.push(pending[index][1], pending[index][0])
            index += 1
        frame = buffer.pop(now)
        if frame is not None and frame.packet is not None:
            waits.append(now - arrived[frame.packet.sequence_number])
        delays.append(buffer.delay)
    stats = buffer.stats
    # lateness stays low: no more than 0.5% of the jittery packets
    assert stats.late <= 7
    assert stats.played + stats.late + stats.skipped == 3000
    assert all(0.02 <= delay <= 0.06 for delay in delays)
    # the target covers the spread: about 40 ms + the 5 ms guard
    assert 0.04 <= delays[1499] <= 0.046
    # and falls back once the jitter stops, with the playout following it down
    assert delays[-1] == 0.02
    assert 1 <= stats.skipped <= 3
    assert max(waits[-100:]) <= 0.04 + 1e-9


def test_target_shrinks_slowly() -> None:
    # packet 2 is 60 ms late: the target jumps to 60 ms at once (tick 5, when it arrives)
    arrivals = [
        (arrival + (0.06 if packet.sequence_number == 2 else 0.0), packet)
        for arrival, packet in stream(400)
    ]
    buffer = new_buffer()
    trace: list[float] = []
    pending = sorted(arrivals, key=lambda arrival: arrival[0])
    for k in range(400):
        while pending and pending[0][0] <= k * TICK + 1e-9:
            arrival, packet = pending.pop(0)
            buffer.push(packet, arrival)
        buffer.pop(k * TICK)
        trace.append(buffer.delay)
    assert trace[4] == 0.02
    assert trace[5:38] == [0.06] * 33
    # It stays the window's maximum, so the 97th percentile, while the window holds fewer than
    # 34 packets; the estimate at 39 packets (every 10th packet from 20 on) is the first without
    # it. From there the target falls 2 ms per 10 packets (10 ms/s) to 20 ms, 3.8 s later.
    assert trace[38] == pytest.approx(0.058)
    assert trace[128] == pytest.approx(0.04)
    assert trace[227] == pytest.approx(0.022)
    assert trace[228:] == [0.02] * 172
    assert all(earlier - later <= 0.002 + 1e-12 for earlier, later in pairwise(trace))


# --- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"clock_rate": 0}, "clock rate"),
        ({"clock_rate": 8000, "frame_ms": 0}, "no sample"),
        ({"clock_rate": 8000, "min_delay": 0.1}, "min_delay"),
        ({"clock_rate": 8000, "min_delay": -0.01}, "min_delay"),
        ({"clock_rate": 8000, "max_packets": 0}, "max_packets"),
    ],
)
def test_bad_configuration(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JitterBuffer(**options)  # type: ignore[arg-type]


def test_frame_is_a_value() -> None:
    packet = rtp(1, 160)
    assert JitterFrame(packet, False) == JitterFrame(packet=packet, lost=False)
    assert JitterFrame(None, True).lost
    assert new_buffer().frame_samples == FRAME
    assert JitterBuffer(clock_rate=48000).frame_samples == 960


# --- property ----------------------------------------------------------------------------------

Operation = tuple[str, float, RtpPacket | None]

pushes = st.tuples(
    st.just("push"),
    st.floats(0, 0.5),
    st.builds(
        rtp,
        st.integers(0, 70_000),
        st.one_of(st.integers(0, 20_000), st.integers((1 << 32) - 20_000, (1 << 32) - 1)),
        ssrc=st.sampled_from([1, 2, 3]),
        marker=st.booleans(),
    ),
)
pops = st.tuples(st.just("pop"), st.floats(0, 0.5), st.none())
flushes = st.tuples(st.just("flush"), st.just(0.0), st.none())
single: st.SearchStrategy[list[Operation]] = st.one_of(pushes, pops, pops, flushes).map(
    lambda operation: [operation]
)
# an ordinary stream played as it comes, so the property also sees long in-order runs
ordinary: st.SearchStrategy[list[Operation]] = st.tuples(
    st.integers(0, 60), st.integers(0, 65535)
).map(
    lambda args: [
        operation
        for i in range(args[0])
        for operation in (("push", 0.02, rtp(args[1] + i, i * FRAME, ssrc=1)), ("pop", 0.0, None))
    ]
)
operation_lists = st.lists(st.one_of(single, ordinary), max_size=120).map(
    lambda chunks: [operation for chunk in chunks for operation in chunk]
)


@settings(max_examples=300, database=None, deadline=None)
@given(operation_lists, st.integers(1, 80))
def test_any_pushes_and_pops(operations: list[Operation], max_packets: int) -> None:
    buffer = JitterBuffer(clock_rate=CLOCK, max_packets=max_packets)
    now = 0.0
    frames = concealed = 0
    for action, step, packet in operations:
        now += step  # the monotonic clock never goes back
        if action == "push":
            assert packet is not None
            buffer.push(packet, now)
        elif action == "pop":
            frame = buffer.pop(now)
            if frame is not None:
                assert (frame.packet is None) == frame.lost
                frames += 1
                concealed += frame.lost
        else:
            buffer.flush()
        assert len(buffer) <= max_packets
        assert buffer.min_delay <= buffer.delay <= buffer.max_delay
        check_accounting(buffer)
    stats = buffer.stats
    assert frames == stats.played + stats.lost + stats.stretched
    assert concealed == stats.lost + stats.stretched


# --- shrinking at a pause ------------------------------------------------------------------------


def late_start(count: int, lateness: float = 0.04) -> list[Arrival]:
    """A phone's stream whose first packets come `lateness` late, together, and the rest on time:
    what a phone starting up under load sends. The buffer starts on the late first packet, so
    once the on-time ones come it holds more than its target, and its target falls back to its
    floor as the early spread leaves the window."""
    return [(max(arrival, lateness), packet) for arrival, packet in stream(count)]


class Listener:
    """What plays the frames (`Playout`): `quiet(tick)` says whether what it played last was a
    pause."""

    def __init__(self, quiet: Callable[[int], bool]) -> None:
        self.quiet = quiet
        self.tick = 0

    def played_quiet(self) -> bool:
        return self.quiet(self.tick)


def skips(
    buffer: JitterBuffer, arrivals: list[Arrival], ticks: int, quiet: Callable[[int], bool] | None
) -> list[int]:
    """The ticks at which `buffer` dropped a frame, `quiet(tick)` saying whether what was played
    last was a pause (None: a caller that does not say)."""
    pending = sorted(arrivals, key=lambda arrival: arrival[0])
    index = 0
    dropped = []
    listener = None if quiet is None else Listener(quiet)
    for k in range(ticks):
        now = k * TICK
        if listener is not None:
            listener.tick = k
        while index < len(pending) and pending[index][0] <= now + 1e-9:
            buffer.push(pending[index][1], pending[index][0])
            index += 1
        before = buffer.stats.skipped
        buffer.pop(now, listener)
        if buffer.stats.skipped != before:
            dropped.append(k)
    return dropped


def test_a_frame_is_dropped_to_shrink_the_delay_at_a_pause_not_in_speech() -> None:
    arrivals = late_start(400)
    # a caller that does not say what is quiet: one frame dropped 2.5 s in, whatever it holds
    assert skips(new_buffer(), arrivals, 400, None) == [125]
    # a caller talking until tick 200, then pausing: the drop waits for the pause
    buffer = new_buffer()
    assert skips(buffer, arrivals, 400, lambda tick: tick >= 200) == [200]
    assert buffer.stats.deferred == 1
    check_accounting(buffer)


def test_a_drop_waits_for_a_pause_four_seconds_at_most() -> None:
    # music on hold, or a caller who never pauses: the excess goes 4 s after it fell due
    buffer = new_buffer()
    assert skips(buffer, late_start(400), 400, lambda tick: False) == [125 + 200]
    assert buffer.stats.deferred == 1


def test_a_stalled_clock_catches_up_at_once_even_in_speech() -> None:
    # The playout clock stops for 400 ms (far over max_delay) while the phone talks on: once it
    # runs again the excess goes at once, without waiting for a pause, as without `quiet`.
    dropped: dict[bool, list[int]] = {}
    for says_quiet in (False, True):
        buffer = new_buffer(max_packets=64)
        pending = stream(200)
        index = 0
        counts = []
        for k in [*range(10), *range(30, 60)]:
            now = k * TICK
            while index < len(pending) and pending[index][0] <= now + 1e-9:
                buffer.push(pending[index][1], pending[index][0])
                index += 1
            buffer.pop(now, Listener(lambda tick: False) if says_quiet else None)
            counts.append(buffer.stats.skipped)
        dropped[says_quiet] = counts
        assert buffer.stats.deferred == 0
    assert dropped[True] == dropped[False]
    assert max(b - a for a, b in pairwise(dropped[True])) > 10  # at once, not a frame a window
