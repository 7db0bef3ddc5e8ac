"""One test per aiortc/aioice patch (server/rtc/aiortc_patches.py): each fails when an upgrade of
aiortc or aioice stops doing what its patch relies on - the patched global no longer being the one
looked up, called with other arguments, or its replacement no longer taking effect.

Each test first puts the pristine aiortc/aioice global back (a server built in this process may
have patched it), applies the patch, goes through aiortc's or aioice's own code path, and leaves
the global as it found it.
"""

from __future__ import annotations

import asyncio
import fractions
import inspect
import secrets
import socket
from types import SimpleNamespace
from typing import Any

import aioice.ice
import aiortc.codecs
import aiortc.codecs.opus
import aiortc.jitterbuffer
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import av
import numpy as np
import pytest
from aiortc import RTCIceGatherer, RTCIceTransport, RTCPeerConnection, RTCRtpCodecParameters
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtp import RtpPacket

from sipbridge.server.rtc.aiortc_patches import (
    PortRangeLoop,
    PromptAudioBuffer,
    WaveformOpusEncoder,
    bind_ice_ports,
    deliver_audio_promptly,
    restrict_host_addresses,
    use_waveform_opus,
)

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


@pytest.fixture(autouse=True)
def pristine_aiortc(monkeypatch: pytest.MonkeyPatch) -> None:
    # aiortc's and aioice's own objects back in place; monkeypatch restores what was there
    monkeypatch.setattr(aiortc.codecs, "OpusEncoder", aiortc.codecs.opus.OpusEncoder)
    monkeypatch.setattr(aiortc.rtcrtpreceiver, "JitterBuffer", aiortc.jitterbuffer.JitterBuffer)
    monkeypatch.setattr(aioice.ice, "asyncio", asyncio)
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)


# -- use_waveform_opus -------------------------------------------------------------------------


def tone_level(encoder: Any, hz: float) -> float:
    """RMS of a tone of `hz` after `encoder` and aiortc's Opus decoder (the first 0.5 s skipped:
    the encoder's start-up)."""
    frames = 50
    t = np.arange(960 * frames) / 48000
    pcm = (8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    decoder = aiortc.codecs.opus.OpusDecoder()
    decoded = []
    for i in range(frames):
        frame = av.AudioFrame.from_ndarray(
            pcm[i * 960 : (i + 1) * 960].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 48000
        frame.pts = i * 960
        frame.time_base = fractions.Fraction(1, 48000)
        payloads, timestamp = encoder.encode(frame)
        for payload in payloads:
            for out in decoder.decode(JitterFrame(data=payload, timestamp=timestamp)):
                assert isinstance(out, av.AudioFrame)
                decoded.append(out.to_ndarray().reshape(-1, 2)[:, 0])
    samples = np.concatenate(decoded)[24000:].astype(float)
    return float(np.sqrt(np.mean(samples**2)))


def test_senders_encode_opus_with_the_waveform_encoder() -> None:
    use_waveform_opus()
    # what an RTCRtpSender calls for its codec, once per sender (rtcrtpsender imports it by name)
    get_encoder = aiortc.rtcrtpsender.get_encoder  # type: ignore[attr-defined]
    assert get_encoder is aiortc.codecs.get_encoder
    assert inspect.signature(aiortc.codecs.opus.OpusEncoder).parameters == {}
    encoder = get_encoder(OPUS)
    assert type(encoder) is WaveformOpusEncoder
    # ... and its `audio` mode took effect (aiortc opens the codec after __init__): `voip` mode
    # high-passes a 30 Hz tone to a quarter of its level, `audio` keeps it
    low = tone_level(encoder, 30)
    mid = tone_level(get_encoder(OPUS), 440)
    assert low > 0.8 * mid, (low, mid)


def test_the_waveform_encoder_keeps_the_level_of_mono_audio() -> None:
    # Our frames are mono; aiortc's encoder upmixed them to stereo through FFmpeg, whose centre
    # mix level put each channel 3 dB down: every client heard the room at 0.71 of its level.
    sent = 8000 / np.sqrt(2)  # the RMS of the tone `tone_level` encodes
    level = tone_level(WaveformOpusEncoder(), 440)
    assert 0.95 * sent < level < 1.05 * sent, level / sent


# -- deliver_audio_promptly --------------------------------------------------------------------


async def test_audio_receivers_deliver_each_packet_through_the_prompt_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deliver_audio_promptly()
    transport = SimpleNamespace(state="new")  # all RTCRtpReceiver() reads of its DTLS transport
    audio = aiortc.rtcrtpreceiver.RTCRtpReceiver("audio", transport)  # type: ignore[arg-type]
    video = aiortc.rtcrtpreceiver.RTCRtpReceiver("video", transport)  # type: ignore[arg-type]
    buffer = audio._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    assert type(buffer) is PromptAudioBuffer
    video_buffer = video._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    assert type(video_buffer) is aiortc.jitterbuffer.JitterBuffer
    assert video_buffer.capacity == 512
    assert list(inspect.signature(aiortc.jitterbuffer.JitterBuffer).parameters) == [
        "capacity",
        "prefetch",
        "is_video",
    ]
    # one packet through the receiver's own path: depayloaded into `_data`, then `add`, whose
    # frame comes out at once (aiortc's buffer would hold it for four more)
    delivered: list[tuple[bool, JitterFrame | None]] = []
    add = buffer.add

    def spy(packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        result = add(packet)
        delivered.append(result)
        return result

    monkeypatch.setattr(buffer, "add", spy)
    audio._RTCRtpReceiver__codecs[111] = OPUS  # type: ignore[attr-defined]  # as receive() sets
    payload = b"\xfc\x01\x02\x03"
    packet = RtpPacket(payload_type=111, sequence_number=7, timestamp=960, ssrc=5, payload=payload)
    await audio._handle_rtp_packet(packet, arrival_time_ms=0)
    assert len(delivered) == 1
    pli, frame = delivered[0]
    assert not pli and frame is not None
    assert (frame.data, frame.timestamp) == (payload, 960)


# -- restrict_host_addresses and bind_ice_ports ------------------------------------------------


async def gathered() -> list[tuple[str, int]]:
    """(address, port) of the host candidates aiortc's ICE gatherer (aioice) finds."""
    gatherer = RTCIceGatherer(iceServers=[])  # as RtcPeer's: no STUN server
    transport = RTCIceTransport(gatherer)
    try:
        await asyncio.wait_for(gatherer.gather(), 5)
        return [(c.ip, c.port) for c in gatherer.getLocalCandidates()]
    finally:
        await transport.stop()


async def test_ice_gathers_host_candidates_on_the_chosen_addresses_only() -> None:
    restrict_host_addresses(["127.0.0.1"])
    # aioice never gathers on loopback itself: a 127.0.0.1 candidate comes from our list
    assert [address for address, _ in await gathered()] == ["127.0.0.1"]


def free_port_below_ephemeral() -> int:
    """A free UDP port on 127.0.0.1 that the kernel never picks for port 0 (below 32768)."""
    for _ in range(100):
        port = 20000 + secrets.randbelow(12000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free UDP port in 20000-31999")


async def test_ice_binds_candidate_sockets_through_the_port_range_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    restrict_host_addresses(["127.0.0.1"])
    port = free_port_below_ephemeral()
    bind_ice_ports((port, port))
    asked: list[object] = []
    create = PortRangeLoop.create_datagram_endpoint

    async def spy(self: PortRangeLoop, factory: Any, local_addr: Any = None, **kw: Any) -> Any:
        asked.append(local_addr)
        return await create(self, factory, local_addr, **kw)

    monkeypatch.setattr(PortRangeLoop, "create_datagram_endpoint", spy)
    assert await gathered() == [("127.0.0.1", port)]
    assert asked == [("127.0.0.1", 0)]  # aioice asked for any port, through our loop


def test_start_missed_media_finds_aiortcs_private_connect() -> None:
    """`start_missed_media` calls `RTCPeerConnection.__connect` (name-mangled): an aiortc that
    renames it or makes it take arguments fails here, not as a silent call in production."""
    connect = getattr(RTCPeerConnection, "_RTCPeerConnection__connect", None)
    assert connect is not None and inspect.iscoroutinefunction(connect)
    assert list(inspect.signature(connect).parameters) == ["self"]
