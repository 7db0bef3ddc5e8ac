"""The media edge in process: `MediaService` legs, rooms and clock against loopback phones.

Each test plays its phones with `FakePhone` (tests/server/media_phone.py): real UDP sockets on
127.0.0.1, offers from `sdp.make_offer`, RTP from `RtpPacket`. Every wait is bounded (a receive
of at most a second, a collection window of a few hundred ms), so the module runs in seconds.

A note on counting: `RtpReceiver` keeps a new source on probation until MIN_SEQUENTIAL (2)
packets in sequence arrived (RFC 3550 A.1), so the first packet of every stream - and of every
new SSRC - is accepted for latching and statistics but not forwarded or buffered.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from sipbridge import sdp
from sipbridge.media import codecs
from sipbridge.media.dtmf import DtmfSender, detect_digits, parse_event
from sipbridge.media.leg import MediaStats
from sipbridge.media.room_audio import AudioLeg
from sipbridge.media.rtp import (
    ReceiverReport,
    RtpPacket,
    SenderInfo,
    SenderReport,
    SourceDescription,
    serialize_rtcp,
)
from sipbridge.media.session import MIN_SEQUENTIAL, ntp_timestamp
from sipbridge.media.srtp import SrtpContext, SrtpKeys
from sipbridge.server.media import ports
from sipbridge.server.media.leg_driver import CallMedia, PcmPlayer
from sipbridge.server.media.ports import READ_SIZE, MediaSocket, PortPool
from sipbridge.server.media.service import MEDIA_TIMEOUT_INITIAL_S, MEDIA_TIMEOUT_S, MediaService
from sipbridge.sip.errors import SipProtocolError
from sipbridge.telephony.media import Encryption, MediaPolicy, sdp_codec
from sipbridge.telephony.sdes import accept_answer, answer_crypto, keys_from_crypto, offer_crypto
from tests.audio import tone_ratio
from tests.harness import eventually
from tests.server.media_phone import HOST, FakePhone

pytestmark = pytest.mark.timeout(15)

PORT_SPAN = (16000, 16999)  # the test's RTP ports: a free window of it, found per test
FRAME = 160  # samples (and RTP ticks) of 20 ms at 8 kHz
PLAIN = MediaPolicy()
SECURE = MediaPolicy(encryption=Encryption.SIP_MEDIA_ENCRYPT_REQUIRE)


def tone(frequency: float, samples: int, rate: int = 8000, start: int = 0) -> np.ndarray:
    """A sine at half scale, `samples` long, continuing from sample `start`."""
    t = (np.arange(samples) + start) / rate
    return (np.sin(2 * np.pi * frequency * t) * 16000).astype(np.int16)


def pcmu(frequency: float, index: int, samples: int = FRAME) -> bytes:
    """The `index`th 20 ms (or `samples`) PCMU frame of a tone."""
    return codecs.ulaw_encode_array(tone(frequency, samples, start=index * samples))


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


def free_ports(size: int) -> tuple[int, int]:
    """An even-started window of `size` UDP ports in PORT_SPAN that are all free right now.

    Another process on the machine (an interop run, a benchmark) may hold ports anywhere in a
    fixed range, so each test takes what is free; `PortPool` skips any taken meanwhile."""
    low, high = PORT_SPAN
    starts = list(range(low, high - size + 2, 2))
    random.shuffle(starts)
    for start in starts:
        probes: list[socket.socket] = []
        try:
            for port in range(start, start + size):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probes.append(probe)
                probe.bind((HOST, port))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return start, start + size - 1
    raise OSError(f"no {size} free UDP ports in {low}-{high}")


class Harness:
    """A `MediaService` on free ports and the phones and legs of one test, all closed at the end."""

    def __init__(
        self, ports: tuple[int, int] | None = None, service: type[MediaService] = MediaService
    ) -> None:
        self.svc = service(HOST, ports or free_ports(32))
        self.phones: list[FakePhone] = []
        self.legs: list[CallMedia] = []
        self.timeouts: list[CallMedia] = []

    def phone(self, *, rtcp_socket: bool = False) -> FakePhone:
        phone = FakePhone(rtcp_socket=rtcp_socket)
        self.phones.append(phone)
        return phone

    def negotiate(
        self,
        phone: FakePhone,
        offer: bytes | None = None,
        policy: MediaPolicy = PLAIN,
        **callbacks: Callable[..., None],
    ) -> CallMedia:
        answer, leg = self.svc.negotiate(offer or phone.offer(), policy, **callbacks)
        self.legs.append(leg)
        phone.accept(answer)
        return leg

    def call(
        self,
        phone: FakePhone,
        room: str | None = "room",
        offer: bytes | None = None,
        policy: MediaPolicy = PLAIN,
        timeout: float = 5.0,
        **callbacks: Callable[..., None],
    ) -> CallMedia:
        """Negotiate, start and attach a leg for `phone` (the call answered)."""
        leg = self.negotiate(phone, offer, policy, **callbacks)
        self.svc.start(leg, timeout=timeout, on_timeout=lambda: self.timeouts.append(leg))
        if room is not None:
            self.svc.attach(leg, room)
        return leg

    def sent(self) -> None:
        """Return once the clock's last tick is on the wire: with the compiled sender
        (`ports.SendBatch`) a tick's frames leave from its thread a moment after the tick, so a
        frame mixed before a leg stopped mixing can still arrive after a `drain`."""
        sender = self.svc.clock.batch.sender
        if sender is not None:
            sender.wait()

    def close(self) -> None:
        self.svc.close()
        for leg in self.legs:
            leg.close()  # legs never started, or dropped by a timeout, are not the service's
        for phone in self.phones:
            phone.close()


def synced(leg: CallMedia) -> MediaStats:
    """`leg`'s counters with what the compiled relay engine counted for it since it last
    handed them over (`CallMedia.sync`, as the server does before it reads them): a packet
    the engine forwarded shows at the engine's next collection, not at once."""
    leg.sync()
    return leg.stats


async def settle(condition: Callable[[], bool], timeout: float = 1.0) -> None:
    """Yield to the loop until `condition()` holds; AssertionError after `timeout`."""
    await eventually(condition, "the condition", timeout=timeout, interval=0.002)


async def paced(
    phone: FakePhone, payloads: list[bytes], *, ptime: float = 0.02, **fields: Any
) -> None:
    """Send `payloads` one every `ptime` s on absolute deadlines (no drift)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, payload in enumerate(payloads):
        await asyncio.sleep(max(0.0, start + index * ptime - loop.time()))  # the pace, not a wait
        phone.send_rtp(payload, **fields)


# -- 1. forwarding ----------------------------------------------------------------------------


async def test_forwarding_rewrites_the_header_and_keeps_the_payload(media: Harness) -> None:
    a, b = media.phone(), media.phone()
    leg_a, leg_b = media.call(a), media.call(b)
    assert leg_a.forward_to == [leg_b] and leg_b.forward_from is leg_a
    assert leg_a.mixing is leg_b.mixing is False
    first_sequence, first_timestamp = leg_b.sender.sequence_number, leg_b.sender.timestamp

    sent = [a.send_rtp(pcmu(440, index), marker=index == 0) for index in range(6)]
    received = [await b.recv_rtp() for _ in range(5)]

    forwarded = sent[MIN_SEQUENTIAL - 1 :]
    assert [p.payload for p in received] == [p.payload for p in forwarded]
    assert {p.ssrc for p in received} == {leg_b.sender.ssrc}
    assert {p.payload_type for p in received} == {0}
    assert [p.sequence_number for p in received] == [(first_sequence + i) % 65536 for i in range(5)]
    assert received[0].timestamp == first_timestamp
    assert [q.timestamp - p.timestamp for p, q in itertools.pairwise(received)] == [
        q.timestamp - p.timestamp for p, q in itertools.pairwise(forwarded)
    ]
    assert [p.marker for p in received] == [True, False, False, False, False]
    assert synced(leg_b).forwarded == 5 and synced(leg_b).packets_out == 5
    assert synced(leg_a).packets_in == 6 and synced(leg_a).forwarded == 0

    # A new SSRC (the phone restarted its stream): after its probation, the first forwarded
    # packet carries the marker, our SSRC and sequence go on, our timestamps move forward.
    a.new_source()
    sent = [a.send_rtp(pcmu(440, index)) for index in range(4)]
    again = [await b.recv_rtp() for _ in range(3)]
    assert [p.payload for p in again] == [p.payload for p in sent[1:]]
    assert {p.ssrc for p in again} == {leg_b.sender.ssrc}
    assert [p.sequence_number for p in again] == [
        (first_sequence + 5 + i) % 65536 for i in range(3)
    ]
    assert [p.marker for p in again] == [True, False, False]
    step = (again[0].timestamp - received[-1].timestamp) % 2**32
    assert FRAME <= step < FRAME + 8000  # at least one frame on, at most the time elapsed
    assert [q.timestamp - p.timestamp for p, q in itertools.pairwise(again)] == [
        FRAME,
        FRAME,
    ]
    assert synced(leg_b).forwarded == 8


async def test_forwarding_translates_pcmu_to_pcma_and_back(media: Harness) -> None:
    ulaw, alaw = media.phone(), media.phone()
    leg_u = media.call(ulaw)
    leg_a = media.call(alaw, offer=alaw.offer((sdp.PCMA, sdp.TELEPHONE_EVENT)))
    assert leg_a.spec is codecs.PCMA_SPEC and alaw.payload_types["pcma"] == 8
    assert leg_u.forward_to == [leg_a] and leg_a.forward_to == [leg_u]

    sent = [ulaw.send_rtp(pcmu(697, index)) for index in range(3)]
    received = [await alaw.recv_rtp() for _ in range(2)]
    assert [p.payload_type for p in received] == [8, 8]
    assert [p.payload for p in received] == [
        codecs.transcode_g711(p.payload, codecs.PCMU_SPEC, codecs.PCMA_SPEC) for p in sent[1:]
    ]

    back = [alaw.send_rtp(p.payload, payload_type=8) for p in received + received]
    echoed = [await ulaw.recv_rtp() for _ in range(3)]
    assert [p.payload_type for p in echoed] == [0, 0, 0]
    assert [p.payload for p in echoed] == [
        codecs.transcode_g711(p.payload, codecs.PCMA_SPEC, codecs.PCMU_SPEC) for p in back[1:]
    ]
    assert synced(leg_a).forwarded == 2 and synced(leg_u).forwarded == 3


# -- 2. latching and hostile input ------------------------------------------------------------


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler (a reader callback that raised)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(None)


async def test_latching_and_hostile_input_are_counted_and_dropped(
    media: Harness, loop_errors: list[dict[str, Any]]
) -> None:
    a, b, intruder, flood = media.phone(), media.phone(), media.phone(), media.phone()
    leg_a, leg_b = media.call(a), media.call(b)
    a.send_rtp(pcmu(440, 0))
    a.send_rtp(pcmu(440, 1))
    assert (await b.recv_rtp()).payload == pcmu(440, 1)
    assert leg_a.latch.latched == (HOST, a.port)

    # Well-formed RTP from another address does not steal the stream (RFC 4961 latching).
    for index in range(3):
        intruder.send(intruder.packet(pcmu(1000, index)).serialize(), a.server)
    await settle(lambda: leg_a.stats.wrong_source == 3)
    # From the latched address: bad version, short header, a CSRC list past the end.
    a.send(bytes(20))
    a.send(b"\x80\x00\x01")
    a.send(b"\x8f\x00" + bytes(14))
    a.send_rtp(bytes(160), payload_type=96)  # nobody negotiated 96
    a.send_rtp(bytes(1), payload_type=13)  # comfort noise: ignored, not counted
    a.send(b"\x80\x00" + bytes(2998))  # 3000 octets: more than READ_SIZE
    await settle(lambda: leg_a.rtp.truncated == 1)
    assert (synced(leg_a).malformed, synced(leg_a).unknown_payload) == (3, 1)
    assert synced(leg_a).wrong_source == 3 and synced(leg_b).forwarded == 1

    # A flood of garbage from a third address: every datagram counted. It goes in bursts of 64,
    # each counted before the next, so that what is checked is the reader, not the kernel's
    # buffer (which drops a flood a descheduled reader cannot take, before anyone counts it).
    garbage = b"\x00\x00" + os.urandom(30)
    for burst in range(1, 10_000 // 64 + 2):
        for _ in range(64 if burst * 64 <= 10_000 else 10_000 % 64):
            flood.send(garbage, a.server)
        counted = 3 + min(burst * 64, 10_000)
        await settle(lambda counted=counted: leg_a.stats.malformed == counted, timeout=5.0)

    sent = [a.send_rtp(pcmu(440, index)) for index in range(5)]
    received = [await b.recv_rtp() for _ in range(5)]
    assert [p.payload for p in received] == [p.payload for p in sent]
    assert not any(p.marker for p in received)
    assert synced(leg_b).forwarded == 6
    assert not b.drain() and not intruder.drain()  # nothing leaked to the intruders

    samples = media.svc.samples()
    assert samples["rtp_wrong_source"] == 3
    assert samples["rtp_malformed"] == 10_003
    assert samples["rtp_unknown_payload"] == 1
    assert samples["rtp_truncated"] == 1
    assert samples["rtp_forwarded"] == 6
    assert samples["rtp_packets_in"] == 2 + 2 + 5  # audio, 96 and CN, audio
    assert (samples["legs"], samples["rooms"]) == (2, 1)
    assert loop_errors == []
    assert READ_SIZE < 3000


async def test_a_malformed_telephone_event_is_counted_not_raised(
    media: Harness, loop_errors: list[dict[str, Any]]
) -> None:
    a, b = media.phone(), media.phone()
    leg_a = media.call(a)
    media.call(b)
    a.send_rtp(b"\x05\x0a\x00", payload_type=101)  # 3 octets: no whole RFC 4733 event
    sent = [a.send_rtp(pcmu(440, index)) for index in range(3)]
    received = [await b.recv_rtp() for _ in range(2)]
    assert [p.payload for p in received] == [p.payload for p in sent[1:]]
    assert loop_errors == []
    assert synced(leg_a).malformed == 1


# -- 3. mixing --------------------------------------------------------------------------------


def g722_pcm(packets: list[tuple[RtpPacket, float]]) -> np.ndarray:
    decoder = codecs.new_decoder(codecs.G722_SPEC)
    return np.concatenate([decoder.decode(p.payload) for p, _ in packets])


async def test_three_codecs_mix_on_the_clock(media: Harness) -> None:
    a, b, c = media.phone(), media.phone(), media.phone()
    leg_a = media.call(a)
    leg_b = media.call(b, offer=b.offer((sdp.PCMA, sdp.TELEPHONE_EVENT)))
    leg_c = media.call(c, offer=c.offer((sdp.G722, sdp.TELEPHONE_EVENT)))
    assert (leg_a.spec, leg_b.spec, leg_c.spec) == (
        codecs.PCMU_SPEC,
        codecs.PCMA_SPEC,
        codecs.G722_SPEC,
    )
    assert all(leg.mixing and leg.buffered and not leg.forward_to for leg in media.legs)
    room = media.svc.rooms["room"]
    assert room in media.svc.clock.rooms

    frames = 20
    ulaw = [pcmu(440, i) for i in range(frames)]
    alaw = [codecs.alaw_encode_array(tone(1000, FRAME, start=i * FRAME)) for i in range(frames)]
    async with asyncio.TaskGroup() as group:
        group.create_task(paced(a, ulaw))
        group.create_task(paced(b, alaw, payload_type=8))
        listening = [group.create_task(phone.collect(0.6)) for phone in (c, a, b)]
    heard = [task.result() for task in listening]
    packets = heard[0]

    assert {p.payload_type for p, _ in packets} == {9}
    assert {len(p.payload) for p, _ in packets} == {160}  # 20 ms of G.722 at 64 kbit/s
    assert {p.ssrc for p, _ in packets} == {leg_c.sender.ssrc}
    assert synced(leg_c).forwarded == 0 and synced(leg_c).mixed_frames >= len(packets)
    assert 20 <= len(packets) <= 40  # ~30 ticks in 0.6 s
    gaps = np.diff([at for _, at in packets])
    assert 0.015 < float(np.median(gaps)) < 0.025
    sequences = [p.sequence_number for p, _ in packets]
    assert sequences == [(sequences[0] + i) % 65536 for i in range(len(packets))]
    assert all(
        0 < (q.timestamp - p.timestamp) % 2**32 < 8000
        for (p, _), (q, _) in itertools.pairwise(packets)
    )
    pcm = g722_pcm(packets)
    assert rms(pcm) > 3000  # the two tones, not silence
    assert tone_ratio(pcm, 16000, 440) > 0.2 and tone_ratio(pcm, 16000, 1000) > 0.2
    # Each hears the others and not itself: A the 1 kHz of B, B the 440 Hz of A.
    heard_by_a, heard_by_b = heard[1], heard[2]
    assert {p.payload_type for p, _ in heard_by_a} == {0}
    assert {p.payload_type for p, _ in heard_by_b} == {8}
    pcm_a = codecs.ulaw_decode_array(b"".join(p.payload for p, _ in heard_by_a))
    pcm_b = codecs.alaw_decode_array(b"".join(p.payload for p, _ in heard_by_b))
    assert tone_ratio(pcm_a, 8000, 1000) > 0.5 and tone_ratio(pcm_a, 8000, 440) < 0.05
    assert tone_ratio(pcm_b, 8000, 440) > 0.5 and tone_ratio(pcm_b, 8000, 1000) < 0.05


async def test_a_30_ms_source_in_a_mixing_room_keeps_the_clock_ticking(
    media: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    slow, b, c = media.phone(), media.phone(), media.phone()
    media.call(slow, offer=slow.offer(ptime=30))
    assert slow.answer is not None and slow.answer.media[0].ptime == 20  # what we want
    media.call(b, offer=b.offer((sdp.PCMA, sdp.TELEPHONE_EVENT)))
    leg_c = media.call(c, offer=c.offer((sdp.G722, sdp.TELEPHONE_EVENT)))
    room = media.svc.rooms["room"]

    payloads = [pcmu(440, index, samples=240) for index in range(15)]  # 450 ms
    with caplog.at_level(logging.ERROR):
        async with asyncio.TaskGroup() as group:
            group.create_task(paced(slow, payloads, ptime=0.03, samples=240))
            listening = group.create_task(c.collect(0.6))
        packets = listening.result()
        later = await c.collect(0.1)
    assert not [r for r in caplog.records if "media tick failed" in r.getMessage()]
    assert room in media.svc.clock.rooms
    assert later, "the room stopped ticking"
    assert 20 <= len(packets) <= 40 and synced(leg_c).forwarded == 0
    assert {len(p.payload) for p, _ in packets} == {160}
    pcm = g722_pcm(packets)
    assert tone_ratio(pcm, 16000, 440) > 0.5
    # 450 ms sent, heard as 20 ms frames: about that much of it is loud
    loud = sum(rms(pcm[i : i + 320]) > 3000 for i in range(0, len(pcm), 320))
    assert 18 <= loud <= 26


async def test_mixed_frames_are_stamped_one_frame_apart_whatever_the_tick_jitter(
    media: Harness,
) -> None:
    phone = media.phone()
    media.call(phone)  # alone in its room: it mixes (silence) on the clock
    clock = media.svc.clock
    await phone.recv_rtp()
    clock.stop()
    media.sent()
    phone.drain()
    base = asyncio.get_running_loop().time() + 1.0
    lateness = [0.0, 0.004, 0.0, 0.0007, 0.012, 0.0, 0.002]  # how late each tick fires
    clock._next = base
    for index, late in enumerate(lateness):
        clock.advance(base + index * 0.02 + late)  # each tick at the time it fired
    packets = [await phone.recv_rtp() for _ in lateness]
    # 20 ms of audio in every packet, one after the other: 160 ticks apart (RFC 3550 s5.1)
    assert [(q.timestamp - p.timestamp) % 2**32 for p, q in itertools.pairwise(packets)] == [
        FRAME
    ] * 6


# -- 4. hold and re-INVITE --------------------------------------------------------------------


async def test_hold_stops_our_audio_and_resume_restarts_it(media: Harness) -> None:
    a, b = media.phone(), media.phone()
    leg_a, leg_b = media.call(a), media.call(b)
    version = leg_b.session_version
    sent = [a.send_rtp(pcmu(440, index)) for index in range(3)]
    assert [(await b.recv_rtp()).payload for _ in range(2)] == [p.payload for p in sent[1:]]

    # B holds (RFC 3264 s8.4: sendonly); we answer recvonly on the same port.
    held = sdp.parse_sdp(
        media.svc.renegotiate(leg_b, b.offer(direction=sdp.Direction.SENDONLY), PLAIN)
    )
    assert held.media[0].direction == sdp.Direction.RECVONLY
    assert held.media[0].port == leg_b.port == b.server[1]
    assert held.origin.session_version == version + 1
    assert held.origin.session_id == leg_b.session_id
    assert (leg_b.sending, leg_b.receiving) == (False, True)
    assert leg_a.forward_to == [] and leg_b.forward_from is None

    silent = asyncio.create_task(b.collect(0.2))
    await paced(a, [pcmu(440, index) for index in range(8)])
    assert await silent == []
    assert synced(leg_b).forwarded == 2

    # B still talks to A while holding (music on hold): A hears it.
    b.send_rtp(pcmu(600, 0))
    b.send_rtp(pcmu(600, 1))
    assert (await a.recv_rtp()).payload == pcmu(600, 1)

    resumed = sdp.parse_sdp(media.svc.renegotiate(leg_b, b.offer(), PLAIN))
    assert resumed.media[0].direction == sdp.Direction.SENDRECV
    assert resumed.origin.session_version == version + 2
    assert leg_a.forward_to == [leg_b]
    sent = [a.send_rtp(pcmu(440, index)) for index in range(3)]
    assert [(await b.recv_rtp()).payload for _ in range(3)] == [p.payload for p in sent]
    leg_b.sync()  # the relay engine's counters, as every reader of them takes them first
    assert synced(leg_b).forwarded == 5


async def test_an_offer_without_a_common_codec_is_refused_and_changes_nothing(
    media: Harness,
) -> None:
    a, b = media.phone(), media.phone()
    media.call(a)
    leg_b = media.call(b)
    before = (leg_b.spec, leg_b.audio_pt, leg_b.sending, leg_b.latch.expected, leg_b.port)
    gsm = sdp.Codec(name="GSM", clock_rate=8000)
    with pytest.raises(SipProtocolError) as refused:
        media.svc.renegotiate(leg_b, b.offer((gsm,)), PLAIN)
    assert refused.value.status == 488
    assert (leg_b.spec, leg_b.audio_pt, leg_b.sending, leg_b.latch.expected, leg_b.port) == before
    sent = [a.send_rtp(pcmu(440, index)) for index in range(3)]
    assert [(await b.recv_rtp()).payload for _ in range(2)] == [p.payload for p in sent[1:]]
    with pytest.raises(SipProtocolError) as garbled:
        media.svc.renegotiate(leg_b, b"v=0\r\nnot sdp\r\n", PLAIN)
    assert garbled.value.status == 488


async def test_a_refused_offer_leaves_the_session_version_alone(media: Harness) -> None:
    phone = media.phone()
    leg = media.call(phone)
    version = leg.session_version
    with pytest.raises(SipProtocolError):
        media.svc.renegotiate(leg, phone.offer((sdp.Codec(name="GSM", clock_rate=8000),)), PLAIN)
    answer = sdp.parse_sdp(media.svc.renegotiate(leg, phone.offer(), PLAIN))
    assert answer.origin.session_version == version + 1


async def test_a_reinvite_may_change_the_codec(media: Harness) -> None:
    a, b = media.phone(), media.phone()
    leg_a, leg_b = media.call(a), media.call(b)
    answer = sdp.parse_sdp(
        media.svc.renegotiate(leg_b, b.offer((sdp.PCMA, sdp.TELEPHONE_EVENT)), PLAIN)
    )
    b.accept(sdp.serialize_sdp(answer))
    assert b.payload_types["pcma"] == 8 and leg_b.spec is codecs.PCMA_SPEC
    assert leg_a.forward_to == [leg_b]  # G.711 both: still forwarded, now translated
    sent = [a.send_rtp(pcmu(440, index)) for index in range(3)]
    received = [await b.recv_rtp() for _ in range(2)]
    assert [p.payload_type for p in received] == [8, 8]
    assert [p.payload for p in received] == [
        codecs.transcode_g711(p.payload, codecs.PCMU_SPEC, codecs.PCMA_SPEC) for p in sent[1:]
    ]


# -- 5. DTMF to the phone ---------------------------------------------------------------------


async def test_dtmf_to_the_phone_as_rfc_4733_events(media: Harness) -> None:
    phone = media.phone()
    leg = media.call(phone)  # alone in the room: the clock sends it silence, then the digit
    assert phone.payload_types["telephone-event"] == 101 and leg.event_pt == 101
    leg.send_dtmf("5x")  # not a digit: ignored
    events = await phone.collect(0.6, payload_type=101)
    packets = [p for p, _ in events]
    reports = [parse_event(p.payload) for p in packets]
    # RFC 4733 s2.5.1: a report every 20 ms with the duration so far, the end sent three times
    assert len(packets) == 15
    assert {p.timestamp for p in packets} == {packets[0].timestamp}
    assert {p.ssrc for p in packets} == {leg.sender.ssrc}
    assert [p.marker for p in packets] == [True] + [False] * 14
    sequences = [p.sequence_number for p in packets]
    assert sequences == [(sequences[0] + i) % 65536 for i in range(15)]
    assert {r.event for r in reports} == {5} and {r.volume for r in reports} == {10}
    assert [r.duration for r in reports] == [FRAME * i for i in range(1, 13)] + [2000] * 3
    assert [r.end for r in reports] == [False] * 12 + [True] * 3
    gaps = np.diff([at for _, at in events])
    assert 0.015 < float(np.median(gaps)) < 0.025


async def test_dtmf_to_a_phone_without_telephone_event_is_an_in_band_tone(
    media: Harness,
) -> None:
    phone = media.phone()
    leg = media.call(phone, offer=phone.offer((sdp.PCMU,)))
    assert leg.event_pt is None and "telephone-event" not in phone.payload_types
    leg.send_dtmf("5")
    heard = await phone.collect(0.6)
    assert {p.payload_type for p, _ in heard} == {0}
    pcm = codecs.ulaw_decode_array(b"".join(p.payload for p, _ in heard))
    assert detect_digits(pcm, 8000) == "5"
    loud = sum(rms(pcm[i : i + FRAME]) > 1000 for i in range(0, len(pcm), FRAME))
    assert 12 <= loud <= 14  # 250 ms of tone (DTMF_TONE_MS)


async def test_a_leg_that_sent_dtmf_goes_back_to_forwarding(media: Harness) -> None:
    a, b = media.phone(), media.phone()
    leg_a, leg_b = media.call(a), media.call(b)
    leg_b.send_dtmf("1")
    assert leg_b.mixing and leg_b.forward_from is None  # the clock plays the digit
    await settle(lambda: not leg_b.local_audio, timeout=5.0)  # played out (late when busy)
    assert leg_b.forward_from is leg_a and not leg_b.mixing
    media.sent()  # the last mixed frame, with the digit's end, is out
    b.drain()
    sent = [a.send_rtp(pcmu(440, index)) for index in range(3)]
    assert [(await b.recv_rtp()).payload for _ in range(2)] == [p.payload for p in sent[1:]]
    assert synced(leg_b).forwarded == 2


# -- 6. DTMF from the phone -------------------------------------------------------------------


async def test_dtmf_from_the_phone_is_reported_once_per_key_press(media: Harness) -> None:
    digits: list[str] = []
    phone = media.phone()
    leg = media.call(phone, on_dtmf=digits.append)
    sender = DtmfSender(clock_rate=8000)
    for index, digit in enumerate("7#"):
        start = phone.timestamp
        press = sender.packets(digit, duration_ms=250, ptime_ms=20)
        assert sum(p.event.end for p in press) == 3  # start, updates, the end three times
        for packet in press:
            phone.send_rtp(
                packet.event.serialize(),
                payload_type=101,
                marker=packet.marker,
                timestamp=start + packet.timestamp_offset,
            )
        phone.timestamp += 2000 + 2000  # the press and a 250 ms pause
        await settle(lambda count=15 * (index + 1): leg.stats.dtmf_in == count)
        await settle(lambda n=index + 1: len(digits) >= n)
        assert digits == ["7", "#"][: index + 1]
    assert synced(leg).dtmf_in == 30 and synced(leg).unknown_payload == 0


# -- 7. media timeout -------------------------------------------------------------------------


async def test_a_silent_leg_times_out_once(media: Harness) -> None:
    phone = media.phone()
    leg = media.negotiate(phone)
    fired: list[str] = []
    media.svc.start(leg, timeout=1.0, on_timeout=lambda: fired.append("timeout"))
    now = asyncio.get_running_loop().time()
    media.svc._check_timeouts(now + 0.5)
    assert fired == [] and leg in media.svc.legs
    media.svc._check_timeouts(now + 2)
    assert fired == ["timeout"] and leg not in media.svc.legs
    media.svc._check_timeouts(now + 3)
    assert fired == ["timeout"]
    assert media.svc.samples()["media_timeout"] == 1


async def test_the_timeout_counts_from_the_last_packet(media: Harness) -> None:
    phone = media.phone()
    leg = media.call(phone, timeout=1.0)
    phone.send_rtp(pcmu(440, 0))
    await settle(lambda: leg.last_packet_at is not None)
    assert leg.last_packet_at is not None
    last = leg.last_packet_at
    media.svc._check_timeouts(last + 0.9)
    assert media.timeouts == []
    media.svc._check_timeouts(last + 1.1)
    assert media.timeouts == [leg]


async def test_the_default_timeout_is_more_patient_before_the_first_packet(
    media: Harness,
) -> None:
    phone = media.phone()
    leg = media.call(phone, timeout=0)  # 0: the server's default
    assert media.svc.legs[leg][0] == MEDIA_TIMEOUT_S
    started = leg.started_at
    assert started is not None
    media.svc._check_timeouts(started + MEDIA_TIMEOUT_S + 1)
    assert media.timeouts == []
    media.svc._check_timeouts(started + MEDIA_TIMEOUT_INITIAL_S + 1)
    assert media.timeouts == [leg]


async def test_a_held_leg_never_times_out(media: Harness) -> None:
    holding, inactive = media.phone(), media.phone()
    leg = media.call(holding, offer=holding.offer(direction=sdp.Direction.SENDONLY), timeout=1.0)
    quiet = media.call(
        inactive, offer=inactive.offer(direction=sdp.Direction.INACTIVE), timeout=1.0
    )
    assert (leg.sending, leg.receiving) == (False, True)
    assert (quiet.sending, quiet.receiving) == (False, False)
    media.svc._check_timeouts(asyncio.get_running_loop().time() + 60)
    assert media.timeouts == [] and leg in media.svc.legs and quiet in media.svc.legs


# The timeout after a long hold counts from the resume: tests/media/test_leg.py, in memory.


async def test_rtcp_from_a_stranger_before_any_rtp_does_not_keep_the_call_alive(
    media: Harness,
) -> None:
    phone = media.phone()
    leg = media.call(phone, room=None, timeout=1.0)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        stranger.bind(("127.0.0.2", 0))  # not the host the SDP named
        stranger.sendto(serialize_rtcp([sender_report(phone, time.time())]), phone.server)
        await settle(lambda: leg.stats.wrong_source == 1)
    finally:
        stranger.close()
    assert synced(leg).rtcp_in == 0 and leg.last_packet_at is None
    assert leg.started_at is not None
    media.svc._check_timeouts(leg.started_at + 1.1)
    assert media.timeouts == [leg]
    # from the phone's own host it is the peer's RTCP
    phone.send(serialize_rtcp([sender_report(phone, time.time())]))
    await settle(lambda: leg.stats.rtcp_in == 1)


async def test_a_failing_timeout_handler_is_logged_not_raised(
    media: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    phone = media.phone()
    leg = media.negotiate(phone)

    def explode() -> None:
        raise RuntimeError("handler bug")

    media.svc.start(leg, timeout=1.0, on_timeout=explode)
    with caplog.at_level(logging.ERROR):
        media.svc._check_timeouts(asyncio.get_running_loop().time() + 2)
    assert leg not in media.svc.legs
    assert [r.getMessage() for r in caplog.records] == ["media timeout handler failed"]


# -- 8. SRTP ----------------------------------------------------------------------------------


def secure_call(media: Harness, phone: FakePhone, room: str | None = "room") -> CallMedia:
    """A call offering SDES-SRTP (RFC 4568) with one AES_CM_128_HMAC_SHA1_80 key."""
    keys = SrtpKeys.generate("AES_CM_128_HMAC_SHA1_80", os.urandom)
    offer = phone.offer(proto="RTP/SAVP", crypto=offer_crypto([keys]))
    leg = media.call(phone, room, offer=offer, policy=SECURE)
    assert phone.answer is not None
    answered = phone.answer.media[0]
    assert answered.proto == "RTP/SAVP" and len(answered.crypto) == 1
    local, remote = accept_answer([keys], answered.crypto[0])
    phone.srtp = SrtpContext(local=local, remote=remote)
    return leg


async def test_srtp_leg_forwards_to_a_plain_leg_and_back(media: Harness) -> None:
    secure, plain = media.phone(), media.phone()
    leg_s = secure_call(media, secure)
    leg_p = media.call(plain)
    assert leg_s.srtp is not None and leg_p.srtp is None

    sent = [secure.send_rtp(pcmu(440, index)) for index in range(3)]
    received = [await plain.recv_rtp() for _ in range(2)]  # plain RTP, decrypted by us
    assert [p.payload for p in received] == [p.payload for p in sent[1:]]

    back = [plain.send_rtp(pcmu(900, index)) for index in range(3)]
    echoed = [await secure.recv_rtp() for _ in range(2)]  # SRTP, which the phone unprotects
    assert [p.payload for p in echoed] == [p.payload for p in back[1:]]
    assert {p.ssrc for p in echoed} == {leg_s.sender.ssrc}

    # A packet altered on the way fails authentication (RFC 3711 s3.3) and goes nowhere.
    assert secure.srtp is not None
    protected = bytearray(secure.srtp.protect(secure.packet(pcmu(440, 3)).serialize()))
    protected[20] ^= 0x01
    secure.send(bytes(protected))
    secure.send(secure.packet(pcmu(440, 4)).serialize())  # plain RTP to an SRTP leg: refused
    await settle(lambda: leg_s.stats.srtp_failed == 2)
    sent = secure.send_rtp(pcmu(440, 5))
    assert (await plain.recv_rtp()).payload == sent.payload
    assert media.svc.samples()["rtp_srtp_failed"] == 2
    assert synced(leg_p).forwarded == 3


async def test_srtp_required_refuses_a_plain_offer(media: Harness) -> None:
    phone = media.phone()
    with pytest.raises(SipProtocolError) as refused:
        media.svc.negotiate(phone.offer(), SECURE)
    assert refused.value.status == 488
    assert media.svc.samples()["offer_refused"] == 1
    assert media.svc.pool.in_use == set()  # no port taken for a refused offer
    # SAVP without any a=crypto line we could use
    with pytest.raises(SipProtocolError) as keyless:
        media.svc.negotiate(phone.offer(proto="RTP/SAVP"), SECURE)
    assert keyless.value.status == 488


async def test_srtp_reinvite_keeps_or_changes_the_keys(media: Harness) -> None:
    secure, plain = media.phone(), media.phone()
    leg_s = secure_call(media, secure)
    media.call(plain)
    context, our_keys = leg_s.srtp, leg_s.keys
    assert context is not None and leg_s.remote_keys is not None

    async def round_trip(index: int, forwarded: int = 2) -> None:
        """Two packets from the SRTP phone; the last `forwarded` reach the plain one."""
        sent = [secure.send_rtp(pcmu(440, index * 10 + i)) for i in range(2)]
        received = [await plain.recv_rtp() for _ in range(forwarded)]
        assert [p.payload for p in received] == [p.payload for p in sent[2 - forwarded :]]

    await round_trip(0, forwarded=1)  # the first packet of a source: on probation
    # A refresh repeating the offered key: same keys, same SRTP context (RFC 4568 s7.1.4)
    again = [
        sdp.CryptoAttribute(
            tag=1,
            suite=leg_s.remote_keys.suite,
            keys=(sdp.CryptoKey(method="inline", info=leg_s.remote_keys.inline()),),
        )
    ]
    media.svc.renegotiate(leg_s, secure.offer(proto="RTP/SAVP", crypto=again), SECURE)
    assert leg_s.srtp is context and leg_s.keys == our_keys
    await round_trip(1)

    # New keys from the phone: a new context; ours stay (same suite)
    fresh = SrtpKeys.generate("AES_CM_128_HMAC_SHA1_80", os.urandom)
    answer = secure.accept(
        media.svc.renegotiate(
            leg_s, secure.offer(proto="RTP/SAVP", crypto=offer_crypto([fresh])), SECURE
        )
    )
    local, remote = accept_answer([fresh], answer.media[0].crypto[0])
    assert remote == our_keys and leg_s.srtp is not context and leg_s.remote_keys == fresh
    secure.srtp = SrtpContext(local=local, remote=remote)
    secure.new_source()  # a new outbound SRTP stream under the new key
    await round_trip(2, forwarded=1)

    # Where the policy allows plain RTP, a plain re-offer turns SRTP off
    allow = MediaPolicy(encryption=Encryption.SIP_MEDIA_ENCRYPT_ALLOW)
    secure.accept(media.svc.renegotiate(leg_s, secure.offer(), allow))
    assert leg_s.srtp is None and leg_s.keys is None
    secure.srtp = None
    await round_trip(3)


# -- 9. RTCP ----------------------------------------------------------------------------------


def sender_report(phone: FakePhone, wallclock: float) -> SenderReport:
    return SenderReport(
        ssrc=phone.ssrc,
        sender_info=SenderInfo(
            ntp_timestamp=ntp_timestamp(wallclock),
            rtp_timestamp=phone.timestamp,
            packet_count=3,
            octet_count=3 * FRAME,
        ),
    )


async def test_rtcp_reports_on_a_muxed_port(media: Harness) -> None:
    phone = media.phone()
    leg = media.call(phone, room=None)
    assert leg.rtcp_mux and leg.rtcp is None
    for index in range(3):
        phone.send_rtp(pcmu(440, index))
    sr = sender_report(phone, time.time())
    phone.send(serialize_rtcp([sr]))
    await settle(lambda: leg.stats.rtcp_in == 1 and leg.stats.packets_in == 3)

    loop = asyncio.get_running_loop()
    now = loop.time()
    leg.report(now, time.time())  # the first call only schedules (RFC 3550 s6.2: 2.5 s +-50%)
    assert 1.25 <= leg.next_report_at - now <= 3.75
    leg.report(leg.next_report_at - 0.01, time.time())  # not due yet
    with pytest.raises(TimeoutError):
        await phone.recv_rtcp(0.05)
    leg.report(leg.next_report_at + 0.01, time.time())
    report, sdes = await phone.recv_rtcp()
    assert isinstance(report, ReceiverReport)  # we sent no RTP: RR, not SR
    assert report.ssrc == leg.sender.ssrc
    (block,) = report.reports
    assert block.ssrc == phone.ssrc
    assert block.highest_sequence == (phone.sequence - 1) % 65536
    assert (block.fraction_lost, block.cumulative_lost) == (0, 0)
    assert block.last_sr == sr.sender_info.ntp_middle  # LSR echoes the SR (s6.4.1)
    assert isinstance(sdes, SourceDescription)
    assert [(c.ssrc, c.cname) for c in sdes.chunks] == [(leg.sender.ssrc, leg.cname)]
    assert synced(leg).rtcp_out == 1

    # Once we send RTP (alone in a room the clock sends silence) the report is an SR.
    media.svc.attach(leg, "room")
    await phone.recv_rtp()
    leg.report(leg.next_report_at + 0.01, time.time())
    sent = leg.sender.packets_sent
    report, _ = await phone.recv_rtcp()
    assert isinstance(report, SenderReport) and report.ssrc == leg.sender.ssrc
    assert report.sender_info.packet_count == sent

    # Garbage that looks like RTCP (second octet 200-223) is counted apart
    phone.send(b"\x80\xc8\x00\x09" + bytes(8))
    phone.send(b"\x40\xc9\x00\x01" + bytes(4))  # version 1
    await settle(lambda: leg.stats.rtcp_malformed == 2)
    assert synced(leg).rtcp_in == 1


async def test_rtcp_on_its_own_port_and_from_the_wrong_host(media: Harness) -> None:
    phone = media.phone(rtcp_socket=True)
    leg = media.call(phone, room=None, offer=phone.offer(rtcp_mux=False))
    assert not leg.rtcp_mux and leg.rtcp is not None and leg.rtcp.port == leg.port + 1
    assert phone.answer is not None and not phone.answer.media[0].rtcp_mux
    assert leg.remote_rtcp == (HOST, phone.port + 1)
    for index in range(3):
        phone.send_rtp(pcmu(440, index))
    await settle(lambda: leg.stats.packets_in == 3)
    assert phone.rtcp_sock is not None
    sr = sender_report(phone, time.time())
    phone.rtcp_sock.sendto(serialize_rtcp([sr]), (HOST, leg.port + 1))
    await settle(lambda: leg.stats.rtcp_in == 1)

    # RTCP from a host other than the media's is refused
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        stranger.bind(("127.0.0.2", 0))
        stranger.sendto(serialize_rtcp([sr]), (HOST, leg.port + 1))
        await settle(lambda: leg.stats.wrong_source == 1)
    finally:
        stranger.close()

    now = asyncio.get_running_loop().time()
    leg.report(now, time.time())
    leg.report(leg.next_report_at, time.time())
    report, sdes = await phone.recv_rtcp()  # on the phone's RTCP port, from ours
    assert isinstance(report, ReceiverReport) and report.ssrc == leg.sender.ssrc
    assert [b.last_sr for b in report.reports] == [sr.sender_info.ntp_middle]
    assert isinstance(sdes, SourceDescription) and sdes.chunks[0].cname == leg.cname
    assert synced(leg).rtcp_in == 1 and synced(leg).rtcp_out == 1


async def test_srtcp_both_ways(media: Harness) -> None:
    phone = media.phone()
    leg = secure_call(media, phone, room=None)
    assert phone.srtp is not None
    phone.send_rtp(pcmu(440, 0))
    phone.send_rtp(pcmu(440, 1))
    sr = sender_report(phone, time.time())
    phone.send(phone.srtp.protect_rtcp(serialize_rtcp([sr])))
    await settle(lambda: leg.stats.rtcp_in == 1)
    tampered = bytearray(phone.srtp.protect_rtcp(serialize_rtcp([sr])))
    tampered[10] ^= 0x01
    phone.send(bytes(tampered))
    await settle(lambda: leg.stats.srtp_failed == 1)

    leg.report(0.0, time.time())
    leg.report(leg.next_report_at, time.time())
    report, sdes = await phone.recv_rtcp()  # unprotected by the phone with our key
    assert isinstance(report, ReceiverReport) and report.ssrc == leg.sender.ssrc
    assert [b.last_sr for b in report.reports] == [sr.sender_info.ntp_middle]
    assert isinstance(sdes, SourceDescription)


# -- 10. the leg's life: first packet, close, ports -------------------------------------------


async def test_first_packet_callback_close_and_port_release(media: Harness) -> None:
    fired: list[str] = []
    a, b = media.phone(), media.phone()
    leg_a = media.call(a, on_first_packet=lambda: fired.append("first"))
    leg_b = media.call(b)
    port = leg_a.port
    assert media.svc.pool.in_use == {leg_a.port, leg_b.port}
    for index in range(3):
        a.send_rtp(pcmu(440, index))
    await settle(lambda: leg_a.stats.packets_in == 3)
    assert fired == ["first"]

    media.svc.release(leg_a)
    assert leg_a.closed and leg_a.room is None and leg_a not in media.svc.legs
    assert port not in media.svc.pool.in_use
    leg_a.close()  # twice: nothing happens
    assert list(media.svc.rooms["room"].legs) == [leg_b] and leg_b.forward_from is None
    samples = media.svc.samples()
    assert samples["rtp_packets_in"] == 3  # a released leg's counters are kept
    assert samples["rtp_forwarded"] == 2
    assert (samples["legs"], samples["rooms"]) == (1, 1)

    # A leg closed directly (not released) leaves its room too
    leg_b.close()
    leg_b.close()
    assert media.svc.pool.in_use == set() and list(media.svc.rooms["room"].legs) == []
    # Releasing the last leg of a room ends the room
    c = media.phone()
    leg_c = media.call(c, room="other")
    assert media.svc.rooms["other"] in media.svc.clock.rooms  # alone: it mixes (silence)
    media.svc.release(leg_c)
    assert "other" not in media.svc.rooms and media.svc.clock.rooms == set()


async def test_ports_come_in_even_pairs_and_busy_ones_are_skipped() -> None:
    low, _ = free_ports(10)
    busy = []
    for port in (low + 3, low + 6):  # the RTCP port of the first pair, the RTP port of the third
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, port))
        busy.append(sock)
    harness = Harness((low + 1, low + 9))
    try:
        assert harness.svc.pool.low == low + 2  # odd start: the next even port
        phone = harness.phone()
        first = harness.negotiate(phone, phone.offer(rtcp_mux=False))
        assert first.port == low + 4 and first.rtcp is not None and first.rtcp.port == low + 5
        muxed = harness.negotiate(harness.phone())
        assert (muxed.port, muxed.rtcp) == (low + 8, None)
        again = harness.negotiate(harness.phone())
        assert again.port == low + 2  # round robin back to the start: its even port is free
        with pytest.raises(SipProtocolError) as full:
            harness.negotiate(harness.phone())
        assert full.value.status == 503
        with pytest.raises(SipProtocolError) as no_offer:
            harness.svc.offer(PLAIN)
        assert no_offer.value.status == 503
        samples = harness.svc.samples()
        assert (samples["ports_exhausted"], samples["no_port"]) == (2, 2)
        muxed.close()
        assert harness.negotiate(harness.phone()).port == low + 8
    finally:
        harness.close()
        for sock in busy:
            sock.close()
    with pytest.raises(ValueError, match="empty RTP port range"):
        PortPool(HOST, low + 9, low)


@pytest.mark.skipif(not ports.SO_TIMESTAMPNS, reason="the kernel's receive time is Linux's")
def test_a_stamped_socket_gives_datagrams_the_time_they_came_at() -> None:
    """A datagram that waited in the kernel while the loop was held up keeps the time it came
    at on a socket whose packets feed a jitter buffer (`stamp`), on the loop's clock; on any
    other it has the time it was read."""
    pool = PortPool(HOST, *free_ports(2))
    arrivals: list[float] = []
    rtp, _ = pool.open(lambda _data, _source, at: arrivals.append(at), None)
    rtp._clock = time.monotonic  # the loop's clock, as `start` sets it
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def waited() -> tuple[float, float, float]:
        """A datagram that waits 50 ms in the kernel, read: (sent, read, the time it was given)."""
        sent = time.monotonic()
        sender.sendto(b"\x80" * 20, (HOST, rtp.port))
        time.sleep(0.05)  # the loop held up: the datagram waits in the kernel (not a poll)
        read = time.monotonic()
        rtp._readable()
        assert len(arrivals) == 1
        return sent, read, arrivals.pop()

    try:
        rtp.stamp(True)
        assert rtp.stamped
        # The kernel turns receive times on for the system a moment after the first socket
        # asks (a deferred static key): until then a datagram is stamped when read.
        deadline = time.monotonic() + 5.0
        while True:
            sent, read, at = waited()
            if at < read or time.monotonic() > deadline:
                break
        assert sent - 0.002 < at < sent + 0.01
        rtp.stamp(False)
        sent, read, at = waited()
        assert at >= read
    finally:
        sender.close()
        rtp.close()


def test_a_read_error_is_skipped_and_the_drain_goes_on() -> None:
    """An unconnected Linux UDP socket rarely reports ICMP errors; a stub stands in for one."""

    class RefusingSocket:
        def __init__(self) -> None:
            self.reads = 0

        family = socket.AF_INET

        def getsockname(self) -> tuple[str, int]:
            return (HOST, 16598)

        def fileno(self) -> int:
            return -1

        def recvfrom_into(self, buffer: bytearray) -> tuple[int, tuple[str, int]]:
            self.reads += 1
            if self.reads == 1:
                raise ConnectionRefusedError  # an earlier send's ICMP port unreachable
            if self.reads == 2:
                buffer[:12] = b"\x80" * 12
                return 12, (HOST, 9)
            raise BlockingIOError

    received: list[bytes] = []
    stub = RefusingSocket()
    reader = MediaSocket(stub, lambda data, _source, _at: received.append(data))  # type: ignore[arg-type]
    reader._readable()  # the error: nothing read
    reader._readable()  # woken again at once: busy, so it drains to EAGAIN
    assert stub.reads == 3 and received == [b"\x80" * 12]


async def test_a_send_that_fails_is_counted(media: Harness) -> None:
    phone = media.phone()
    leg = media.call(phone, room=None)
    leg.rtp.send(b"\x80\x00" + bytes(10), (HOST, 0))  # port 0: the kernel refuses
    assert leg.rtp.send_errors == 1
    assert media.svc.samples()["rtp_send_errors"] == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 488),  # parse_sdp on nothing
        (b"v=0\r\nthis is not sdp\r\n", 488),
    ],
)
async def test_offers_we_cannot_parse_are_refused(media: Harness, body: bytes, status: int) -> None:
    with pytest.raises(SipProtocolError) as refused:
        media.svc.negotiate(body, PLAIN)
    assert refused.value.status == status
    assert media.svc.pool.in_use == set()


async def test_sdp_errors_become_488_with_their_detail(media: Harness) -> None:
    # The SIP boundary of sdp/: an SdpError of either kind, from an offer or from the answer to
    # ours, is refused as 488 Not Acceptable Here carrying the SDP layer's detail.
    phone = media.phone()
    garbled = b"v=0\r\nthis is not sdp\r\n"
    gsm = phone.offer((sdp.Codec(name="GSM", clock_rate=8000),))
    with pytest.raises(sdp.SdpError) as malformed:
        sdp.parse_sdp(garbled)
    with pytest.raises(sdp.SdpError) as unacceptable:
        sdp.negotiate_audio(sdp.parse_sdp(gsm), PLAIN.codecs, protos=PLAIN.protos)
    assert malformed.value.kind is sdp.SdpErrorKind.MALFORMED
    assert unacceptable.value.kind is sdp.SdpErrorKind.NOT_ACCEPTABLE
    _, leg = media.svc.offer(PLAIN)
    media.legs.append(leg)
    for refuse, error in [
        (lambda: media.svc.negotiate(garbled, PLAIN), malformed.value),
        (lambda: media.svc.negotiate(gsm, PLAIN), unacceptable.value),
        (lambda: media.svc.accept_answer(leg, garbled), malformed.value),
    ]:
        with pytest.raises(SipProtocolError) as refused:
            refuse()
        assert (refused.value.status, refused.value.reason) == (488, "Not Acceptable Here")
        assert refused.value.detail == error.detail
    assert media.svc.pool.in_use == {leg.port}


# -- late offer (INVITE without SDP: our offer in the 200, the answer in the ACK) -------------


def answer_to(
    offer_body: bytes,
    phone: FakePhone,
    codecs_wanted: tuple[sdp.Codec, ...],
    crypto: sdp.CryptoAttribute | None = None,
) -> bytes:
    """The phone's answer to our offer, accepting the first of `codecs_wanted` we offered."""
    offer = sdp.parse_sdp(offer_body)
    audio = sdp.negotiate_audio(
        offer, [*codecs_wanted, sdp.TELEPHONE_EVENT], protos=("RTP/AVP", "RTP/SAVP")
    )
    answer = sdp.build_answer(
        offer, audio, address=HOST, port=phone.port, session_id=7, session_version=7, crypto=crypto
    )
    phone.server = (HOST, offer.media[0].port)
    return sdp.serialize_sdp(answer)


async def test_a_late_offer_is_completed_by_the_answer(media: Harness) -> None:
    late, other = media.phone(), media.phone()
    body, leg = media.svc.offer(PLAIN)
    media.legs.append(leg)
    offered = sdp.parse_sdp(body).media[0]
    assert offered.port == leg.port and offered.proto == "RTP/AVP"
    assert [p.codec.name for p in offered.payload_formats] == [
        "PCMU",
        "PCMA",
        "G722",
        "opus",
        "telephone-event",
    ]
    assert media.svc.samples()["late_offer"] == 1
    with pytest.raises(SipProtocolError) as unusable:  # an answer on another transport
        media.svc.accept_answer(leg, late.offer(proto="RTP/SAVP"))
    assert unusable.value.status == 488

    media.svc.accept_answer(leg, answer_to(body, late, (sdp.PCMA,)))
    assert leg.spec is codecs.PCMA_SPEC and leg.audio_pt == 8 and leg.event_pt == 101
    assert leg.latch.expected == (HOST, late.port)
    media.svc.start(leg, timeout=5.0, on_timeout=lambda: None)
    media.svc.attach(leg, "room")
    media.call(other)
    sent = [other.send_rtp(pcmu(440, index)) for index in range(3)]
    received = [await late.recv_rtp() for _ in range(2)]
    assert [p.payload for p in received] == [
        codecs.transcode_g711(p.payload, codecs.PCMU_SPEC, codecs.PCMA_SPEC) for p in sent[1:]
    ]


async def test_a_secure_late_offer_takes_the_keys_from_the_answer(media: Harness) -> None:
    late, other = media.phone(), media.phone()
    body, leg = media.svc.offer(SECURE)
    media.legs.append(leg)
    offered = sdp.parse_sdp(body).media[0]
    assert offered.proto == "RTP/SAVP" and len(offered.crypto) == len(leg.offered_keys) > 1
    with pytest.raises(SipProtocolError) as plain:  # SRTP offered, plain RTP answered
        media.svc.accept_answer(leg, late.offer())
    assert plain.value.status == 488

    chosen = offered.crypto[-1]  # the phone picks the last suite (AES_CM_128_HMAC_SHA1_32)
    keys = SrtpKeys.generate(chosen.suite, os.urandom)
    reply = answer_to(body, late, (sdp.PCMU,), crypto=answer_crypto(chosen, keys))
    media.svc.accept_answer(leg, reply)
    assert leg.srtp is not None and leg.remote_keys == keys and leg.offered_keys == []
    late.srtp = SrtpContext(local=keys, remote=keys_from_crypto(chosen))
    media.svc.start(leg, timeout=5.0, on_timeout=lambda: None)
    media.svc.attach(leg, "room")
    media.call(other)
    sent = [late.send_rtp(pcmu(440, index)) for index in range(3)]
    received = [await other.recv_rtp() for _ in range(2)]
    assert [p.payload for p in received] == [p.payload for p in sent[1:]]
    back = [other.send_rtp(pcmu(700, index)) for index in range(3)]
    assert [(await late.recv_rtp()).payload for _ in range(2)] == [p.payload for p in back[1:]]


async def test_an_answer_in_the_ack_we_cannot_use_is_refused(media: Harness) -> None:
    late = media.phone()
    body, leg = media.svc.offer(SECURE)
    media.legs.append(leg)
    offered = sdp.parse_sdp(body).media[0]
    keyless = late.offer(proto="RTP/SAVP")
    wrong_tag = late.offer(
        proto="RTP/SAVP",
        crypto=[
            sdp.CryptoAttribute(tag=9, suite=offered.crypto[0].suite, keys=offered.crypto[0].keys)
        ],
    )
    for answer in (keyless, wrong_tag, b"not sdp at all"):
        with pytest.raises(SipProtocolError) as refused:
            media.svc.accept_answer(leg, answer)
        assert refused.value.status == 488
    assert leg.srtp is None and leg.offered_keys  # nothing taken from a refused answer


async def test_the_answer_to_our_reoffer_may_bring_new_srtp_keys(media: Harness) -> None:
    """A re-INVITE without SDP: our current session is the offer, the ACK brings the answer."""
    phone, other = media.phone(), media.phone()
    leg = secure_call(media, phone)
    media.call(other)
    context, our_keys = leg.srtp, leg.keys
    assert our_keys is not None
    leg.offered_codecs = (sdp_codec(leg.spec), sdp.TELEPHONE_EVENT)  # what the call runner sets
    ours = offer_crypto([our_keys])[0]

    def answer(keys: SrtpKeys | None, proto: str = "RTP/SAVP") -> bytes:
        lines = [answer_crypto(ours, keys)] if keys is not None else []
        return phone.offer(proto=proto, crypto=lines)

    assert leg.remote_keys is not None
    media.svc.accept_answer(leg, answer(leg.remote_keys))  # the same keys: nothing changes
    assert leg.srtp is context
    with pytest.raises(SipProtocolError):
        media.svc.accept_answer(leg, answer(None))  # SAVP without a=crypto
    bad_suite = phone.offer(
        proto="RTP/SAVP",
        crypto=[sdp.CryptoAttribute(tag=1, suite="F8_128_HMAC_SHA1_80", keys=ours.keys)],
    )
    with pytest.raises(SipProtocolError):
        media.svc.accept_answer(leg, bad_suite)
    assert leg.srtp is context

    fresh = SrtpKeys.generate(our_keys.suite, os.urandom)
    media.svc.accept_answer(leg, answer(fresh))
    assert leg.srtp is not context and leg.remote_keys == fresh and leg.keys == our_keys
    phone.srtp = SrtpContext(local=fresh, remote=our_keys)
    phone.new_source()
    sent = [phone.send_rtp(pcmu(440, index)) for index in range(3)]
    assert [(await other.recv_rtp()).payload for _ in range(2)] == [p.payload for p in sent[1:]]


# -- local audio, room changes and the clock ---------------------------------------------------


async def test_a_prompt_switches_the_leg_to_the_clock_while_it_plays(media: Harness) -> None:
    a, b = media.phone(), media.phone()
    leg_a, leg_b = media.call(a), media.call(b)
    finished: list[str] = []
    prompt = tone(1000, 3 * FRAME + 40)  # three frames and a bit: the last one padded
    leg_b.play(PcmPlayer(prompt, done=lambda: finished.append("done")))
    assert leg_b.mixing and leg_b.forward_from is None
    heard = await b.collect(0.2)
    await settle(lambda: bool(finished))
    assert finished == ["done"]
    assert leg_b.forward_from is leg_a and not leg_b.mixing  # back to forwarding
    pcm = codecs.ulaw_decode_array(b"".join(p.payload for p, _ in heard))
    loud = sum(rms(pcm[i : i + FRAME]) > 3000 for i in range(0, len(pcm), FRAME))
    assert loud == 4

    leg_b.play(PcmPlayer(tone(1000, 8000)))
    assert leg_b.mixing
    leg_b.stop_players()
    assert leg_b.forward_from is leg_a and not leg_b.players


async def test_a_pause_in_a_digit_string(media: Harness) -> None:
    phone = media.phone()
    leg = media.call(phone)
    leg.send_dtmf("w")
    await settle(lambda: not leg._dtmf_queue)
    assert leg.local_audio  # the pause runs on the clock: 500 ms
    events = await phone.collect(0.1, payload_type=101)
    assert events == []


async def test_attaching_to_another_room_moves_the_leg(media: Harness) -> None:
    a, b, c = media.phone(), media.phone(), media.phone()
    leg_a, leg_b = media.call(a), media.call(b)
    leg_c = media.call(c, room="elsewhere")
    media.svc.attach(leg_b, "elsewhere")
    assert list(media.svc.rooms["room"].legs) == [leg_a]
    assert list(media.svc.rooms["elsewhere"].legs) == [leg_c, leg_b]
    assert leg_b.forward_from is leg_c and leg_c.forward_from is leg_b
    assert leg_a.mixing  # alone now: silence on the clock
    media.svc.detach(leg_a)
    assert "room" not in media.svc.rooms and leg_a.room is None


class BrokenEncoder(AudioLeg):
    """A listener whose encoder fails on every frame."""

    def send_pcm(self, pcm: object, now: float) -> None:
        raise RuntimeError("encoder bug")


async def test_a_failing_room_is_dropped_from_the_clock_and_the_others_tick_on(
    media: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    broken, fine = media.phone(), media.phone()
    media.call(broken, room="broken")
    media.call(fine, room="fine")
    media.svc.attach(BrokenEncoder(codecs.PCMU_SPEC), "broken")
    with caplog.at_level(logging.ERROR):
        await settle(lambda: media.svc.rooms["broken"] not in media.svc.clock.rooms)
        fine.drain()
        assert await fine.collect(0.1)
    assert media.svc.rooms["fine"] in media.svc.clock.rooms
    assert "media tick failed in room broken" in [r.getMessage() for r in caplog.records]


async def test_the_clock_skips_missed_ticks_and_checks_timeouts_every_second(
    media: Harness,
) -> None:
    phone = media.phone()
    media.call(phone, timeout=1.0)
    clock = media.svc.clock
    clock.stop()
    base = asyncio.get_running_loop().time() + 10.0  # long after the start: the timeout is due
    clock._next, clock.ticks = base, 49
    clock.advance(base + 0.09)  # 90 ms late
    assert clock.ticks == 50 and media.timeouts == media.legs  # on_second ran
    # the ticks due at +20, +40, +60 and +80 ms are gone; the next is at +100 ms
    assert clock.skipped == 4 and clock._next == pytest.approx(base + 0.1)
    assert media.svc.samples()["clock_skipped"] == 4
