"""Room audio to and from a client's peer connection (WIRE.md s6).

`OutgoingAudio` is the track aiortc sends a client: 20 ms frames it encodes (Opus) or G.711
packets it only packetises. A `Subscription` fills it: a room listener hearing exactly one
track's source - a phone's packets forwarded as they came when the client takes its codec, else
frames of the room's clock. A `Publication` is the other way: a client's published audio,
decoded by aiortc, as a room source the phones hear through the mixer.
"""

from __future__ import annotations

import asyncio
import fractions
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from sipbridge.media import codecs
from sipbridge.media.levels import PacketLevels, pcm_dbov
from sipbridge.media.rtp import RtpPacket
from sipbridge.server.media.leg_driver import (
    FRAME_MS,
    G711,
    AudioLeg,
    CallMedia,
    Pcm,
    PcmFifo,
    Timeline,
)

RATE = 48000
FRAME = RATE * FRAME_MS // 1000
MAX_QUEUED_FRAMES = 10  # 200 ms: beyond it the encoder fell behind, drop the oldest
if TYPE_CHECKING:  # what aiortc's sender takes from a track (PyAV's Packet is generic in stubs)
    Outgoing = av.AudioFrame | av.Packet[av.stream.Stream]
STALE_S = 0.06  # audio queued longer than this for aiortc's sender is dropped
# Publisher audio waiting for the room's clock: beyond MAX_AHEAD (a burst after a stall) it is
# cut back to KEEP_AHEAD, so what the phone hears never falls further behind than that.
MAX_AHEAD = 3 * FRAME
KEEP_AHEAD = 2 * FRAME
SILENCE = np.zeros(FRAME, np.int16)


class OutgoingAudio(MediaStreamTrack):
    """An audio track aiortc sends: 20 ms frames aiortc encodes (Opus), or packets already
    encoded (G.711, forwarded or ours) that it only packetises. Timestamps are ours (`pts`)."""

    kind = "audio"

    def __init__(self, track_sid: str) -> None:
        super().__init__()
        self.track_sid = track_sid
        self.queue: deque[tuple[float, Outgoing]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.dropped = 0
        self.started = False  # the sender took its first item

    @property
    def id(self) -> str:
        # The SDK matches tracks by sid: the track id must be the TR_ sid (WIRE.md s6).
        return self.track_sid

    def push_frame(self, pcm: Pcm, pts: int, now: float) -> None:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._put(frame, now)

    def push_packet(self, payload: bytes, pts: int, clock_rate: int, now: float) -> None:
        packet = av.Packet(payload)
        packet.pts = pts
        packet.time_base = fractions.Fraction(1, clock_rate)
        self._put(packet, now)

    def _put(self, item: Outgoing, now: float) -> None:
        if len(self.queue) >= MAX_QUEUED_FRAMES:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append((now, item))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def recv(self) -> Outgoing:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self.queue:
                break
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if not self.started:
            # What waited for the sender to start (it starts once DTLS is up, and the room has
            # been sending since the answer) would reach the client as one burst, which its
            # jitter buffer answers by time-compressing the audio: only fresh audio goes.
            # Later, a late sender catches up with what queued (at most MAX_QUEUED_FRAMES):
            # dropping it then would cut the audio whenever the loop is busy.
            self.started = True
            stale = asyncio.get_running_loop().time() - STALE_S
            while len(self.queue) > 1 and self.queue[0][0] < stale:
                self.queue.popleft()
                self.dropped += 1
        return self.queue.popleft()[1]

    def stop(self) -> None:
        super().stop()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Subscription(AudioLeg):
    """A room listener for one subscriber and one track: hears only that track's source.

    In Opus (any source), its frames are handed to aiortc to encode. In G.711 (a phone's track
    to a client that takes the phone's codec) the phone's packets are forwarded as they arrive,
    payload unchanged (or PCMU/PCMA translated by table), and its own frames (silence, a mix)
    are encoded here: aiortc only packetises them."""

    def __init__(
        self, source: AudioLeg, track: OutgoingAudio, spec: codecs.CodecSpec = codecs.OPUS_SPEC
    ) -> None:
        super().__init__(spec)
        self.hears = source
        self.receiving = False  # nobody hears a subscription
        self.track = track
        self.forwardable = spec in G711
        self.timeline = Timeline(spec.rtp_clock, spec.frame_ticks(FRAME_MS), 0)
        self.forwarded = 0  # phone packets passed on as they are
        self.made = 0  # frames of ours: a mix, silence
        self._encoder: codecs.Encoder | None = None
        self._silence = codecs.silence_payload(spec, FRAME_MS)

    def send_pcm(self, pcm: Pcm | None, now: float) -> None:
        pts, _ = self.timeline.made(now)
        self.made += 1
        if not self.forwardable:
            self.track.push_frame(SILENCE if pcm is None else pcm, pts, now)
            return
        if pcm is None:
            payload = self._silence
        else:
            if self._encoder is None:
                self._encoder = codecs.new_encoder(self.spec)
            payload = self._encoder.encode(pcm)
        self.track.push_packet(payload, pts, self.spec.rtp_clock, now)

    def counters(self) -> dict[str, int]:
        """For /metrics: packets passed on, frames made here, frames dropped as stale."""
        return {"forwarded": self.forwarded, "made": self.made, "dropped": self.track.dropped}

    def forward(self, packet: RtpPacket, source: CallMedia, now: float) -> None:
        pts, _ = self.timeline.forwarded(packet.ssrc, packet.timestamp, now)
        payload = packet.payload
        if source.spec is not self.spec:
            payload = codecs.transcode_g711(payload, source.spec, self.spec)
        self.track.push_packet(payload, pts, self.spec.rtp_clock, now)
        self.forwarded += 1


class Publication(AudioLeg):
    """An SDK participant's published audio as a room source (48 kHz mono PCM).

    `on_heard` is called once, with the first frame that arrives while someone in the room
    hears the track: LiveKit's server then tells the publisher `TrackSubscribed` ("the
    publisher knows when it should start sending data"), which `livekit-agents` awaits before
    it speaks. Audio captured before the SDK's sender starts - a debounced renegotiation
    (150 ms in the Rust SDK) and an answer after `publish_track` returns - never leaves the
    client; with its first frame here, the sender is running."""

    def __init__(self) -> None:
        super().__init__(codecs.OPUS_SPEC)
        self.sending = False  # it hears nothing: its publisher's peer connection gets
        self.fifo = PcmFifo()
        self.frames = 0
        self.trimmed = 0  # samples dropped to keep the delay down
        self.levels: PacketLevels = PacketLevels(codecs.OPUS_SPEC)  # measured on the decoded audio
        self.on_heard: Callable[[], None] | None = None

    def push(self, frame: av.AudioFrame) -> None:
        data = frame.to_ndarray()
        channels = len(frame.layout.channels)
        if data.dtype != np.int16:
            data = (np.clip(data, -1.0, 1.0) * 32767).astype(np.int16)
        if frame.format.is_planar:
            mono = data.mean(axis=0) if channels > 1 else data[0]
        else:
            flat = data.reshape(-1)
            mono = flat.reshape(-1, channels).mean(axis=1) if channels > 1 else flat
        pcm = np.asarray(mono, dtype=np.int16)
        # RFC 6465's level of what the client sent (the same as its ssrc-audio-level, which
        # aiortc does not expose): one dot product on audio decoded anyway
        self.levels.add_level(pcm_dbov(pcm), len(pcm) * 1000 / frame.sample_rate)
        if frame.sample_rate != RATE:
            pcm = codecs.Resampler(frame.sample_rate, RATE, low_latency=False).process(pcm)
        if not self.buffered:
            # Nobody hears it yet: keeping it would only add its age to the delay of the first
            # listener, for the whole call (the clock takes one frame per frame).
            self.fifo.buffer = pcm[-FRAME:]
        else:
            self.fifo.push(pcm)
            if len(self.fifo.buffer) > MAX_AHEAD:
                self.trimmed += len(self.fifo.buffer) - KEEP_AHEAD
                self.fifo.buffer = self.fifo.buffer[-KEEP_AHEAD:]
            if self.on_heard is not None:
                heard, self.on_heard = self.on_heard, None
                heard()
        self.frames += 1

    def pull(self, now: float) -> Pcm | None:
        if len(self.fifo.buffer) < FRAME:
            return None
        return self.fifo.take(FRAME)

    def flush(self) -> None:
        self.fifo = PcmFifo()
