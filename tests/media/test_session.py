"""Per-call RTP state: RFC 3550 A.1/A.3/A.8 receive statistics, the sender, NAT latching.

Expected values are worked by hand from the RFC 3550 formulas, each shown beside its assertion.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.media.errors import MediaError
from sipbridge.media.rtp import (
    ReceiverReport,
    ReportBlock,
    RtpPacket,
    SenderInfo,
    SenderReport,
    build_compound_report,
    parse_rtcp,
    parse_rtp,
)
from sipbridge.media.session import (
    MAX_DROPOUT,
    MIN_SEQUENTIAL,
    Latch,
    ReceiverStats,
    RtpReceiver,
    RtpSender,
    ntp_timestamp,
    rtcp_interval,
)

SSRC = 0x11223344
OTHER = 0x55667788
CLOCK = 8000


def rtp(seq: int, ts: int = 0, *, ssrc: int = SSRC, payload: bytes = b"\xff" * 160) -> RtpPacket:
    return RtpPacket(
        payload_type=0,
        sequence_number=seq % (1 << 16),
        timestamp=ts % (1 << 32),
        ssrc=ssrc,
        payload=payload,
    )


def receiver_with(*seqs: int, ssrc: int = SSRC) -> tuple[RtpReceiver, list[bool]]:
    receiver = RtpReceiver(CLOCK)
    accepted = [receiver.receive(rtp(seq, ssrc=ssrc), 0.02 * i) for i, seq in enumerate(seqs)]
    return receiver, accepted


# --- RFC 3550 A.1: validation and extension ----------------------------------------------------


def test_probation_needs_two_sequential_packets() -> None:
    assert MIN_SEQUENTIAL == 2
    receiver = RtpReceiver(CLOCK)
    assert receiver.report_block(0.0) is None
    assert receiver.receive(rtp(100), 0.0) is False  # on probation
    assert (receiver.ssrc, receiver.report_block(0.0)) == (None, None)
    assert receiver.receive(rtp(101), 0.02) is True  # valid: counts from here (A.1 init_seq)
    assert receiver.ssrc == SSRC
    assert receiver.stats == ReceiverStats(
        packets=1, octets=160, lost=0, jitter_seconds=0.0, last_packet_at=0.02, dropped=1
    )
    assert receiver.report_block(0.02) == ReportBlock(ssrc=SSRC, highest_sequence=101)


def test_probation_restarts_on_a_gap() -> None:
    receiver, accepted = receiver_with(100, 102, 103, 104)
    assert accepted == [False, False, True, True]
    block = receiver.report_block(1.0)
    assert block is not None
    assert (block.highest_sequence, block.cumulative_lost) == (104, 0)


def test_probation_across_the_wrap() -> None:
    _, accepted = receiver_with(65535, 0)
    assert accepted == [False, True]


def test_sequence_wrap_extends_the_highest_sequence() -> None:
    receiver, accepted = receiver_with(65533, 65534, 65535, 0, 1)
    assert accepted == [False, True, True, True, True]
    block = receiver.report_block(1.0)
    assert block is not None
    # one cycle (65536) + 1; expected = 65537 - 65534 + 1 = 4 = received
    assert (block.highest_sequence, block.cumulative_lost) == (65537, 0)


def test_large_jump_then_restart_after_two_sequential() -> None:
    receiver, accepted = receiver_with(1000, 1001, 1002, 9000, 9001, 9002)
    # 9000 - 1002 = 7998 >= MAX_DROPOUT: refused, remembered as bad_seq 9001; 9001 matches, so
    # the sender restarted: statistics start again at 9001 (A.1 init_seq)
    assert MAX_DROPOUT <= 9000 - 1002
    assert accepted == [False, True, True, False, True, True]
    assert receiver.stats.dropped == 2
    assert receiver.stats.packets == 4  # packets accepted from this SSRC
    block = receiver.report_block(1.0)
    assert block is not None
    assert (block.highest_sequence, block.cumulative_lost) == (9002, 0)


def test_lone_jump_is_dropped_and_the_stream_goes_on() -> None:
    receiver, accepted = receiver_with(1000, 1001, 1002, 40000, 1003, 1004)
    assert accepted == [False, True, True, False, True, True]
    block = receiver.report_block(1.0)
    assert block is not None
    assert (block.highest_sequence, block.cumulative_lost) == (1004, 0)


def test_reordered_packet_within_misorder_is_accepted() -> None:
    receiver, accepted = receiver_with(1000, 1001, 1003, 1002, 1004)
    assert accepted == [False, True, True, True, True]
    block = receiver.report_block(1.0)
    assert block is not None
    assert (block.highest_sequence, block.cumulative_lost) == (1004, 0)


def test_duplicate_counts_as_received() -> None:
    # A.1 counts duplicates in `received`, so cumulative loss can go negative (s6.4.1)
    receiver, accepted = receiver_with(1000, 1001, 1002, 1002, 1003)
    assert accepted == [False, True, True, True, True]
    assert receiver.stats.lost == -1
    block = receiver.report_block(1.0)
    assert block is not None
    assert (block.cumulative_lost, block.fraction_lost) == (-1, 0)
    # and it fits the 24-bit signed field on the wire
    assert ReportBlock(ssrc=SSRC, cumulative_lost=-1).serialize()[4:8] == bytes.fromhex("00ffffff")


# --- RFC 3550 A.3: loss ------------------------------------------------------------------------


def test_cumulative_and_fraction_lost_per_interval() -> None:
    receiver = RtpReceiver(CLOCK)
    # seq 1 on probation, 2 validates; then 3..99 without 10, 20, ..., 90
    for seq in range(1, 100):
        if seq % 10:
            receiver.receive(rtp(seq), seq * 0.02)
    first = receiver.report_block(2.0)
    assert first is not None
    # expected = 99 - 2 + 1 = 98, received 89: lost 9, fraction 9 * 256 // 98 = 23
    assert (first.cumulative_lost, first.fraction_lost, first.highest_sequence) == (9, 23, 99)
    # next interval: 100..149 without 101..105
    for seq in range(100, 150):
        if not 101 <= seq <= 105:
            receiver.receive(rtp(seq), seq * 0.02)
    second = receiver.report_block(3.0)
    assert second is not None
    # expected 50, received 45: fraction 5 * 256 // 50 = 25; cumulative 9 + 5
    assert (second.cumulative_lost, second.fraction_lost, second.highest_sequence) == (14, 25, 149)
    assert receiver.stats.lost == 14
    # nothing received since: an empty interval reports no fraction
    third = receiver.report_block(4.0)
    assert third is not None
    assert (third.cumulative_lost, third.fraction_lost) == (14, 0)


def test_fraction_is_zero_when_duplicates_outnumber_losses() -> None:
    receiver, _ = receiver_with(1, 2, 3)
    receiver.report_block(1.0)
    for seq in (5, 5, 5, 6):  # 4 lost, 5 twice more: interval expected 3, received 4
        receiver.receive(rtp(seq), 1.0)
    block = receiver.report_block(2.0)
    assert block is not None
    assert (block.fraction_lost, block.cumulative_lost) == (0, -1)


def test_cumulative_loss_is_clamped_to_24_bits() -> None:
    receiver, _ = receiver_with(0, 1)
    # 2999 forward per step is loss, not a jump: 3000 steps lose more than 0x7FFFFF packets
    seq = 1
    for _ in range(3000):
        seq += MAX_DROPOUT - 1
        assert receiver.receive(rtp(seq), 1.0)
    block = receiver.report_block(1.0)
    assert block is not None
    # expected 3000 * 2999 + 1 (base 1 to 1 + 3000 * 2999), received 3001: 3000 * 2998 lost
    assert receiver.stats.lost == 3000 * (MAX_DROPOUT - 2)
    assert block.cumulative_lost == 0x7FFFFF
    assert block.fraction_lost == 255  # 8994000 * 256 // 8997001
    assert block.highest_sequence == 1 + 3000 * (MAX_DROPOUT - 1)
    block.serialize()


# --- RFC 3550 A.8: interarrival jitter ---------------------------------------------------------


def test_jitter_matches_the_rfc_formula() -> None:
    # 20 ms packets (160 timestamp units at 8 kHz) arriving at 0, 20, 45, 60, 85 ms
    receiver = RtpReceiver(CLOCK)
    arrivals = [0.0, 0.020, 0.045, 0.060, 0.085]
    for i, arrival in enumerate(arrivals):
        receiver.receive(rtp(10 + i, 1000 + 160 * i), arrival)
    # The first packet is on probation; from the second: D = (Rj - Ri) - (Sj - Si)
    #   25 ms = 200 units - 160 = 40   J = 0 + (40 - 0) / 16 = 2.5
    #   15 ms = 120 units - 160 = -40  J = 2.5 + (40 - 2.5) / 16 = 4.84375
    #   25 ms                   = 40   J = 4.84375 + (40 - 4.84375) / 16 = 7.041015625
    expected = 7.041015625
    assert receiver.stats.jitter_seconds == pytest.approx(expected / CLOCK, rel=1e-9)
    block = receiver.report_block(1.0)
    assert block is not None
    assert block.jitter == 7


def test_jitter_across_the_timestamp_wrap() -> None:
    receiver = RtpReceiver(CLOCK)
    base = (1 << 32) - 320
    arrivals = [0.0, 0.020, 0.045, 0.060, 0.085]
    for i, arrival in enumerate(arrivals):
        receiver.receive(rtp(10 + i, base + 160 * i), arrival)
    assert receiver.stats.jitter_seconds == pytest.approx(7.041015625 / CLOCK, rel=1e-9)


def test_steady_stream_has_no_jitter() -> None:
    receiver = RtpReceiver(CLOCK)
    for i in range(50):
        receiver.receive(rtp(i, 160 * i), i / 50)
    assert receiver.stats.jitter_seconds == pytest.approx(0.0, abs=1e-12)


def test_restart_does_not_count_the_timestamp_jump_as_jitter() -> None:
    receiver = RtpReceiver(CLOCK)
    for i, (seq, ts) in enumerate([(1, 0), (2, 160), (3, 320), (20000, 9_999_999), (20001, 10**7)]):
        receiver.receive(rtp(seq, ts), 0.02 * i)
    # 20000 is refused, 20001 restarts the count; the 10 million unit step between 3 and 20001
    # is not taken for jitter
    assert receiver.stats.jitter_seconds == pytest.approx(0.0, abs=1e-12)


# --- sources -----------------------------------------------------------------------------------


def test_stray_ssrc_does_not_disturb_the_source() -> None:
    receiver, _ = receiver_with(500, 501, 502, 504)
    assert receiver.receive(rtp(7, ssrc=OTHER), 1.0) is False  # one stray packet
    assert receiver.receive(rtp(505), 1.02) is True
    assert receiver.ssrc == SSRC
    assert receiver.stats.lost == 1  # 503, still counted
    assert receiver.stats.dropped == 2


def test_ssrc_change_restarts_the_source_after_probation() -> None:
    receiver, _ = receiver_with(500, 501, 502, 504)
    assert receiver.receive(rtp(7, 100, ssrc=OTHER), 1.0) is False
    assert receiver.receive(rtp(8, 260, ssrc=OTHER), 1.02) is True
    assert receiver.ssrc == OTHER
    assert receiver.stats == ReceiverStats(
        packets=1, octets=160, lost=0, jitter_seconds=0.0, last_packet_at=1.02, dropped=2
    )
    block = receiver.report_block(1.1)
    assert block == ReportBlock(ssrc=OTHER, highest_sequence=8)


# --- LSR / DLSR --------------------------------------------------------------------------------


def sender_report(ssrc: int, ntp: int) -> SenderReport:
    info = SenderInfo(ntp_timestamp=ntp, rtp_timestamp=0, packet_count=0, octet_count=0)
    return SenderReport(ssrc=ssrc, sender_info=info)


def test_lsr_and_dlsr_from_the_last_sender_report() -> None:
    receiver, _ = receiver_with(1, 2, 3)
    block = receiver.report_block(5.0)
    assert block is not None
    assert (block.last_sr, block.delay_since_last_sr) == (0, 0)  # no SR yet (s6.4.1)
    receiver.sender_report_received(sender_report(SSRC, 0xAABBCCDD_EEFF0011), 10.0)
    block = receiver.report_block(12.5)
    assert block is not None
    # LSR: the middle 32 bits of the NTP timestamp; DLSR: 2.5 s in 1/65536 s
    assert (block.last_sr, block.delay_since_last_sr) == (0xCCDDEEFF, 163_840)


def test_sender_report_before_the_source_is_valid() -> None:
    receiver = RtpReceiver(CLOCK)
    receiver.sender_report_received(sender_report(SSRC, 0x12345678_9ABCDEF0), 0.0)
    receiver.receive(rtp(1), 0.0)
    receiver.receive(rtp(2), 0.02)
    block = receiver.report_block(0.5)
    assert block is not None
    assert (block.last_sr, block.delay_since_last_sr) == (0x56789ABC, 32768)


def test_sender_report_from_another_source_is_not_echoed() -> None:
    receiver, _ = receiver_with(1, 2, 3)
    receiver.sender_report_received(sender_report(OTHER, 0xAABBCCDD_EEFF0011), 1.0)
    block = receiver.report_block(2.0)
    assert block is not None
    assert (block.last_sr, block.delay_since_last_sr) == (0, 0)


def test_report_block_in_a_compound_report() -> None:
    receiver, _ = receiver_with(1, 2, 3, 5)
    block = receiver.report_block(1.0)
    assert block is not None
    data = build_compound_report(ssrc=0xCAFE, cname="sipbridge", reports=[block])
    report = parse_rtcp(data)[0]
    assert isinstance(report, ReceiverReport)
    assert report.reports == (block,)
    assert (block.fraction_lost, block.cumulative_lost) == (256 // 4, 1)  # 1 of 4 expected


# --- the sender --------------------------------------------------------------------------------


def test_sender_sequence_and_timestamp_wrap() -> None:
    sender = RtpSender(
        ssrc=SSRC,
        clock_rate=CLOCK,
        payload_type=8,
        initial_sequence=65534,
        initial_timestamp=(1 << 32) - 160,
    )
    packets = [parse_rtp(sender.packet(b"\xd5" * 160, samples=160)) for _ in range(3)]
    assert [(p.sequence_number, p.timestamp) for p in packets] == [
        (65534, (1 << 32) - 160),
        (65535, 0),
        (0, 160),
    ]
    assert all(p.payload_type == 8 and p.ssrc == SSRC and not p.marker for p in packets)
    assert (sender.sequence_number, sender.timestamp) == (1, 320)
    assert (sender.packets_sent, sender.octets_sent) == (3, 480)


def test_sender_wire_bytes() -> None:
    sender = RtpSender(
        ssrc=0xDEADBEEF,
        clock_rate=CLOCK,
        payload_type=0,
        initial_sequence=0x1234,
        initial_timestamp=160,
    )
    # RFC 3550 s5.1: V=2, PT 0, seq 0x1234, timestamp 160, SSRC, payload
    assert sender.packet(b"\xff\xff\xff\xff", samples=4) == bytes.fromhex(
        "80 00 1234 000000a0 deadbeef ffffffff"
    )


def test_skip_marks_the_next_talkspurt() -> None:
    sender = RtpSender(
        ssrc=SSRC, clock_rate=CLOCK, payload_type=0, initial_sequence=10, initial_timestamp=1000
    )
    first = parse_rtp(sender.packet(b"a", samples=160))
    sender.skip(800)  # 100 ms of silence not sent
    second = parse_rtp(sender.packet(b"b", samples=160))
    third = parse_rtp(sender.packet(b"c", samples=160))
    assert [(p.sequence_number, p.timestamp, p.marker) for p in (first, second, third)] == [
        (10, 1000, False),
        (11, 1960, True),  # RFC 3551 s4.1: first packet of a talkspurt; sequence goes on
        (12, 2120, False),
    ]
    forced = parse_rtp(sender.packet(b"d", samples=160, marker=True))
    assert forced.marker


def test_event_packets_share_a_timestamp() -> None:
    # RFC 4733 s2.3.1: every packet of an event carries its start timestamp; after the event the
    # audio goes on from the start plus the event's duration
    sender = RtpSender(
        ssrc=SSRC, clock_rate=CLOCK, payload_type=0, initial_sequence=0, initial_timestamp=4000
    )
    start = sender.timestamp
    events = [
        parse_rtp(sender.packet(b"\x01\x0a\x00\xa0", samples=0, payload_type=101, timestamp=start)),
        parse_rtp(sender.packet(b"\x01\x0a\x01\x40", samples=0, payload_type=101, timestamp=start)),
        parse_rtp(
            sender.packet(b"\x01\x8a\x01\xe0", samples=480, payload_type=101, timestamp=start)
        ),
    ]
    assert [(p.payload_type, p.sequence_number, p.timestamp) for p in events] == [
        (101, 0, 4000),
        (101, 1, 4000),
        (101, 2, 4000),
    ]
    audio = parse_rtp(sender.packet(b"\xff" * 160, samples=160))
    assert (audio.payload_type, audio.sequence_number, audio.timestamp) == (0, 3, 4480)


def test_sender_info() -> None:
    sender = RtpSender(
        ssrc=SSRC, clock_rate=CLOCK, payload_type=0, initial_sequence=0, initial_timestamp=5000
    )
    for _ in range(3):
        sender.packet(b"\xff" * 160, samples=160)
    ntp = ntp_timestamp(1_700_000_000.5)
    assert sender.sender_info(ntp) == SenderInfo(
        ntp_timestamp=ntp, rtp_timestamp=5480, packet_count=3, octet_count=480
    )


def test_sender_refuses_bad_fields_without_changing_state() -> None:
    sender = RtpSender(
        ssrc=SSRC, clock_rate=CLOCK, payload_type=0, initial_sequence=7, initial_timestamp=0
    )
    with pytest.raises(MediaError):
        sender.packet(b"", samples=160, payload_type=200)
    with pytest.raises(MediaError):
        sender.packet(b"", samples=160, timestamp=1 << 32)
    with pytest.raises(ValueError, match="negative"):
        sender.packet(b"", samples=-1)
    with pytest.raises(ValueError, match="negative"):
        sender.skip(-1)
    assert (sender.sequence_number, sender.timestamp, sender.packets_sent) == (7, 0, 0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ssrc", 1 << 32, "SSRC"),
        ("clock_rate", 0, "clock rate"),
        ("payload_type", 128, "payload type"),
        ("initial_sequence", 65536, "sequence"),
        ("initial_timestamp", -1, "timestamp"),
    ],
)
def test_sender_configuration(field: str, value: int, message: str) -> None:
    options = {
        "ssrc": SSRC,
        "clock_rate": CLOCK,
        "payload_type": 0,
        "initial_sequence": 0,
        "initial_timestamp": 0,
    }
    options[field] = value
    with pytest.raises(ValueError, match=message):
        RtpSender(**options)


def test_receiver_configuration() -> None:
    with pytest.raises(ValueError, match="clock rate"):
        RtpReceiver(0)


# --- NTP and RTCP timing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wallclock", "ntp"),
    [
        (0.0, 2_208_988_800 << 32),  # 1970-01-01 is 2208988800 s after 1900-01-01
        (1.5, (2_208_988_801 << 32) | 0x8000_0000),
        (1_704_067_200.25, (3_913_056_000 << 32) | 0x4000_0000),  # 2024-01-01T00:00:00.25Z
        (2_085_978_496.0, 0),  # 2036-02-07T06:28:16Z: NTP era 1 begins (RFC 5905 s6)
        (2_085_978_497.0, 1 << 32),
    ],
)
def test_ntp_timestamp(wallclock: float, ntp: int) -> None:
    assert ntp_timestamp(wallclock) == ntp


def test_ntp_middle_is_what_lsr_echoes() -> None:
    info = SenderInfo(
        ntp_timestamp=ntp_timestamp(1.5), rtp_timestamp=0, packet_count=0, octet_count=0
    )
    # low 16 bits of the seconds, high 16 bits of the fraction
    assert info.ntp_middle == ((2_208_988_801 & 0xFFFF) << 16) | 0x8000


@pytest.mark.parametrize(
    ("fraction", "initial", "seconds"),
    [(0.0, False, 2.5), (0.5, False, 5.0), (1.0, False, 7.5), (0.5, True, 2.5), (0.0, True, 1.25)],
)
def test_rtcp_interval(fraction: float, initial: bool, seconds: float) -> None:
    assert rtcp_interval(fraction, initial=initial) == seconds


@pytest.mark.parametrize("fraction", [-0.1, 1.1, float("nan")])
def test_rtcp_interval_needs_a_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="random fraction"):
        rtcp_interval(fraction)


# --- latching ----------------------------------------------------------------------------------

PRIVATE = ("192.168.1.10", 4000)  # what a phone behind NAT writes in its SDP
NAT = ("203.0.113.5", 61000)  # where its packets really come from
INTRUDER = ("198.51.100.7", 5004)


def test_latches_to_the_nat_rewritten_source() -> None:
    latch = Latch(PRIVATE)
    # nothing received yet: the SDP address
    assert (latch.latched, latch.destination) == (None, PRIVATE)
    assert latch.check(NAT, 0.0) is True
    assert latch.latched == NAT
    assert latch.destination == NAT


def test_latches_with_no_sdp_address() -> None:
    latch = Latch(None)
    assert latch.destination is None
    assert latch.check(NAT, 0.0)
    assert latch.destination == NAT


def test_refuses_a_second_source() -> None:
    latch = Latch(PRIVATE)
    latch.check(NAT, 0.0)
    assert latch.check(INTRUDER, 0.5) is False
    assert latch.check(NAT, 0.52) is True
    assert latch.check(INTRUDER, 2.4) is False  # NAT sent 1.88 s ago: not silent long enough
    assert (latch.refused, latch.relatches) == (2, 0)
    assert latch.destination == NAT


def test_relatches_after_silence() -> None:
    latch = Latch(PRIVATE)
    latch.check(NAT, 0.0)
    latch.check(NAT, 3.0)
    assert latch.check(INTRUDER, 4.9) is False
    assert latch.check(INTRUDER, 5.0) is True  # exactly 2 s of silence from NAT
    assert latch.destination == INTRUDER
    assert latch.check(NAT, 5.1) is False  # the old source is now the stranger
    assert (latch.refused, latch.relatches) == (2, 1)


def test_relatch_delay_is_configurable() -> None:
    latch = Latch(None, relatch_after=0.5)
    latch.check(NAT, 0.0)
    assert latch.check(INTRUDER, 0.49) is False
    assert latch.check(INTRUDER, 0.5) is True


def test_reset_on_a_new_sdp() -> None:
    latch = Latch(PRIVATE)
    latch.check(NAT, 0.0)
    latch.reset(PRIVATE)  # a re-INVITE repeating the address (hold, refresh): latch kept
    assert latch.destination == NAT
    moved = ("198.51.100.20", 30000)
    latch.reset(moved)  # the media moved: back to the SDP until the first packet
    assert latch.latched is None
    assert latch.destination == moved
    assert latch.check(INTRUDER, 0.1) is True  # whoever comes first latches, as at the start
    assert latch.destination == INTRUDER


# --- properties --------------------------------------------------------------------------------

FUZZ = settings(max_examples=200, database=None, deadline=None)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(0, 0xFFFF),
            st.integers(0, 0xFFFFFFFF),
            st.sampled_from([SSRC, OTHER]),
            st.floats(0, 2),
            st.booleans(),
        ),
        max_size=200,
    )
)
def test_receiver_reports_always_fit_the_wire(
    packets: list[tuple[int, int, int, float, bool]],
) -> None:
    receiver = RtpReceiver(CLOCK)
    now = 0.0
    for seq, ts, ssrc, step, report in packets:
        now += step
        receiver.receive(rtp(seq, ts, ssrc=ssrc), now)
        if report:
            receiver.sender_report_received(sender_report(ssrc, seq << 40), now)
            block = receiver.report_block(now)
            assert (block is None) == (receiver.ssrc is None)
            if block is not None:
                block.serialize()  # every field within its width
    assert receiver.stats.jitter_seconds >= 0


@FUZZ
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.lists(st.tuples(st.booleans(), st.integers(0, 1 << 20)), max_size=50),
)
def test_sender_numbers_wrap(first_seq: int, first_ts: int, steps: list[tuple[bool, int]]) -> None:
    sender = RtpSender(
        ssrc=SSRC,
        clock_rate=CLOCK,
        payload_type=0,
        initial_sequence=first_seq,
        initial_timestamp=first_ts,
    )
    sent = 0
    elapsed = 0
    for send, samples in steps:
        if send:
            packet = parse_rtp(sender.packet(b"x", samples=samples))
            assert packet.sequence_number == (first_seq + sent) % (1 << 16)
            assert packet.timestamp == (first_ts + elapsed) % (1 << 32)
            sent += 1
        else:
            sender.skip(samples)
        elapsed += samples
    assert (sender.packets_sent, sender.octets_sent) == (sent, sent)
