"""DTMF: RFC 4733 telephone-event payloads, receiver, sender, and in-band tones with detection.

The packet vectors are RFC 4733 s2.3 Figure 1 written out by hand and the "911" dialling sequence
of RFC 4733 s5 Table 5 (its "..." rows filled in by the s2.5.1.2 rule they abbreviate: one report
every 50 ms, duration growing by 400). Losses, duplicates, reordering and long presses are that
sequence or the sender's output with packets removed, repeated or moved. In-band tests generate
ITU-T Q.23 pairs and check the Goertzel detector finds them, and nothing in tones, noise or
speech-like signals that are not DTMF.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from sipbridge.media import g711
from sipbridge.media.dtmf import (
    DIGITS,
    DigitReceived,
    DtmfEvent,
    DtmfPacket,
    DtmfReceiver,
    DtmfSender,
    detect_digits,
    digit_code,
    dtmf_tone,
    parse_event,
)
from sipbridge.media.errors import MediaError
from sipbridge.media.rtp import RtpPacket
from sipbridge.media.tones import dbm0_to_amplitude, sine_sum

PT = 101  # the dynamic payload type most peers offer for telephone-event/8000
SSRC = 0x5EED5EED

# --- RFC 4733 s2.3 payload layout --------------------------------------------------------------

# event(8) | E(1) R(1) volume(6) | duration(16)
DIGIT_9_START = bytes.fromhex(
    "09"  # event 9 (RFC 4733 s3.2 Table 3)
    "0a"  # E=0 R=0 volume 10 (-10 dBm0)
    "0190"  # duration 400 timestamp units (50 ms at 8 kHz)
)
DIGIT_9_END = bytes.fromhex(
    "09"  # event 9
    "8a"  # E=1 R=0 volume 10
    "0640"  # duration 1600 (200 ms)
)
HASH_RESERVED = bytes.fromhex(
    "0b"  # event 11: "#"
    "7f"  # E=0 R=1 volume 63
    "ffff"  # the largest duration
)


@pytest.mark.parametrize(
    ("data", "event"),
    [
        (DIGIT_9_START, DtmfEvent(event=9, volume=10, duration=400)),
        (DIGIT_9_END, DtmfEvent(event=9, end=True, volume=10, duration=1600)),
        (HASH_RESERVED, DtmfEvent(event=11, reserved=True, volume=63, duration=0xFFFF)),
        (bytes.fromhex("10 80 0000"), DtmfEvent(event=16, end=True)),  # flash, a state
    ],
)
def test_payload_layout(data: bytes, event: DtmfEvent) -> None:
    assert parse_event(data) == event
    assert event.serialize() == data


def test_digit_of_event() -> None:
    assert [DtmfEvent(event=code).digit for code in range(16)] == list(DIGITS)
    assert DtmfEvent(event=16).digit is None  # flash
    assert DtmfEvent(event=255).digit is None


def test_packed_events_give_the_first() -> None:
    # RFC 4733 s2.5.1.5: several events back to back in one payload; the first begins at the
    # RTP timestamp
    assert parse_event(DIGIT_9_END + DIGIT_9_START) == parse_event(DIGIT_9_END)


@pytest.mark.parametrize("data", [b"", b"\x09", DIGIT_9_START[:3], DIGIT_9_START + b"\x00"])
def test_payload_not_4_octets_per_event(data: bytes) -> None:
    with pytest.raises(MediaError, match="4 octets"):
        parse_event(data)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (DtmfEvent(event=256), "event code 256"),
        (DtmfEvent(event=-1), "event code -1"),
        (DtmfEvent(event=1, volume=64), "volume 64"),
        (DtmfEvent(event=1, volume=-1), "volume -1"),
        (DtmfEvent(event=1, duration=0x10000), "duration 65536"),
        (DtmfEvent(event=1, duration=-1), "duration -1"),
    ],
)
def test_fields_that_do_not_fit(event: DtmfEvent, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        event.serialize()


@pytest.mark.parametrize(("digit", "code"), [("0", 0), ("9", 9), ("*", 10), ("#", 11), ("a", 12)])
def test_digit_code(digit: str, code: int) -> None:
    assert digit_code(digit) == code
    assert digit_code(digit.upper()) == code


@pytest.mark.parametrize("digit", ["", "12", "E", "w", " ", "٣"])
def test_digit_code_rejects(digit: str) -> None:
    with pytest.raises(ValueError, match="not a DTMF digit"):
        digit_code(digit)


FUZZ = settings(max_examples=300, database=None, deadline=None)


@FUZZ
@given(st.binary(max_size=20))
def test_parse_event_returns_or_raises_media_error(data: bytes) -> None:
    try:
        event = parse_event(data)
    except MediaError:
        assert len(data) % 4 or not data
        return
    assert event.serialize() == data[:4]


@FUZZ
@given(
    event=st.integers(0, 255),
    end=st.booleans(),
    reserved=st.booleans(),
    volume=st.integers(0, 63),
    duration=st.integers(0, 0xFFFF),
)
def test_event_round_trip(
    *, event: int, end: bool, reserved: bool, volume: int, duration: int
) -> None:
    report = DtmfEvent(event=event, end=end, reserved=reserved, volume=volume, duration=duration)
    assert parse_event(report.serialize()) == report


# --- RFC 4733 s5 Table 5: "911" --------------------------------------------------------------

# (time ms, M, timestamp, sequence number, event code, duration, E), as in Table 5
TABLE_5 = [
    (50, 1, 0, 1, 9, 400, 0),
    (100, 0, 0, 2, 9, 800, 0),
    (150, 0, 0, 3, 9, 1200, 0),
    (200, 0, 0, 4, 9, 1600, 0),
    (250, 0, 0, 5, 9, 1600, 1),  # first retransmission, E bit set late (s2.5.1.4)
    (300, 0, 0, 6, 9, 1600, 1),
    (930, 1, 7040, 7, 1, 400, 0),
    (980, 0, 7040, 8, 1, 800, 0),  # filled in
    (1030, 0, 7040, 9, 1, 1200, 0),  # filled in
    (1080, 0, 7040, 10, 1, 1600, 0),  # filled in
    (1130, 0, 7040, 11, 1, 2000, 0),
    (1180, 0, 7040, 12, 1, 2000, 1),
    (1230, 0, 7040, 13, 1, 2000, 1),
    (1450, 1, 11200, 14, 1, 400, 0),
    (1500, 0, 11200, 15, 1, 800, 0),  # filled in
    (1550, 0, 11200, 16, 1, 1200, 0),  # filled in
    (1600, 0, 11200, 17, 1, 1600, 0),  # filled in
    (1650, 0, 11200, 18, 1, 1760, 1),
    (1700, 0, 11200, 19, 1, 1760, 1),
    (1750, 0, 11200, 20, 1, 1760, 1),
]

Arrival = tuple[float, RtpPacket]


def table_5() -> list[Arrival]:
    return [
        (
            ms / 1000,
            RtpPacket(
                payload_type=PT,
                sequence_number=seq,
                timestamp=timestamp,
                ssrc=SSRC,
                marker=bool(marker),
                payload=DtmfEvent(event=code, end=bool(end), duration=duration).serialize(),
            ),
        )
        for ms, marker, timestamp, seq, code, duration, end in TABLE_5
    ]


def feed(receiver: DtmfReceiver, arrivals: Iterable[Arrival]) -> list[tuple[int, DigitReceived]]:
    """Every digit the receiver reports, with the sequence number of the packet that revealed it."""
    reported = []
    for now, packet in arrivals:
        digit = receiver.receive(packet, now)
        if digit is not None:
            reported.append((packet.sequence_number, digit))
    return reported


def digits_of(reported: Sequence[tuple[int, DigitReceived]]) -> str:
    return "".join(digit.digit for _, digit in reported)


def test_table_5_gives_911_at_the_first_packets() -> None:
    assert feed(DtmfReceiver(payload_type=PT), table_5()) == [
        (1, DigitReceived(digit="9", code=9, duration_ms=50)),
        (7, DigitReceived(digit="1", code=1, duration_ms=50)),
        (14, DigitReceived(digit="1", code=1, duration_ms=50)),
    ]


def test_duplicated_packets() -> None:
    arrivals = [arrival for arrival in table_5() for _ in range(2)]
    assert digits_of(feed(DtmfReceiver(payload_type=PT), arrivals)) == "911"


def test_lost_start_reports_at_the_next_packet() -> None:
    arrivals = [a for a in table_5() if a[1].sequence_number not in {1, 2, 14}]
    assert feed(DtmfReceiver(payload_type=PT), arrivals) == [
        (3, DigitReceived(digit="9", code=9, duration_ms=150)),
        (7, DigitReceived(digit="1", code=1, duration_ms=50)),
        (15, DigitReceived(digit="1", code=1, duration_ms=100)),
    ]


def test_only_end_packets_arrive() -> None:
    arrivals = [a for a in table_5() if parse_event(a[1].payload).end]
    assert feed(DtmfReceiver(payload_type=PT), arrivals) == [
        (5, DigitReceived(digit="9", code=9, duration_ms=200)),
        (12, DigitReceived(digit="1", code=1, duration_ms=250)),
        (18, DigitReceived(digit="1", code=1, duration_ms=220)),
    ]


def test_lost_ends_do_not_merge_or_lose_presses() -> None:
    # no E bit ever arrives: the two presses of "1" still have their own timestamps
    arrivals = [a for a in table_5() if not parse_event(a[1].payload).end]
    assert digits_of(feed(DtmfReceiver(payload_type=PT), arrivals)) == "911"


def test_late_end_retransmissions_after_the_next_press() -> None:
    arrivals = table_5()
    # the end packets of the first "1" (sequence numbers 12, 13) arrive after the second began
    late = [a for a in arrivals if a[1].sequence_number in {12, 13}]
    reordered = [a for a in arrivals if a not in late]
    reordered[12:12] = [(1.46, packet) for _, packet in late]
    assert [a[1].sequence_number for a in reordered[11:15]] == [14, 12, 13, 15]
    assert digits_of(feed(DtmfReceiver(payload_type=PT), reordered)) == "911"


def test_press_first_heard_after_the_next_one_began() -> None:
    # all of "9" is lost but one end retransmission, which arrives after the first "1" began:
    # the press was never reported, so it is reported now, late (RFC 4733 s2.5.2.2)
    arrivals = table_5()
    nine_end = arrivals[4]
    rest = [a for a in arrivals if a[1].timestamp != 0]
    reported = feed(DtmfReceiver(payload_type=PT), [*rest[:2], (1.0, nine_end[1]), *rest[2:]])
    assert [(seq, digit.digit) for seq, digit in reported] == [(7, "1"), (5, "9"), (14, "1")]


def test_timestamp_wrap() -> None:
    base = 0xFFFFFFFF - 1000  # the "9" starts just before the 32-bit timestamp wraps
    arrivals = [
        (now, dataclasses.replace(p, timestamp=(p.timestamp + base) & 0xFFFFFFFF))
        for now, p in table_5()
    ]
    assert arrivals[6][1].timestamp == 6039  # the first "1" starts after the wrap
    assert digits_of(feed(DtmfReceiver(payload_type=PT), arrivals)) == "911"


def test_same_timestamp_other_source() -> None:
    receiver = DtmfReceiver(payload_type=PT)
    first = table_5()[0][1]
    assert receiver.receive(first, 0.0) is not None
    assert receiver.receive(dataclasses.replace(first, ssrc=SSRC + 1), 0.0) is not None
    assert receiver.receive(dataclasses.replace(first, ssrc=SSRC + 1), 0.0) is None


def test_same_timestamp_other_code_is_not_a_new_press() -> None:
    receiver = DtmfReceiver(payload_type=PT)
    first = table_5()[0][1]
    assert receiver.receive(first, 0.0) is not None
    other = dataclasses.replace(first, payload=DtmfEvent(event=5, duration=800).serialize())
    assert receiver.receive(other, 0.05) is None


def event_packet(timestamp: int, event: DtmfEvent, *, pt: int = PT) -> RtpPacket:
    return RtpPacket(
        payload_type=pt,
        sequence_number=1,
        timestamp=timestamp,
        ssrc=SSRC,
        payload=event.serialize(),
    )


def test_ignored_reports() -> None:
    receiver = DtmfReceiver(payload_type=PT)
    # flash (code 16) and other non-DTMF events
    assert receiver.receive(event_packet(0, DtmfEvent(event=16, duration=800)), 0.0) is None
    assert receiver.receive(event_packet(0, DtmfEvent(event=66, duration=800)), 0.0) is None
    # RFC 4733 s2.3.5: a zero duration marks a state; DTMF is not one
    assert receiver.receive(event_packet(0, DtmfEvent(event=1)), 0.0) is None
    # audio sharing the stream
    assert receiver.receive(event_packet(0, DtmfEvent(event=1, duration=1), pt=0), 0.0) is None
    assert receiver.remembered == 0
    # and the digit is still reported when its first real report comes
    assert receiver.receive(event_packet(0, DtmfEvent(event=1, duration=160)), 0.02) == (
        DigitReceived(digit="1", code=1, duration_ms=20)
    )


def test_without_payload_type_every_packet_is_an_event() -> None:
    # for callers that route by payload type themselves
    receiver = DtmfReceiver()
    assert receiver.receive(event_packet(50_000, DtmfEvent(event=1, duration=160), pt=96), 0.0)
    assert digits_of(feed(receiver, [(now + 10, p) for now, p in table_5()])) == "911"


def test_malformed_payload_raises() -> None:
    packet = RtpPacket(payload_type=PT, sequence_number=1, timestamp=0, ssrc=1, payload=b"\x01")
    with pytest.raises(MediaError):
        DtmfReceiver(payload_type=PT).receive(packet, 0.0)
    # a malformed packet of another payload type is not ours to judge
    assert (
        DtmfReceiver(payload_type=PT).receive(dataclasses.replace(packet, payload_type=0), 0.0)
        is None
    )


def test_clock_rate_scales_duration() -> None:
    receiver = DtmfReceiver(payload_type=PT, clock_rate=48000)
    assert receiver.receive(event_packet(0, DtmfEvent(event=3, duration=4800)), 0.0) == (
        DigitReceived(digit="3", code=3, duration_ms=100)
    )
    with pytest.raises(ValueError, match="clock rate"):
        DtmfReceiver(payload_type=PT, clock_rate=0)


def test_memory_is_bounded() -> None:
    receiver = DtmfReceiver(payload_type=PT, max_events=8)
    for index in range(20):
        event = DtmfEvent(event=index % 16, duration=160)
        assert receiver.receive(event_packet(index * 4000, event), index * 0.5) is not None
    assert receiver.remembered == 8


def test_forgets_after_memory_time() -> None:
    receiver = DtmfReceiver(payload_type=PT, memory_s=5.0)
    end = event_packet(0, DtmfEvent(event=4, end=True, duration=800))
    assert receiver.receive(end, 0.0) is not None
    assert receiver.receive(end, 5.0) is None  # a retransmission within memory
    assert receiver.remembered == 1
    silence = event_packet(0, DtmfEvent(event=16, duration=8), pt=PT)
    receiver.receive(silence, 10.1)  # any telephone-event packet lets it forget
    assert receiver.remembered == 0


# --- long presses (RFC 4733 s2.5.1.3, s2.5.2.3) ------------------------------------------------


def send(
    packets: Iterable[DtmfPacket], *, base: int = 1000, ssrc: int = SSRC, start_s: float = 0.0
) -> list[Arrival]:
    """The RTP packets a caller builds from the sender's schedule, stamped with arrival times."""
    return [
        (
            start_s + packet.send_at_ms / 1000,
            RtpPacket(
                payload_type=PT,
                sequence_number=(index + 1) & 0xFFFF,
                timestamp=(base + packet.timestamp_offset) & 0xFFFFFFFF,
                ssrc=ssrc,
                marker=packet.marker,
                payload=packet.event.serialize(),
            ),
        )
        for index, packet in enumerate(packets)
    ]


@pytest.mark.parametrize("clock_rate", [8000, 16000, 48000])
def test_ten_second_press_is_one_digit(clock_rate: int) -> None:
    packets = DtmfSender(clock_rate=clock_rate).packets("5", duration_ms=10_000)
    offsets = sorted({p.timestamp_offset for p in packets})
    assert len(offsets) == -(-10_000 * clock_rate // 1000 // 0xFFFF)  # several segments
    assert offsets == [n * 0xFFFF for n in range(len(offsets))]
    assert (
        digits_of(feed(DtmfReceiver(payload_type=PT, clock_rate=clock_rate), send(packets))) == "5"
    )


def test_long_press_with_every_segment_end_lost() -> None:
    packets = DtmfSender(clock_rate=48000).packets("0", duration_ms=5000)
    kept = [p for p in packets if p.event.duration < 0xFFFF - 48 * 200]
    assert len({p.timestamp_offset for p in kept}) == 4
    receiver = DtmfReceiver(payload_type=PT, clock_rate=48000)
    assert digits_of(feed(receiver, send(kept, base=0xFFFFFFFF - 100_000))) == "0"


def test_adjacent_shorter_segments_continue() -> None:
    # RFC 4733 s2.5.2.3.1: with RFC 2198 redundancy, segments end at 0x3FFF or less; adjacency of
    # unended reports of the same code is what counts
    receiver = DtmfReceiver(payload_type=PT)
    assert receiver.receive(event_packet(0, DtmfEvent(event=7, duration=0x3FFF)), 0.0)
    assert receiver.receive(event_packet(0x3FFF, DtmfEvent(event=7, duration=400)), 2.1) is None
    end = DtmfEvent(event=7, end=True, duration=800)
    assert receiver.receive(event_packet(0x3FFF, end), 2.2) is None
    # an ended press of the same digit is not continued, even when the next starts right after
    assert receiver.receive(event_packet(0x3FFF + 800, DtmfEvent(event=7, duration=160)), 2.3)
    # and another digit starting where an unended one stops is its own press
    assert receiver.receive(event_packet(0x3FFF + 960, DtmfEvent(event=8, duration=160)), 2.4)


# --- sender ------------------------------------------------------------------------------------


def rows(packets: Iterable[DtmfPacket], start_ms: int, timestamp: int) -> list[tuple[int, ...]]:
    """The sender's packets as Table 5 rows (without sequence numbers, which the caller adds)."""
    return [
        (
            start_ms + p.send_at_ms,
            int(p.marker),
            timestamp + p.timestamp_offset,
            p.event.event,
            p.event.duration,
            int(p.event.end),
        )
        for p in packets
    ]


def test_sender_reproduces_table_5() -> None:
    sender = DtmfSender()
    table = [(ms, m, ts, code, duration, e) for ms, m, ts, _, code, duration, e in TABLE_5]
    second_one = sender.packets("1", duration_ms=220, volume=0, ptime_ms=50)
    assert rows(second_one, 1400, 11200) == table[13:]
    # for "9" and the first "1" the sender knows the end in advance and sets the E bit on the
    # first transmission of the final report, which Table 5 shows deferred (s2.5.1.4 allows both)
    late_e = {3, 10}
    expected = [(*row[:5], 1) if index in late_e else row for index, row in enumerate(table[:13])]
    nine = sender.packets("9", duration_ms=200, volume=0, ptime_ms=50)
    first_one = sender.packets("1", duration_ms=250, volume=0, ptime_ms=50)
    assert rows(nine, 0, 0) + rows(first_one, 880, 7040) == expected


def test_sender_defaults() -> None:
    packets = DtmfSender().packets("#")
    assert [p.send_at_ms for p in packets] == list(range(20, 320, 20))
    assert [p.event.duration for p in packets] == [*range(160, 2000, 160), 2000, 2000, 2000]
    assert [p.marker for p in packets] == [True] + [False] * 14
    assert [p.event.end for p in packets] == [False] * 12 + [True] * 3
    assert {(p.event.event, p.event.volume, p.timestamp_offset) for p in packets} == {(11, 10, 0)}


def test_press_shorter_than_a_packet() -> None:
    packets = DtmfSender().packets("d", duration_ms=5, ptime_ms=20)
    assert [(p.send_at_ms, p.marker, p.event.duration, p.event.end) for p in packets] == [
        (20, True, 40, True),
        (40, False, 40, True),
        (60, False, 40, True),
    ]


def test_press_of_exactly_the_largest_duration() -> None:
    # at a 5 kHz clock 13107 ms is exactly 0xFFFF units: one segment, ended
    packets = DtmfSender(clock_rate=5000).packets("2", duration_ms=13107)
    assert {p.timestamp_offset for p in packets} == {0}
    assert [(p.event.duration, p.event.end) for p in packets[-3:]] == [(0xFFFF, True)] * 3


def test_press_one_unit_longer_than_a_segment() -> None:
    # at 16 kHz 4096 ms is 0x10000 units: a full segment, then a segment of one unit
    packets = DtmfSender(clock_rate=16000).packets("2", duration_ms=4096)
    second = [p for p in packets if p.timestamp_offset == 0xFFFF]
    assert [(p.event.duration, p.event.end, p.marker) for p in second] == [(1, True, False)] * 3
    segment_ends = [p for p in packets if p.event.duration == 0xFFFF]
    assert len(segment_ends) == 3
    assert not any(p.event.end or p.marker for p in segment_ends)


def test_segment_end_is_sent_three_times_interleaved() -> None:
    packets = DtmfSender().packets("3", duration_ms=8300)
    boundary = [(p.send_at_ms, p.timestamp_offset, p.event.duration) for p in packets[408:415]]
    assert boundary == [
        (8180, 0, 65440),
        (8200, 0, 0xFFFF),  # the first segment ends ...
        (8200, 0xFFFF, 65),  # ... and the next begins, on the same tick
        (8220, 0, 0xFFFF),
        (8220, 0xFFFF, 225),
        (8240, 0, 0xFFFF),
        (8240, 0xFFFF, 385),
    ]
    assert [p.marker for p in packets].count(True) == 1
    assert [p.event.end for p in packets].count(True) == 3


def test_sequence() -> None:
    packets = DtmfSender().sequence("12", duration_ms=100, gap_ms=60)
    starts = [(p.send_at_ms, p.timestamp_offset) for p in packets if p.marker]
    assert starts == [(20, 0), (180, 1280)]
    assert [p.send_at_ms for p in packets] == sorted(p.send_at_ms for p in packets)
    assert DtmfSender().sequence("") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"digit": "x"}, "not a DTMF digit"),
        ({"digit": "1", "duration_ms": 0}, "positive"),
        ({"digit": "1", "ptime_ms": 0}, "positive"),
        ({"digit": "1", "volume": 64}, "volume 64"),
        ({"digit": "1", "volume": -1}, "volume -1"),
    ],
)
def test_sender_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DtmfSender().packets(**kwargs)  # type: ignore[arg-type]


def test_sender_rejects_settings() -> None:
    with pytest.raises(ValueError, match="clock rate"):
        DtmfSender(clock_rate=8001)
    with pytest.raises(ValueError, match="clock rate"):
        DtmfSender(clock_rate=0)
    with pytest.raises(ValueError, match="negative gap"):
        DtmfSender().sequence("1", gap_ms=-1)


# --- sender -> receiver, with loss, duplication and reordering within a press -----------------


@FUZZ
@given(
    digits=st.text(alphabet=DIGITS + "abcd", min_size=1, max_size=8),
    duration_ms=st.integers(10, 1500),
    gap_ms=st.integers(40, 500),
    ptime_ms=st.sampled_from([10, 20, 30, 50]),
    clock_rate=st.sampled_from([8000, 16000, 48000]),
    base=st.integers(0, 0xFFFFFFFF),
    fate=st.lists(st.sampled_from(["keep", "keep", "keep", "lose", "twice"]), min_size=1),
    swap=st.booleans(),
)
def test_round_trip(
    *,
    digits: str,
    duration_ms: int,
    gap_ms: int,
    ptime_ms: int,
    clock_rate: int,
    base: int,
    fate: list[str],
    swap: bool,
) -> None:
    sender = DtmfSender(clock_rate=clock_rate)
    packets = sender.sequence(digits, duration_ms=duration_ms, gap_ms=gap_ms, ptime_ms=ptime_ms)
    arrivals: list[Arrival] = []
    for index, arrival in enumerate(send(packets, base=base)):
        what = fate[index % len(fate)]
        if what != "lose":
            arrivals.extend([arrival] * (2 if what == "twice" else 1))
    if swap and len(arrivals) > 2:
        # two neighbours change places
        a, b = arrivals[1], arrivals[2]
        arrivals[1], arrivals[2] = (a[0], b[1]), (b[0], a[1])
    # each press that left any packet is reported once, when its first packet arrives
    press_of = {
        p.timestamp_offset: digit.upper()
        for digit, p in zip(digits, (p for p in packets if p.marker), strict=True)
    }
    expected: list[tuple[int, str]] = []
    for _, packet in arrivals:
        offset = (packet.timestamp - base) & 0xFFFFFFFF
        press = max(o for o in press_of if o <= offset)
        if press not in [seen for seen, _ in expected]:
            expected.append((press, press_of[press]))
    reported = feed(DtmfReceiver(payload_type=PT, clock_rate=clock_rate), arrivals)
    assert digits_of(reported) == "".join(digit for _, digit in expected)


# --- in-band DTMF (ITU-T Q.23) -----------------------------------------------------------------

Q23 = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633),
}  # fmt: skip


def silence(ms: int, rate: int) -> NDArray[np.int16]:
    return np.zeros(ms * rate // 1000, dtype=np.int16)


def keyed(digits: str, rate: int, *, on_ms: int = 100, off_ms: int = 100) -> NDArray[np.int16]:
    parts = [silence(off_ms, rate)]
    for digit in digits:
        parts += [dtmf_tone(digit, sample_rate=rate, duration_ms=on_ms), silence(off_ms, rate)]
    return np.concatenate(parts)


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
@pytest.mark.parametrize("digit", list(DIGITS))
def test_tone_has_the_q23_pair(digit: str, rate: int) -> None:
    tone = dtmf_tone(digit, sample_rate=rate, duration_ms=1000)
    assert tone.dtype == np.int16
    assert len(tone) == rate
    spectrum = np.abs(np.fft.rfft(tone.astype(np.float64)))  # 1 Hz bins over one second
    peaks = sorted(int(f) for f in np.argsort(spectrum)[-2:])
    assert tuple(peaks) == Q23[digit]
    # each tone at -10 dBm0: |X| = A * N / 2
    assert spectrum[peaks] == pytest.approx(dbm0_to_amplitude(-10.0) * rate / 2, rel=1e-3)
    assert detect_digits(tone, rate) == digit


@pytest.mark.parametrize("rate", [8000, 16000])
def test_all_digits_in_a_row(rate: int) -> None:
    assert detect_digits(keyed(DIGITS, rate), rate) == DIGITS


@pytest.mark.parametrize("rate", [8000, 16000])
def test_repeated_digit_at_the_q24_minimum(rate: int) -> None:
    # ITU-T Q.24 Table A-1: 40 ms signals with 40 ms pauses
    assert detect_digits(keyed("1133#", rate, on_ms=40, off_ms=40), rate) == "1133#"


def test_detected_through_g711_at_a_low_level() -> None:
    pcm = np.concatenate(
        [
            silence(50, 8000),
            dtmf_tone("7", sample_rate=8000, duration_ms=80, level_dbm0=-25.0),
            silence(60, 8000),
            dtmf_tone("#", sample_rate=8000, duration_ms=80, level_dbm0=-25.0),
        ]
    )
    for encode, decode in [
        (g711.ulaw_encode, g711.ulaw_decode),
        (g711.alaw_encode, g711.alaw_decode),
    ]:
        line = np.frombuffer(decode(encode(pcm.astype("<i2").tobytes())), dtype="<i2")
        assert detect_digits(line.astype(np.int16), 8000) == "7#"


def test_detected_in_noise() -> None:
    rng = np.random.default_rng(4733)
    pcm = keyed("2580", 8000, on_ms=60, off_ms=50).astype(np.float64)
    noisy = pcm + rng.normal(0.0, 300.0, len(pcm))  # about 24 dB below the tones
    assert detect_digits(noisy.astype(np.int16), 8000) == "2580"


def tones(*pairs: tuple[int, float], rate: int = 8000, ms: int = 500) -> NDArray[np.int16]:
    """Sines of (frequency, level in dBm0), summed."""
    total = np.zeros(ms * rate // 1000, dtype=np.int64)
    for frequency, level in pairs:
        total += sine_sum(
            (frequency,),
            amplitude=dbm0_to_amplitude(level),
            sample_rate=rate,
            samples=len(total),
        )
    return total.astype(np.int16)


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize(
    "signal",
    [
        pytest.param(((1000, -5.0),), id="1kHz"),
        pytest.param(((697, -10.0),), id="single-row-tone"),
        pytest.param(((1336, -10.0),), id="single-column-tone"),
        pytest.param(((770, -45.0), (1336, -45.0)), id="too-quiet"),
        pytest.param(((697, -10.0), (770, -10.0), (1209, -10.0)), id="two-rows"),
        pytest.param(((697, -10.0), (1209, -10.0), (1336, -10.0)), id="two-columns"),
        pytest.param(((852, -20.0), (1477, -10.0)), id="forward-twist-10dB"),
        pytest.param(((852, -10.0), (1477, -20.0)), id="reverse-twist-10dB"),
        pytest.param(((941, -10.0), (1209, -10.0), (2500, -4.0)), id="loud-third-tone"),
        pytest.param(((350, -13.0), (440, -13.0)), id="dial-tone"),
        pytest.param(((480, -10.0), (620, -10.0)), id="busy-tone"),
    ],
)
def test_not_dtmf(signal: tuple[tuple[int, float], ...], rate: int) -> None:
    assert detect_digits(tones(*signal, rate=rate), rate) == ""


def test_twist_within_limits_is_accepted() -> None:
    # 3 dB forward and 6 dB reverse twist are normal on real lines
    assert detect_digits(tones((852, -13.0), (1477, -10.0)), 8000) == "9"
    assert detect_digits(tones((852, -10.0), (1477, -16.0)), 8000) == "9"


@pytest.mark.parametrize("rate", [8000, 16000])
def test_white_noise_is_not_dtmf(rate: int) -> None:
    rng = np.random.default_rng(2833)
    for sigma in (100.0, 3000.0, 12000.0):
        noise = np.clip(rng.normal(0.0, sigma, 5 * rate), -32768, 32767).astype(np.int16)
        assert detect_digits(noise, rate) == ""


def test_speech_like_harmonics_are_not_dtmf() -> None:
    # a voiced sound: harmonics of a gliding 90-150 Hz pitch, 1/k amplitudes, and one whose
    # steady pitch puts harmonics right on 697 and 1394 Hz
    rate = 8000
    t = np.arange(4 * rate) / rate
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.7 * t)) / rate
    gliding = sum(np.sin(k * phase) / k for k in range(1, 30))
    steady = sum(np.sin(2 * np.pi * k * 232.33 * t) / k for k in range(1, 15))
    for voice in (gliding, steady):
        pcm = (voice * 6000 / np.max(np.abs(voice))).astype(np.int16)
        assert detect_digits(pcm, rate) == ""


def test_too_short_or_empty() -> None:
    assert detect_digits(np.zeros(0, dtype=np.int16), 8000) == ""
    assert detect_digits(dtmf_tone("5", sample_rate=8000, duration_ms=20), 8000) == ""


def test_dtmf_tone_rejects() -> None:
    with pytest.raises(ValueError, match="not a DTMF digit"):
        dtmf_tone("E", sample_rate=8000, duration_ms=100)
    with pytest.raises(ValueError, match="clip"):
        dtmf_tone("1", sample_rate=8000, duration_ms=100, level_dbm0=0.0)
    with pytest.raises(ValueError, match="cannot be sampled"):
        dtmf_tone("D", sample_rate=3000, duration_ms=100)
