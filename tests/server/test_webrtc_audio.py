"""Audio for WebRTC subscribers in process: which codec a client hears a track in, G.711 passed
through as it came from the phone, frames of ours, and the queue aiortc's sender reads.

Phones are `FakePhone`s on loopback (real UDP, real `MediaService` legs); the subscriber side is
the `Subscription` and `OutgoingAudio` aiortc would read from, read here directly.
"""

from __future__ import annotations

import asyncio
import fractions
import itertools
from types import SimpleNamespace
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.mediastreams import MediaStreamError

from sipbridge import sdp
from sipbridge.media import codecs
from sipbridge.media.room_audio import RoomAudio
from sipbridge.media.session import MIN_SEQUENTIAL
from sipbridge.server.media.leg_driver import Timeline
from sipbridge.server.rtc import audio, peer
from sipbridge.server.rtc.aiortc_patches import PromptAudioBuffer
from sipbridge.telephony.media import MediaPolicy
from tests.server.test_call_media import FRAME, Harness, paced, pcmu, settle

pytestmark = pytest.mark.timeout(15)


def subscribe(
    media: Harness, source: Any, spec: codecs.CodecSpec, room: str = "room"
) -> audio.Subscription:
    subscription = audio.Subscription(source, audio.OutgoingAudio("TR_x"), spec)
    media.svc.attach(subscription, room)
    return subscription


def queued(subscription: audio.Subscription) -> list[Any]:
    return [item for _, item in subscription.track.queue]


# -- the codec a client hears a phone in ---------------------------------------------------------


def section(*mimes: str) -> Any:
    """A stand-in transceiver with the codecs aiortc found common with the client's offer."""
    found = [
        RTCRtpCodecParameters(mimeType=mime, clockRate=48000 if "opus" in mime else 8000)
        for mime in mimes
    ]
    return SimpleNamespace(_codecs=found)


async def test_a_g711_phone_is_heard_in_its_codec_when_the_client_takes_it(
    media: Harness,
) -> None:
    ulaw, alaw, wide = media.phone(), media.phone(), media.phone()
    leg_u = media.call(ulaw)
    leg_a = media.call(alaw, offer=alaw.offer((sdp.PCMA,)))
    leg_w = media.call(wide, offer=wide.offer((sdp.G722,)))
    sdk = ("audio/opus", "audio/G722", "audio/PCMU", "audio/PCMA")
    choose = peer._subscription_codec
    assert choose(leg_u, section(*sdk)) is codecs.PCMU_SPEC
    assert choose(leg_a, section(*sdk)) is codecs.PCMA_SPEC
    assert choose(leg_u, section("audio/opus", "audio/PCMA")) is codecs.PCMA_SPEC  # by table
    assert choose(leg_u, section("audio/opus")) is codecs.OPUS_SPEC
    assert choose(leg_w, section(*sdk)) is codecs.OPUS_SPEC  # aiortc has no G.722
    assert choose(audio.Publication(), section(*sdk)) is codecs.OPUS_SPEC  # not a phone

    # the answer keeps that codec alone, and keeps it when a later offer lists it again
    transceiver = section(*sdk)
    peer._keep_codec(transceiver, codecs.PCMU_SPEC)
    assert [c.mimeType for c in transceiver._codecs] == ["audio/PCMU"]
    transceiver = section(*sdk)
    peer._keep_codec(transceiver, codecs.OPUS_SPEC)
    assert [c.mimeType for c in transceiver._codecs] == ["audio/opus"]
    transceiver = section("audio/opus")
    peer._keep_codec(transceiver, codecs.PCMU_SPEC)  # gone from the offer: left to aiortc
    assert [c.mimeType for c in transceiver._codecs] == ["audio/opus"]


# -- passing G.711 through -----------------------------------------------------------------------


async def test_the_phones_packets_reach_the_client_as_they_are(media: Harness) -> None:
    phone = media.phone()
    leg = media.call(phone)
    sub = subscribe(media, leg, codecs.PCMU_SPEC)
    assert leg.forward_to == [sub] and sub.forward_from is leg and not sub.mixing

    sent = [phone.send_rtp(pcmu(440, index)) for index in range(6)]
    await settle(lambda: sub.forwarded == 6 - (MIN_SEQUENTIAL - 1))
    packets = queued(sub)
    assert all(isinstance(p, av.Packet) for p in packets)
    assert [bytes(p) for p in packets] == [p.payload for p in sent[MIN_SEQUENTIAL - 1 :]]
    assert {p.time_base for p in packets} == {fractions.Fraction(1, 8000)}
    assert [q.pts - p.pts for p, q in itertools.pairwise(packets)] == [FRAME] * 4
    assert sub.made == 0 and leg.stats.forwarded == 0  # nothing decoded or encoded


async def test_pcmu_is_translated_for_a_client_that_takes_only_pcma(media: Harness) -> None:
    phone = media.phone()
    leg = media.call(phone)
    sub = subscribe(media, leg, codecs.PCMA_SPEC)
    sent = [phone.send_rtp(pcmu(697, index)) for index in range(3)]
    await settle(lambda: sub.forwarded == 2)
    assert [bytes(p) for p in queued(sub)] == [
        codecs.transcode_g711(p.payload, codecs.PCMU_SPEC, codecs.PCMA_SPEC) for p in sent[1:]
    ]


async def test_a_lost_packet_leaves_a_gap_in_the_timestamps(media: Harness) -> None:
    phone = media.phone()
    leg = media.call(phone)
    sub = subscribe(media, leg, codecs.PCMU_SPEC)
    for index in range(3):
        phone.send_rtp(pcmu(440, index))
    phone.sequence += 1  # one packet lost on the way
    phone.timestamp += FRAME
    phone.send_rtp(pcmu(440, 4))
    await settle(lambda: sub.forwarded == 3)
    pts = [p.pts for p in queued(sub)]
    assert [b - a for a, b in itertools.pairwise(pts)] == [FRAME, 2 * FRAME]


async def test_a_silent_or_held_phone_is_heard_as_frames_of_ours(media: Harness) -> None:
    phone = media.phone()
    leg = media.call(phone)
    sub = subscribe(media, leg, codecs.PCMU_SPEC)
    await paced(phone, [pcmu(440, index) for index in range(3)])
    await settle(lambda: sub.forwarded == 2)
    # the phone holds: it no longer talks, so the subscriber gets silence on the clock
    phone_offer = phone.offer(direction=sdp.Direction.INACTIVE)
    media.svc.renegotiate(leg, phone_offer, MediaPolicy())
    assert sub.mixing and leg.forward_to == []
    await settle(lambda: sub.made >= 3)
    silence = codecs.silence_payload(codecs.PCMU_SPEC, 20)
    made = queued(sub)[2:]
    assert made and all(bytes(p) == silence for p in made)
    pts = [p.pts for p in queued(sub)]
    steps = [(b - a) % 2**32 for a, b in itertools.pairwise(pts)]
    assert all(step >= FRAME for step in steps), steps  # one timeline, never backwards


async def test_an_opus_subscriber_gets_decoded_frames_on_the_clock(media: Harness) -> None:
    phone = media.phone()
    leg = media.call(phone, offer=phone.offer((sdp.G722,)))
    sub = subscribe(media, leg, codecs.OPUS_SPEC)
    assert sub.mixing and leg.forward_to == [] and not sub.forwardable
    await paced(phone, [bytes(160)] * 6)
    await settle(lambda: sub.made >= 3)
    frames = queued(sub)
    assert frames and all(isinstance(f, av.AudioFrame) for f in frames)
    assert {f.sample_rate for f in frames} == {48000} and {f.samples for f in frames} == {960}


# -- the queue aiortc's sender reads -------------------------------------------------------------


async def test_stale_audio_is_dropped_and_fresh_audio_kept() -> None:
    track = audio.OutgoingAudio("TR_q")
    now = asyncio.get_running_loop().time()
    for index in range(5):  # waited for DTLS: 400 ms old down to 0
        track.push_packet(bytes([index]) * 160, index * FRAME, 8000, now - 0.1 * (4 - index))
    first = await track.recv()
    assert bytes(first)[0] == 4 and track.dropped == 4  # only the fresh one went
    track.push_packet(b"\x05" * 160, 5 * FRAME, 8000, now - 0.2)
    track.push_packet(b"\x06" * 160, 6 * FRAME, 8000, now)  # once started, a late sender
    assert [bytes(await track.recv())[0] for _ in range(2)] == [5, 6]  # catches up: both go
    for index in range(audio.MAX_QUEUED_FRAMES + 3):  # an encoder that fell far behind
        track.push_frame(np.zeros(960, np.int16), index * 960, now)
    assert len(track.queue) == audio.MAX_QUEUED_FRAMES and track.dropped == 7


async def test_a_stopped_track_ends_a_waiting_sender() -> None:
    track = audio.OutgoingAudio("TR_s")
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.01)  # the behaviour under test: nothing to send, so it keeps waiting
    assert not waiting.done()
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(waiting, 1)


# -- the stream's clock --------------------------------------------------------------------------


def test_timeline_maps_sources_onto_one_stream() -> None:
    line = Timeline(8000, FRAME, start=1000)
    assert line.made(10.0) == (1000, True)
    assert line.made(10.02) == (1160, False)
    assert line.made(10.021) == (1320, False)  # at least a frame on, late tick or not
    # a forwarded source continues from where the stream's clock is
    assert line.forwarded(7, 50_000, 10.06) == (1632, True)
    assert line.forwarded(7, 50_160, 10.08) == (1792, False)
    assert line.forwarded(7, 50_480, 10.12) == (2112, False)  # its gaps are kept
    assert line.forwarded(8, 2**32 - 80, 10.14) == (2272, True)  # a new SSRC: mapped anew
    assert line.forwarded(8, 80, 10.16) == (2432, False)  # across its wrap
    line.continue_at(5000, 10.5)
    assert line.made(10.52) == (5160, False)
    line.rebase(16000, 320)
    assert line.made(10.54) == (5480, False)
    assert Timeline(8000, FRAME, start=2**32 - 100).forwarded(1, 0, 0.0)[0] == 2**32 - 100


# -- what an SDK client publishes ----------------------------------------------------------------


def aiortc_packet(seq: int, ts: int) -> Any:
    from aiortc.rtp import RtpPacket  # noqa: PLC0415

    packet = RtpPacket(payload_type=111, sequence_number=seq, timestamp=ts)
    packet._data = bytes([seq & 0xFF])  # type: ignore[attr-defined]
    return packet


def test_received_audio_is_delivered_at_once_late_and_duplicate_packets_dropped() -> None:
    buffer = PromptAudioBuffer()
    out = []
    for seq in (65534, 65535, 0, 0, 2, 1, 3, 40000):  # a wrap, a duplicate, a loss, a late one
        _, frame = buffer.add(aiortc_packet(seq, seq * 960))
        out.append(None if frame is None else frame.data[0])
    assert out == [0xFE, 0xFF, 0, None, 2, None, 3, 40000 & 0xFF]  # a jump far away: a restart


def frame48(value: int, samples: int = 960) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.full((1, samples), value, np.int16), format="s16", layout="mono"
    )
    frame.sample_rate = 48000
    return frame


def test_publisher_audio_waits_at_most_three_frames() -> None:
    publication = audio.Publication()
    for value in range(1, 11):  # nobody listens yet: only the newest frame is kept
        publication.push(frame48(value))
    assert len(publication.fifo.buffer) == 960 and publication.fifo.buffer[0] == 10
    publication.buffered = True  # a phone hears it now
    for value in range(11, 15):  # a burst of four frames: past three, cut back to two
        publication.push(frame48(value))
    assert len(publication.fifo.buffer) == audio.MAX_AHEAD
    assert publication.trimmed == 2 * 960  # frames 10 and 11
    taken = publication.pull(0.0)
    assert taken is not None and taken[0] == 12  # 40 ms behind the newest, not 80


class StoppedClock:
    """A room clock that never ticks: routing is all these tests look at."""

    def add(self, room: RoomAudio) -> None: ...

    def discard(self, room: RoomAudio) -> None: ...


def test_a_publisher_is_told_once_when_its_audio_first_reaches_a_listener() -> None:
    # LiveKit sends the publisher TrackSubscribed when its track is first subscribed; an agent
    # waits for it before it speaks. Ours comes with the first frame someone hears: the SDK's
    # sender is running by then, so what the agent says next is heard from its start.
    publication = audio.Publication()
    told: list[str] = []
    publication.on_heard = lambda: told.append("TrackSubscribed")
    room = RoomAudio("room", StoppedClock())
    room.add(publication)
    publication.push(frame48(1))  # alone in the room: nobody hears it
    assert told == []
    listener = audio.Subscription(publication, audio.OutgoingAudio("TR_x"))
    room.add(listener)
    assert told == []  # a listener, but no audio yet
    publication.push(frame48(2))
    assert told == ["TrackSubscribed"]
    room.remove(listener)
    room.add(audio.Subscription(publication, audio.OutgoingAudio("TR_y")))
    publication.push(frame48(3))
    assert told == ["TrackSubscribed"]  # once per track, as LiveKit does
