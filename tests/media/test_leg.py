"""`RtpLeg` in memory: datagrams and time in, datagrams and events out, no socket, no loop.

A `Phone` builds the peer's packets; `now` is a number the test moves. A note on counting:
`RtpReceiver` keeps a new source on probation until MIN_SEQUENTIAL (2) packets in sequence
arrived (RFC 3550 A.1), so the first packet of every stream is accepted (latching, statistics,
events) but neither forwarded nor buffered.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np
import pytest

from sipbridge.media import codecs
from sipbridge.media.dtmf import DtmfSender, detect_digits, parse_event
from sipbridge.media.errors import MediaError
from sipbridge.media.leg import (
    MEDIA_TIMEOUT_INITIAL_S,
    MEDIA_TIMEOUT_S,
    DtmfReceived,
    FirstPacket,
    MediaTimedOut,
    RtpLeg,
    StreamConfig,
)
from sipbridge.media.players import PcmPlayer
from sipbridge.media.room_audio import RoomAudio
from sipbridge.media.rtp import (
    ReceiverReport,
    ReportBlock,
    RtpPacket,
    SenderInfo,
    SenderReport,
    SourceDescription,
    parse_rtcp,
    parse_rtp,
    serialize_rtcp,
)
from sipbridge.media.session import MIN_SEQUENTIAL
from sipbridge.media.srtp import SrtpContext, SrtpKeys
from sipbridge.media.tones import RINGBACK_US

FRAME = 160
PHONE = ("192.0.2.10", 4000)
OTHER = ("192.0.2.10", 4002)
STRANGER = ("198.51.100.7", 4000)
EVENT_PT = 101


class Clock:
    """The shared clock as rooms see it: which rooms it ticks."""

    def __init__(self) -> None:
        self.rooms: set[RoomAudio] = set()

    def add(self, room: RoomAudio) -> None:
        self.rooms.add(room)

    def discard(self, room: RoomAudio) -> None:
        self.rooms.discard(room)


class Phone:
    """The far end of one leg: numbers its packets like a real RTP stack."""

    def __init__(self, address: tuple[str, int] = PHONE, ssrc: int = 0x1234) -> None:
        self.address = address
        self.ssrc = ssrc
        self.sequence = 100
        self.timestamp = 5000

    def packet(
        self, payload: bytes, *, payload_type: int = 0, samples: int = FRAME, marker: bool = False
    ) -> RtpPacket:
        packet = RtpPacket(
            payload_type=payload_type,
            sequence_number=self.sequence,
            timestamp=self.timestamp,
            ssrc=self.ssrc,
            payload=payload,
            marker=marker,
        )
        self.sequence = (self.sequence + 1) % 65536
        self.timestamp = (self.timestamp + samples) % 2**32
        return packet

    def rtp(self, payload: bytes, **fields: Any) -> bytes:
        return self.packet(payload, **fields).serialize()


def stream(**fields: Any) -> StreamConfig:
    values: dict[str, Any] = {"audio_pt": 0, "event_pt": EVENT_PT, "remote": PHONE}
    values.update(fields)
    return StreamConfig(**values)


def leg(spec: codecs.CodecSpec = codecs.PCMU_SPEC, **fields: Any) -> RtpLeg:
    srtp = fields.pop("srtp", None)
    return RtpLeg(spec, stream(**fields), srtp=srtp, ssrc=0xABCD, cname="leg")


def tone(frequency: float, samples: int, rate: int = 8000, start: int = 0) -> np.ndarray:
    t = (np.arange(samples) + start) / rate
    return (np.sin(2 * np.pi * frequency * t) * 16000).astype(np.int16)


def pcmu(frequency: float, index: int, samples: int = FRAME) -> bytes:
    return codecs.ulaw_encode_array(tone(frequency, samples, start=index * samples))


def sent(rtp_leg: RtpLeg, now: float = 0.0) -> list[RtpPacket]:
    out = rtp_leg.datagrams_to_send(now)
    assert all(not control for _, _, control in out)
    return [parse_rtp(data) for data, _, _ in out]


def events(rtp_leg: RtpLeg) -> list[object]:
    found = []
    while (event := rtp_leg.next_event()) is not None:
        found.append(event)
    return found


def room_of(*legs: RtpLeg) -> tuple[RoomAudio, Clock]:
    clock = Clock()
    room = RoomAudio("room", clock)
    for member in legs:
        room.add(member)
    return room, clock


# -- forwarding --------------------------------------------------------------------------------


def test_forwarding_rewrites_the_header_and_keeps_the_payload() -> None:
    a, b = leg(), leg()
    b.sender.ssrc = 0xBBBB
    _, clock = room_of(a, b)
    assert a.forward_to == [b] and b.forward_from is a and not clock.rooms
    phone = Phone()
    first_sequence, first_timestamp = b.sender.sequence_number, b.sender.timestamp
    packets = [phone.packet(pcmu(440, i), marker=i == 0) for i in range(6)]
    for index, packet in enumerate(packets):
        a.receive(packet.serialize(), PHONE, index * 0.02)
    received = sent(b)
    forwarded = packets[MIN_SEQUENTIAL - 1 :]
    assert [p.payload for p in received] == [p.payload for p in forwarded]
    assert {p.ssrc for p in received} == {0xBBBB}
    assert [p.sequence_number for p in received] == [(first_sequence + i) % 65536 for i in range(5)]
    assert received[0].timestamp == first_timestamp
    assert [q.timestamp - p.timestamp for p, q in itertools.pairwise(received)] == [FRAME] * 4
    assert [p.marker for p in received] == [True, False, False, False, False]
    assert b.stats.forwarded == 5 == b.stats.packets_out and a.stats.packets_in == 6
    assert a.datagrams_to_send(1.0) == []  # nothing went back to the phone


def test_pcmu_is_translated_to_pcma_by_table() -> None:
    a, b = leg(), leg(codecs.PCMA_SPEC, audio_pt=8)
    room_of(a, b)
    phone = Phone()
    payloads = [pcmu(440, i) for i in range(3)]
    for index, payload in enumerate(payloads):
        a.receive(phone.rtp(payload), PHONE, index * 0.02)
    received = sent(b)
    assert [p.payload_type for p in received] == [8, 8]
    assert [p.payload for p in received] == [
        codecs.transcode_g711(p, codecs.PCMU_SPEC, codecs.PCMA_SPEC) for p in payloads[1:]
    ]


def test_latching_and_hostile_input_are_counted_and_dropped() -> None:
    a = leg()
    phone = Phone()
    a.receive(phone.rtp(pcmu(440, 0)), PHONE, 0.0)
    assert a.latch.latched == PHONE
    a.receive(phone.rtp(pcmu(440, 1)), STRANGER, 0.02)  # another source, while the phone talks
    a.receive(b"\x80", PHONE, 0.04)  # too short for RTP
    a.receive(phone.rtp(b"x", payload_type=96), PHONE, 0.06)  # not negotiated
    a.receive(phone.rtp(b"\x00", payload_type=13), PHONE, 0.08)  # comfort noise: ignored
    stats = a.stats
    assert (stats.wrong_source, stats.malformed, stats.unknown_payload) == (1, 1, 1)
    assert stats.packets_in == 3
    assert events(a) == [FirstPacket(at=0.0)]  # once


def test_dtmf_from_the_phone_is_reported_once_per_key_press() -> None:
    a = leg()
    phone = Phone()
    for digit in "15":
        for packet in DtmfSender().packets(digit, duration_ms=100, ptime_ms=20):
            for _ in range(1 + packet.event.end * 2):  # the end packet three times
                a.receive(
                    RtpPacket(
                        payload_type=EVENT_PT,
                        sequence_number=phone.sequence,
                        timestamp=phone.timestamp,
                        ssrc=phone.ssrc,
                        payload=packet.event.serialize(),
                        marker=packet.marker,
                    ).serialize(),
                    PHONE,
                    0.5,
                )
            phone.sequence += 1
        phone.timestamp += 1600
    found = [e for e in events(a) if isinstance(e, DtmfReceived)]
    assert [e.digit for e in found] == ["1", "5"]
    a.receive(phone.rtp(b"\x01", payload_type=EVENT_PT), PHONE, 1.0)  # too short an event
    assert a.stats.malformed == 1 and events(a) == []


# -- SRTP ---------------------------------------------------------------------------------------


class BrokenSrtp(SrtpContext):
    """An SRTP context that refuses everything (libsrtp's errors are MediaError)."""

    def __init__(self) -> None:
        pass

    def _refuse(self, data: bytes) -> bytes:
        raise MediaError("refused")

    protect = unprotect = protect_rtcp = unprotect_rtcp = _refuse


def keys() -> SrtpKeys:
    return SrtpKeys.generate("AES_CM_128_HMAC_SHA1_80", os.urandom)


def test_srtp_both_ways_and_its_failures_counted() -> None:
    ours, theirs = keys(), keys()
    a = leg(srtp=SrtpContext(local=ours, remote=theirs))
    b = leg()
    room_of(a, b)
    phone_context = SrtpContext(local=theirs, remote=ours)
    phone = Phone()
    for index in range(3):
        a.receive(phone_context.protect(phone.rtp(pcmu(440, index))), PHONE, index * 0.02)
    assert len(sent(b)) == 2  # decrypted and forwarded in the clear
    other = Phone(OTHER)
    for index in range(3):
        b.receive(other.rtp(pcmu(440, index)), PHONE, index * 0.02)
    out = a.datagrams_to_send(0.1)
    assert [parse_rtp(phone_context.unprotect(d)).payload for d, _, _ in out] == [
        pcmu(440, 1),
        pcmu(440, 2),
    ]
    broken = leg(srtp=BrokenSrtp())
    room_of(broken, a)
    broken.receive(phone.rtp(pcmu(440, 9)), PHONE, 0.0)
    broken.receive_rtcp(serialize_rtcp([ReceiverReport(ssrc=1)]), PHONE, 0.0)
    for index in range(3):
        a.receive(phone_context.protect(phone.rtp(pcmu(440, index))), PHONE, 1 + index * 0.02)
    assert broken.stats.srtp_failed == 5 and broken.datagrams_to_send(1.1) == []
    broken.next_report_at = 1.0
    broken.report(2.0, 2.0)  # SRTCP refused: no report
    assert broken.stats.rtcp_out == 0


# -- RTCP ---------------------------------------------------------------------------------------


def sender_report(ssrc: int = 0x1234) -> SenderReport:
    return SenderReport(
        ssrc=ssrc,
        sender_info=SenderInfo(
            ntp_timestamp=1 << 32, rtp_timestamp=0, packet_count=1, octet_count=160
        ),
    )


def test_rtcp_reports_on_a_muxed_port() -> None:
    a = leg()
    phone = Phone()
    for index in range(3):
        a.receive(phone.rtp(pcmu(440, index)), PHONE, index * 0.02)
    a.receive(serialize_rtcp([sender_report()]), PHONE, 0.1)  # multiplexed (RFC 5761)
    a.receive(b"\x80\xc8\x00", PHONE, 0.1)  # an RTCP type, cut short
    assert (a.stats.rtcp_in, a.stats.rtcp_malformed) == (1, 1)
    a.report(1.0, 1e9)  # the first call only schedules (RFC 3550 s6.2: 2.5 s +-50%)
    assert 1.25 <= a.next_report_at - 1.0 <= 3.75 and a.datagrams_to_send(1.0) == []
    a.report(a.next_report_at - 0.01, 1e9)
    assert a.datagrams_to_send(1.0) == []
    a.report(a.next_report_at + 0.01, 1e9)
    ((data, destination, control),) = a.datagrams_to_send(5.0)
    assert destination == PHONE and control
    report, sdes = parse_rtcp(data)
    assert isinstance(report, ReceiverReport) and report.ssrc == 0xABCD  # we sent nothing
    assert isinstance(sdes, SourceDescription)
    assert [(c.ssrc, c.cname) for c in sdes.chunks] == [(0xABCD, "leg")]
    assert report.reports[0].ssrc == phone.ssrc
    a.send_pcm(None, 5.0)  # a frame of ours: the next report is an SR
    a.datagrams_to_send(5.0)
    a.report(a.next_report_at + 0.01, 1e9)
    ((data, _, _),) = a.datagrams_to_send(9.0)
    (report, _) = parse_rtcp(data)
    assert isinstance(report, SenderReport) and report.sender_info.packet_count == 1


def test_rtcp_on_its_own_port_and_from_the_wrong_host() -> None:
    a = leg(rtcp_mux=False, remote_rtcp=("192.0.2.99", 4001))
    phone = Phone()
    a.receive(phone.rtp(pcmu(440, 0)), PHONE, 0.0)
    a.receive_rtcp(serialize_rtcp([sender_report()]), STRANGER, 0.1)
    assert a.stats.wrong_source == 1 and a.stats.rtcp_in == 0
    a.receive_rtcp(serialize_rtcp([sender_report()]), (PHONE[0], 4001), 0.2)
    assert a.stats.rtcp_in == 1 and a.last_packet_at == 0.2
    a.report(0.0, 0.0)
    a.report(a.next_report_at, 1e9)
    ((_, destination, control),) = a.datagrams_to_send(5.0)
    assert destination == (PHONE[0], 4001) and control  # symmetric: the latched host
    nowhere = leg(remote=("", 0))
    nowhere.report(0.0, 0.0)
    nowhere.report(nowhere.next_report_at, 0.0)
    assert nowhere.datagrams_to_send(5.0) == [] and not nowhere.sending


def test_rtcp_from_a_stranger_before_any_rtp_does_not_keep_the_call_alive() -> None:
    a = leg(remote=("", 0))  # nothing latched, no address: RTCP from anyone is read
    a.receive_rtcp(serialize_rtcp([sender_report()]), STRANGER, 0.1)
    assert a.stats.rtcp_in == 1 and a.last_packet_at is None


# -- timers -------------------------------------------------------------------------------------


def test_timers_before_arming_and_on_hold() -> None:
    a = leg()
    assert a.get_timer() is None
    a.handle_timer(100.0)
    assert events(a) == []
    a.arm_timeout(0, 10.0)  # 0: the default
    assert a.timeout == MEDIA_TIMEOUT_S and a.get_timer() == 0.0  # the first report is due
    a.handle_timer(10.0)  # schedules reports
    assert a.get_timer() == pytest.approx(min(a.next_report_at, 10 + MEDIA_TIMEOUT_INITIAL_S))
    a.configure(stream(receives=False), 10.0)  # the phone holds: nothing is due
    assert a.get_timer() is None


def test_a_silent_leg_times_out_once() -> None:
    a = leg()
    a.arm_timeout(1.0, 0.0)
    a.next_report_at = 1e9
    a.handle_timer(0.5)
    assert events(a) == []
    a.handle_timer(2.0)
    assert events(a) == [MediaTimedOut(at=2.0, silent_for=2.0)]
    a.handle_timer(3.0)
    assert events(a) == [] and a.get_timer() is None


def test_the_timeout_counts_from_the_last_packet_and_is_patient_before_the_first() -> None:
    a = leg()
    a.arm_timeout(None, 0.0)
    a.next_report_at = 1e9
    a.handle_timer(MEDIA_TIMEOUT_S + 1)
    assert events(a) == []
    a.handle_timer(MEDIA_TIMEOUT_INITIAL_S + 1)
    assert [type(e) for e in events(a)] == [MediaTimedOut]
    b = leg()
    b.arm_timeout(1.0, 0.0)
    b.next_report_at = 1e9
    b.receive(Phone().rtp(pcmu(440, 0)), PHONE, 5.0)
    b.handle_timer(5.9)
    assert events(b) == [FirstPacket(at=5.0)]
    b.handle_timer(6.1)
    (timed_out,) = events(b)
    assert isinstance(timed_out, MediaTimedOut)
    assert (timed_out.at, timed_out.silent_for) == (6.1, pytest.approx(1.1))


def test_after_a_long_hold_the_timeout_counts_from_the_resume() -> None:
    a = leg()
    started = 50.0
    a.begin(started)
    a.arm_timeout(1.0, started)
    assert a.last_packet_at is None
    a.next_report_at = 1e9
    a.configure(stream(receives=False), started + 1)  # the phone holds (sendonly from it)
    a.handle_timer(started + 100)
    assert events(a) == []  # on hold: exempt
    a.configure(stream(), started + 100)  # resumed 100 s later
    assert a.last_packet_at == started + 100
    a.handle_timer(started + 100.9)
    assert events(a) == []
    a.handle_timer(started + 101.1)
    assert [type(e) for e in events(a)] == [MediaTimedOut]


# -- mixing, players, DTMF out ------------------------------------------------------------------


def test_mixed_frames_are_stamped_one_frame_apart_on_the_clock() -> None:
    a = leg()
    room, clock = room_of(a)  # alone in its room: it mixes (silence) on the clock
    assert a.mixing and clock.rooms == {room}
    for index in range(7):
        room.tick(1.0 + index * 0.02)  # the clock's scheduled times, however late it ran
    packets = sent(a)
    assert [(q.timestamp - p.timestamp) % 2**32 for p, q in itertools.pairwise(packets)] == [
        FRAME
    ] * 6
    assert packets[0].marker and not any(p.marker for p in packets[1:])
    assert packets[0].payload == codecs.silence_payload(codecs.PCMU_SPEC, 20)


def test_three_legs_mix_and_a_30_ms_source_keeps_its_pace() -> None:
    a, b, c = leg(), leg(), leg(codecs.G722_SPEC, audio_pt=9)
    room, clock = room_of(a, b, c)
    assert {a.mixing, b.mixing, c.mixing} == {True} and clock.rooms == {room}
    phone = Phone()
    now = 0.0
    for index in range(30):  # 30 ms packets into a 20 ms clock
        if index % 2 == 0:
            for _ in range(1 if index % 6 else 2):
                a.receive(phone.rtp(pcmu(440, index, samples=240), samples=240), PHONE, now)
        room.tick(now)
        now += 0.02
    heard = sent(c)
    assert len(heard) == 30
    decoder = codecs.new_decoder(codecs.G722_SPEC)
    pcm = np.concatenate([decoder.decode(p.payload) for p in heard])
    assert float(np.abs(pcm).max()) > 3000  # the 8 kHz tone, resampled to 16 kHz, heard
    assert b.stats.mixed_frames == 30 and a.stats.mixed_frames == 30


def test_an_undecodable_frame_is_concealed() -> None:
    a, b = leg(codecs.OPUS_SPEC, audio_pt=111), leg(codecs.OPUS_SPEC, audio_pt=111)
    c = leg()
    room, _ = room_of(a, b, c)
    phone = Phone()
    for index in range(8):
        a.receive(phone.rtp(b"\xff" * 3, payload_type=111, samples=960), PHONE, index * 0.02)
        room.tick(index * 0.02 + 0.01)
    assert a.stats.malformed >= 1


def test_a_prompt_switches_the_leg_to_the_clock_while_it_plays() -> None:
    a, b = leg(), leg()
    room, clock = room_of(a, b)
    done: list[str] = []
    b.play(PcmPlayer(tone(1000, 3 * FRAME + 10), done=lambda: done.append("done")))
    assert b.mixing and b.forward_from is None and clock.rooms == {room}
    for index in range(6):
        room.tick(index * 0.02)
    assert done == ["done"] and not b.mixing and b.forward_from is a and not clock.rooms
    heard = sent(b)
    assert len(heard) == 5  # four frames of prompt, then the frame that found it done
    b.play(PcmPlayer(tone(1000, FRAME)))
    b.stop_players()
    assert not b.mixing


def test_a_prompt_whose_end_stops_the_players_ends_the_tick_cleanly() -> None:
    """A wrong PIN's prompt hangs up when it ends: its done callback clears the players while
    the tick is still taking the finished prompt off them."""
    a, b = leg(), leg()
    room, _ = room_of(a, b)
    after = PcmPlayer(tone(1000, FRAME))
    b.play(PcmPlayer(tone(1000, FRAME), done=b.stop_players))
    b.play(after)
    for index in range(3):
        room.tick(index * 0.02)
    assert not b.players and after.position == 0  # the rest went with the hang-up
    assert len(sent(b)) == 2  # the prompt's frame, then the frame that found it done


def test_dtmf_to_the_phone_as_rfc_4733_events_then_back_to_forwarding() -> None:
    a, b = leg(), leg()
    room, _ = room_of(a, b)
    b.send_dtmf("1x#")  # x: not a digit, skipped
    assert b.mixing
    now = 0.0
    while b.local_audio:
        room.tick(now)
        now += 0.02
    assert not b.mixing and b.forward_from is a
    packets = sent(b)
    events_sent = [parse_event(p.payload) for p in packets if p.payload_type == EVENT_PT]
    assert {e.event for e in events_sent} == {1, 11}
    assert [p.marker for p in packets if p.payload_type == EVENT_PT].count(True) == 2


def test_dtmf_without_telephone_event_is_an_in_band_tone_and_w_pauses() -> None:
    a = leg(event_pt=None)
    room, _ = room_of(a)
    a.send_dtmf("w5")
    now = 0.0
    while a.local_audio:
        room.tick(now)
        now += 0.02
    assert now >= (500 + 250 + 250) / 1000  # the pause, the digit, the gap after it
    decoder = codecs.new_decoder(codecs.PCMU_SPEC)
    pcm = np.concatenate([decoder.decode(p.payload) for p in sent(a)])
    assert detect_digits(pcm, 8000) == "5"


def test_play_to_room_replaces_the_phone_for_its_listeners() -> None:
    a, b = leg(), leg()
    room, clock = room_of(a, b)
    a.play_to_room(RINGBACK_US)
    assert b.mixing and not a.forwardable and clock.rooms == {room}
    room.tick(0.0)
    assert len(sent(b)) == 1
    a.play_to_room(None)
    assert a.forwardable and b.forward_from is a and not clock.rooms


def test_hold_stops_our_audio_and_a_codec_change_keeps_the_stream() -> None:
    a, b = leg(), leg()
    room_of(a, b)
    b.configure(stream(sends=False), 0.0)  # the phone of b holds us: we send nothing
    assert not b.sending and a.forward_to == []
    b.configure(stream(), 1.0)
    assert b.sending and a.forward_to == [b]
    before = b.sender.ssrc
    b.change_codec(codecs.PCMA_SPEC)
    b.configure(stream(audio_pt=8), 1.0)
    phone = Phone()
    for index in range(3):
        a.receive(phone.rtp(pcmu(440, index)), PHONE, 2 + index * 0.02)
    out = sent(b)
    assert {p.ssrc for p in out} == {before} and {p.payload_type for p in out} == {8}


def test_close_leaves_the_room() -> None:
    a, b = leg(), leg()
    room, _ = room_of(a, b)
    a.arm_timeout(1.0, 0.0)
    a.close()
    assert list(room.legs) == [b] and a.room is None and a.get_timer() is None
    b.close()
    assert list(room.legs) == []


def test_a_driver_may_take_rtp_as_it_is_made() -> None:
    a, b = leg(), leg()
    room_of(a, b)
    taken: list[tuple[bytes, tuple[str, int]]] = []
    b.rtp_sink = lambda data, destination: taken.append((data, destination))
    phone = Phone()
    for index in range(3):
        a.receive(phone.rtp(pcmu(440, index)), PHONE, index * 0.02)
    assert [destination for _, destination in taken] == [PHONE, PHONE]
    assert b.datagrams_to_send(1.0) == [] and b.stats.packets_out == 2


# -- levels and the peer's reports, for active speakers and connection quality -------------------


def test_the_levels_of_what_a_phone_sends_are_kept_while_in_a_room() -> None:
    a, b = leg(), leg()
    phone = Phone()
    a.receive(phone.rtp(pcmu(440, 0)), PHONE, 0.0)
    a.receive(phone.rtp(pcmu(440, 1)), PHONE, 0.02)
    assert a.levels.read() == []  # in no room: nobody would read them
    room_of(a, b)
    for index in range(2, 5):
        a.receive(phone.rtp(pcmu(440, index)), PHONE, index * 0.02)
    a.receive(phone.rtp(b"\xff" * FRAME), PHONE, 0.1)
    a.receive(phone.rtp(bytes(4), payload_type=EVENT_PT), PHONE, 0.12)  # not audio
    levels = a.levels.read()
    # a sine of amplitude 16000: -9 dBov; then silence
    assert levels == [(9, 20.0)] * 3 + [(127, 20.0)]
    assert a.levels.read() == []


def test_a_mixed_g722_leg_measures_what_it_decodes() -> None:
    a, b, c = leg(codecs.G722_SPEC, audio_pt=9), leg(), leg()
    room, _ = room_of(a, b, c)
    assert a.levels.payload_queue() is None
    encoder = codecs.new_encoder(codecs.G722_SPEC)
    phone = Phone()
    now = 0.0
    for index in range(10):
        pcm = (np.sin(2 * np.pi * 440 * (np.arange(320) + index * 320) / 16000) * 16000).astype(
            np.int16
        )
        a.receive(phone.rtp(encoder.encode(pcm), payload_type=9, samples=320), PHONE, now)
        room.tick(now)
        now += 0.02
    levels = a.levels.read()
    assert levels and all(ms == 20.0 for _, ms in levels)
    assert 8 <= levels[-1][0] <= 11  # the sine, through G.722
    a.change_codec(codecs.PCMU_SPEC)
    assert a.levels.payload_queue() is not None


def test_the_peers_reception_reports_give_loss_jitter_and_round_trip_time() -> None:
    a = leg()
    phone = Phone()
    for index in range(3):
        a.receive(phone.rtp(pcmu(440, index)), PHONE, index * 0.02)
    a.send_pcm(None, 0.1)
    a.datagrams_to_send(0.1)
    a.report(1.0, 1e9)  # schedules only
    sent_at = a.next_report_at
    a.report(sent_at, 1e9)
    ((data, _, _),) = a.datagrams_to_send(sent_at)
    (ours, _) = parse_rtcp(data)
    assert isinstance(ours, SenderReport)
    lsr = ours.sender_info.ntp_middle
    assert a.remote_report is None
    # The phone echoes our SR 0.25 s after it came, and it arrives 0.3 s after we sent it:
    # RTT 50 ms. 64/256 of the last interval lost, jitter 80 timestamp units (10 ms at 8 kHz).
    block = ReportBlock(
        ssrc=0xABCD,
        fraction_lost=64,
        cumulative_lost=7,
        jitter=80,
        last_sr=lsr,
        delay_since_last_sr=int(0.25 * 65536),
    )
    other = ReportBlock(ssrc=0x9999, fraction_lost=255)  # about someone else's stream
    rr = ReceiverReport(ssrc=phone.ssrc, reports=(other, block))
    a.receive(serialize_rtcp([rr]), PHONE, sent_at - 0.1 + 0.4)
    report = a.remote_report
    assert report is not None
    assert report.fraction_lost == 0.25 and report.cumulative_lost == 7
    assert report.jitter == pytest.approx(0.01)
    assert report.rtt == pytest.approx(0.05, abs=1e-4)
    # a later report without an SR to echo keeps the last round-trip time
    later = ReportBlock(ssrc=0xABCD, fraction_lost=0, cumulative_lost=7, jitter=8)
    a.receive(serialize_rtcp([sender_report(phone.ssrc)]), PHONE, sent_at + 1)
    sr = SenderReport(ssrc=phone.ssrc, sender_info=sender_report().sender_info, reports=(later,))
    a.receive(serialize_rtcp([sr]), PHONE, sent_at + 2)
    assert a.remote_report is not None
    assert a.remote_report.rtt == pytest.approx(0.05, abs=1e-4)
    assert a.remote_report.fraction_lost == 0.0 and a.remote_report.at == sent_at + 2


def test_a_mixed_leg_shrinks_its_jitter_buffer_in_a_pause_not_in_speech() -> None:
    # A phone starting up late (its first packets 80 ms late and together, the rest on time)
    # leaves the jitter buffer over its target: the frame it drops to catch up waits until the
    # phone's speech pauses (at 6 s), where it is not heard, instead of cutting the speech.
    a, b, c = leg(), leg(), leg()
    room, _ = room_of(a, b, c)
    phone = Phone()
    silence = codecs.ulaw_encode_array(np.zeros(FRAME, dtype=np.int16))
    arrivals = [
        (max(index * 0.02, 0.08), index, pcmu(440.0, index) if index < 300 else silence)
        for index in range(400)
    ]
    ticks = [(k * 0.02 + 0.01, -1, b"") for k in range(400)]
    for now, index, payload in sorted([*arrivals, *ticks]):
        if index >= 0:
            a.receive(phone.rtp(payload), PHONE, now)
        else:
            room.tick(now)
            if now < 6.0:
                assert a.jitter.stats.skipped == 0, now
    assert a.jitter.stats.deferred == 1
    assert a.jitter.stats.skipped == 1
