"""WebRTC media for SDK participants, with aiortc (WIRE.md s4, s6).

One peer connection per signalling session, in the SDK's single-PC mode: the client always
offers. Its offer's recvonly audio sections carry what it subscribes to: each room audio track
it hears is put on a free one (`mid_to_track_id` in our answer), fed by a `Subscription` - a
room listener hearing exactly that track's source, its 20 ms frames handed to aiortc, which
encodes them (Opus, or G.711/G.722 when that is what the client takes). Tracks it publishes
arrive decoded from aiortc and become `Publication`s: room sources the phones hear through the
mixer. A track that needs a section while none is free asks the client for one
(`MediaSectionsRequirement`), and the client re-offers.

ICE: aiortc gathers host candidates on every non-loopback interface; `restrict_host_addresses`
limits gathering (and binding) to the `--rtc-ip` addresses, and no STUN server is used.
aioice binds each candidate's socket to an ephemeral port; `bind_ice_ports` keeps them in
`--rtc-ports`, so a firewall can open one known range.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fractions
import json
import logging
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aioice.ice
import aiortc.codecs
import aiortc.codecs.opus
import aiortc.jitterbuffer
import aiortc.rtcrtpreceiver
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import MAX_MISORDER, JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket as AiortcRtpPacket
from aiortc.sdp import candidate_from_sdp

from sipbridge.media import codecs
from sipbridge.media.rtp import RtpPacket
from sipbridge.server.call_media import FRAME_MS, G711, AudioLeg, CallMedia, Pcm, PcmFifo, Timeline

log = logging.getLogger(__name__)

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
MAX_LOSSY_BUFFERED = 256 * 1024


class _WaveformOpusEncoder(aiortc.codecs.opus.OpusEncoder):
    """aiortc's Opus encoder in `audio` mode: its default `voip` mode (SILK, high-pass) keeps
    speech intelligible but not the waveform - a bridged caller correlated 0.45 with what the
    SDK heard; CELT at aiortc's 96 kbit/s keeps it (and costs no more)."""

    def __init__(self) -> None:
        super().__init__()
        self.codec.options = {"application": "audio"}


def use_waveform_opus() -> None:
    """Make aiortc encode Opus with `_WaveformOpusEncoder` (it looks the class up per sender)."""
    aiortc.codecs.OpusEncoder = _WaveformOpusEncoder  # type: ignore[attr-defined]


class _PromptAudioBuffer:
    """aiortc's receive buffer for audio, replaced: one audio packet is one frame, delivered the
    moment it arrives unless it is a duplicate or late (then dropped). aiortc's JitterBuffer
    (prefetch=4) held every frame until four more had come - 80 ms added to everything an agent
    says - and stalled on a lost packet; pacing and smoothing are the room clock's job."""

    capacity = 16

    def __init__(self) -> None:
        self._last: int | None = None

    def add(self, packet: AiortcRtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._last is not None:
            behind = (self._last - seq) & 0xFFFF
            if behind < MAX_MISORDER:  # a duplicate (0) or a late packet: its time has passed
                return False, None
        self._last = seq
        data: bytes = packet._data  # type: ignore[attr-defined]  # the depayloaded frame
        return False, JitterFrame(data=data, timestamp=packet.timestamp)


def deliver_audio_promptly() -> None:
    """Make aiortc's receivers use `_PromptAudioBuffer` for audio (video keeps its own)."""
    original = aiortc.jitterbuffer.JitterBuffer

    def factory(capacity: int, prefetch: int = 0, is_video: bool = False) -> object:
        if is_video:
            return original(capacity, prefetch=prefetch, is_video=True)
        return _PromptAudioBuffer()

    aiortc.rtcrtpreceiver.JitterBuffer = factory  # type: ignore[assignment,attr-defined]


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Gather ICE host candidates only on `addresses` (WIRE.md s6): aioice looks the function up
    at gather time, so replacing it keeps both gathering and socket binding on them."""
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


class _PortRangeLoop:
    """The running loop as aioice sees it: a UDP endpoint asked for on port 0 is bound to a
    free port of `ports` instead (tried from a random start, each port at most once)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ports: tuple[int, int]) -> None:
        self._loop = loop
        self._ports = ports

    def __getattr__(self, name: str) -> object:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(
        self,
        factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: tuple[str, int] | None = None,
        **kw: Any,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        if local_addr is None or local_addr[1] != 0:
            return await self._loop.create_datagram_endpoint(factory, local_addr, **kw)
        lo, hi = self._ports
        count = hi - lo + 1
        start = secrets.randbelow(count)
        for i in range(count):
            port = lo + (start + i) % count
            try:
                return await self._loop.create_datagram_endpoint(
                    factory, (local_addr[0], port), **kw
                )
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {lo}-{hi} on {local_addr[0]}")


class _AsyncioForIce:
    """The `asyncio` module as aioice.ice sees it: itself, but for `get_running_loop`."""

    def __init__(self, ports: tuple[int, int]) -> None:
        self._ports = ports

    def __getattr__(self, name: str) -> object:
        return getattr(asyncio, name)

    def get_running_loop(self) -> _PortRangeLoop:
        return _PortRangeLoop(asyncio.get_running_loop(), self._ports)


def bind_ice_ports(ports: tuple[int, int]) -> None:
    """Bind aioice's candidate sockets within `ports` (`--rtc-ports`): aioice.ice takes its
    loop from `asyncio.get_running_loop()` when it gathers, and only binds through it."""
    aioice.ice.asyncio = _AsyncioForIce(ports)  # type: ignore[assignment,attr-defined]


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
    """An SDK participant's published audio as a room source (48 kHz mono PCM)."""

    def __init__(self) -> None:
        super().__init__(codecs.OPUS_SPEC)
        self.sending = False  # it hears nothing: its publisher's peer connection gets
        self.fifo = PcmFifo()
        self.frames = 0
        self.trimmed = 0  # samples dropped to keep the delay down

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
        self.frames += 1

    def pull(self, now: float) -> Pcm | None:
        if len(self.fifo.buffer) < FRAME:
            return None
        return self.fifo.take(FRAME)

    def flush(self) -> None:
        self.fifo = PcmFifo()


def _msid_tracks(sdp: str) -> dict[str, str]:
    """mid -> track id of each section with `a=msid:<stream> <track>` (RFC 8830)."""
    found: dict[str, str] = {}
    mid = ""
    for line in sdp.splitlines():
        if line.startswith("m="):
            mid = ""
        elif line.startswith("a=mid:"):
            mid = line[6:].strip()
        elif line.startswith("a=msid:") and mid:
            parts = line[7:].split()
            if len(parts) == 2:
                found[mid] = parts[1]
    return found


_MIME = {codecs.PCMU_SPEC: "audio/pcmu", codecs.PCMA_SPEC: "audio/pcma"}


def _subscription_codec(source: AudioLeg, transceiver: RTCRtpTransceiver) -> codecs.CodecSpec:
    """What a client hears a track in: a phone's G.711 as it is when the client's section takes
    it (the SDK offers PCMU and PCMA), or the other G.711 (translated by table); else Opus."""
    offered = {codec.mimeType.lower() for codec in transceiver._codecs}
    if source.forwardable and source.spec in G711:
        for spec in sorted(G711, key=lambda spec: spec is not source.spec):
            if _MIME[spec] in offered:
                return spec
    return codecs.OPUS_SPEC


def _keep_codec(transceiver: RTCRtpTransceiver, spec: codecs.CodecSpec) -> None:
    """Answer (and re-answer, on every later offer) the section with `spec` only: aiortc's
    sender keeps the encoder of its first codec, so the codec of a section must not change."""
    mime = _MIME.get(spec, "audio/opus")
    kept = [codec for codec in transceiver._codecs if codec.mimeType.lower() == mime]
    if kept:
        transceiver._codecs = kept


def _free_audio(transceiver: RTCRtpTransceiver) -> bool:
    """A section the client offered to receive audio on, with nothing of ours on it yet."""
    track: MediaStreamTrack | None = transceiver.sender.track
    return transceiver.kind == "audio" and transceiver.direction == "recvonly" and track is None


@dataclass(eq=False, kw_only=True)
class RtcPeer:
    """The peer connection of one signalling session."""

    identity: str
    pc: RTCPeerConnection = field(
        default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[]))
    )
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # track sid -> the transceiver carrying it to this client, and its room listener
    sending: dict[str, tuple[RTCRtpTransceiver, Subscription]] = field(default_factory=dict)
    # client track id (AddTrackRequest.cid) -> our TR_ sid, until its media arrives
    published: dict[str, str] = field(default_factory=dict)
    publications: dict[str, Publication] = field(default_factory=dict)
    readers: set[asyncio.Task[None]] = field(default_factory=set)
    closed: bool = False
    listening: bool = False
    mid_tracks: dict[str, str] = field(default_factory=dict)  # mid -> the client's track id
    channels: dict[str, RTCDataChannel] = field(default_factory=dict)  # by label
    on_data: Callable[[bytes, bool], None] | None = None  # (DataPacket bytes, lossy)
    on_connected: Callable[[], None] | None = None  # ICE and DTLS are up

    async def answer(
        self,
        sdp: str,
        wanted: dict[str, tuple[AudioLeg, str]],
        on_publication: Callable[[str, Publication], None],
    ) -> tuple[str, dict[str, str], list[str]]:
        """Answer the client's offer: (answer SDP, mid -> TR_ sid, tracks left without a free
        section). `wanted`: the audio tracks this client should receive, with their sources and
        their publishers' participant sids.
        """
        if not self.listening:
            self.listening = True
            self.pc.on("track", lambda track: self._on_track(track, on_publication))
            self.pc.on("datachannel", self._on_channel)
            self.pc.on("connectionstatechange", self._on_state)
        if not sdp.startswith("v=0") or "\nm=" not in sdp or "a=ice-ufrag:" not in sdp:
            raise ValueError("the offer is no WebRTC session description")
        self.mid_tracks.update(_msid_tracks(sdp))
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for transceiver, subscription in self.sending.values():
            _keep_codec(transceiver, subscription.spec)
        used = {id(transceiver) for transceiver, _ in self.sending.values()}
        free = [t for t in self.pc.getTransceivers() if _free_audio(t) and id(t) not in used]
        left = []
        for track_sid, (source, publisher_sid) in wanted.items():
            if track_sid in self.sending:
                continue
            if not free:
                left.append(track_sid)
                continue
            transceiver = free.pop(0)
            track = OutgoingAudio(track_sid)
            transceiver.sender.replaceTrack(track)
            transceiver.direction = "sendonly"
            # msid "<PA_sid>|<TR_sid> <TR_sid>" or the SDK drops the track (WIRE.md s4)
            transceiver.sender._stream_id = f"{publisher_sid}|{track_sid}"
            spec = _subscription_codec(source, transceiver)
            _keep_codec(transceiver, spec)
            self.sending[track_sid] = (transceiver, Subscription(source, track, spec))
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        mids = {
            transceiver.mid: track_sid
            for track_sid, (transceiver, _) in self.sending.items()
            if transceiver.mid is not None
        }
        return self.pc.localDescription.sdp, mids, left

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected" and self.on_connected is not None:
            callback, self.on_connected = self.on_connected, None
            callback()

    def _on_channel(self, channel: RTCDataChannel) -> None:
        """The client opens `_reliable`, `_lossy` (and `_data_track`) in band (WIRE.md s4)."""
        self.channels[channel.label] = channel
        lossy = channel.label == "_lossy"

        def message(data: bytes | str) -> None:
            if isinstance(data, bytes) and self.on_data is not None:
                self.on_data(data, lossy)

        channel.on("message", message)

    def send_data(self, data: bytes, *, lossy: bool) -> bool:
        """A DataPacket to the client on its channel of that kind; False when none is open."""
        channel = self.channels.get("_lossy" if lossy else "_reliable") or self.channels.get(
            "_reliable"
        )
        if channel is None or channel.readyState != "open":
            return False
        if lossy and channel.bufferedAmount > MAX_LOSSY_BUFFERED:
            return False  # lossy data is dropped rather than queued behind a slow client
        channel.send(data)
        return True

    def _on_track(
        self, track: MediaStreamTrack, on_publication: Callable[[str, Publication], None]
    ) -> None:
        if track.kind != "audio":
            return
        # aiortc names remote tracks itself: the client's track id (its AddTrackRequest cid)
        # is in the a=msid of the section the track came on.
        mid = next((t.mid for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        track_sid = self.published.get(self.mid_tracks.get(mid or "", ""), "")
        publication = Publication()
        if track_sid:
            self.publications[track_sid] = publication
            on_publication(track_sid, publication)
        task = asyncio.create_task(self._read(track, publication), name=f"rtc in {track.id}")
        self.readers.add(task)
        task.add_done_callback(self.readers.discard)

    async def _read(self, track: MediaStreamTrack, publication: Publication) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                if isinstance(frame, av.AudioFrame):
                    publication.push(frame)

    async def add_candidate(self, candidate_init: str) -> None:
        """A trickled client candidate: JSON {candidate, sdpMid, sdpMLineIndex}."""
        try:
            init = json.loads(candidate_init)
            text = str(init.get("candidate", ""))
        except (ValueError, AttributeError):
            return
        if not text:
            return
        try:
            candidate = candidate_from_sdp(
                text.split(":", 1)[1] if text.startswith("candidate:") else text
            )
        except (ValueError, IndexError):
            return
        candidate.sdpMid = init.get("sdpMid")
        candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        with contextlib.suppress(Exception):
            await self.pc.addIceCandidate(candidate)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in list(self.readers):
            task.cancel()
        for _, subscription in self.sending.values():
            subscription.track.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()
