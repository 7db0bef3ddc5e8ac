"""Call audio: one RTP leg per SIP call, joined in rooms, paced by one shared 20 ms clock.

A `CallMedia` is the call's RTP session: its sockets, the peer it latched to, SRTP, the
receive state, the outgoing stream and the DTMF receiver. A `RoomAudio` joins the legs of one
room. When a leg hears exactly one other leg with a codec it can take as is (the same codec, or
PCMU/PCMA translated by table), packets are forwarded the moment they arrive with their header
rewritten for the listener's stream: no jitter buffer, no decode, no clock (DESIGN.md: do no
codec work that nobody needs). Otherwise the listener mixes: every 20 ms the `MediaClock`
pulls one frame per source through its jitter buffer and decoder, resamples to the
listener's rate, sums all but the listener's own, encodes and sends. Prompts, tones and DTMF
for one leg switch that leg to the clock while they play.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from sipbridge import sdp
from sipbridge.media import codecs, mixer
from sipbridge.media.dtmf import DIGITS, DtmfReceiver, DtmfSender, dtmf_tone
from sipbridge.media.errors import MediaError
from sipbridge.media.jitter import JitterBuffer
from sipbridge.media.rtp import (
    RtpPacket,
    SenderReport,
    build_compound_report,
    is_rtcp,
    parse_rtcp,
    parse_rtp,
)
from sipbridge.media.session import Latch, RtpReceiver, RtpSender, ntp_timestamp, rtcp_interval
from sipbridge.media.srtp import SrtpContext, SrtpKeys
from sipbridge.media.tones import ToneGenerator, ToneSpec
from sipbridge.server.media_ports import PortPool

log = logging.getLogger(__name__)

FRAME_MS = 20
FRAME_S = FRAME_MS / 1000
COMFORT_NOISE_PT = 13
TIMESTAMP_MOD = 1 << 32
DTMF_TONE_MS = 250  # the reference's digit length and gap (SIP-BEHAVIOUR.md s5)
DTMF_GAP_MS = 250
DTMF_PAUSE_MS = 500  # `w` in a digit string

Pcm = NDArray[np.int16]


class PcmFifo:
    """Samples queued between a producer of uneven chunks (a streaming resampler's output
    comes in bursts) and a 20 ms consumer. Nothing comes out until `prime` samples are queued,
    and again after it ran dry, so bursts never turn into gaps of silence mid-word."""

    __slots__ = ("buffer", "prime", "primed", "underruns")

    def __init__(self, prime: int = 0) -> None:
        self.buffer: Pcm = np.zeros(0, np.int16)
        self.prime = prime
        self.primed = prime == 0
        self.underruns = 0

    def push(self, pcm: Pcm) -> None:
        self.buffer = pcm if not len(self.buffer) else np.concatenate((self.buffer, pcm))

    def take(self, count: int) -> Pcm | None:
        if not self.primed:
            if len(self.buffer) < max(self.prime, count):
                return None
            self.primed = True
        if len(self.buffer) < count:
            self.underruns += 1
            self.primed = self.prime == 0
            if not self.primed:
                return None
            out = np.concatenate((self.buffer, np.zeros(count - len(self.buffer), np.int16)))
            self.buffer = self.buffer[:0]
            return out
        out = self.buffer[:count]
        self.buffer = self.buffer[count:]
        return out


class Player:
    """Audio played to one leg: a prompt, a tone, in-band DTMF. `frame` returns None when done."""

    def frame(self, samples: int) -> Pcm | None:
        raise NotImplementedError


class PcmPlayer(Player):
    """Plays PCM already at the leg's rate, then calls `done` once."""

    def __init__(self, pcm: Pcm, done: Callable[[], None] | None = None) -> None:
        self.pcm = pcm
        self.position = 0
        self.done = done

    def frame(self, samples: int) -> Pcm | None:
        if self.position >= len(self.pcm):
            done, self.done = self.done, None
            if done is not None:
                done()
            return None
        chunk = self.pcm[self.position : self.position + samples]
        self.position += samples
        if len(chunk) < samples:
            chunk = np.concatenate((chunk, np.zeros(samples - len(chunk), np.int16)))
        return chunk


@dataclass(eq=False, slots=True)
class _DtmfOut:
    """RFC 4733 events being sent: (send at tick index, payload, marker) per packet."""

    timestamp: int
    packets: deque[tuple[int, bytes, bool]]
    tick: int = 0


@dataclass(eq=False, kw_only=True)
class MediaStats:
    packets_in: int = 0
    packets_out: int = 0
    malformed: int = 0
    wrong_source: int = 0
    unknown_payload: int = 0
    srtp_failed: int = 0
    rtcp_in: int = 0
    rtcp_out: int = 0
    rtcp_malformed: int = 0
    dtmf_in: int = 0
    forwarded: int = 0
    mixed_frames: int = 0


class Timeline:
    """An outgoing stream's RTP clock. Frames we make continue it by wall time (at least one
    frame per frame); a forwarded source stream is mapped onto it with an offset fixed per source
    SSRC, so the receiver sees one stream, whatever feeds it and however often that changes."""

    __slots__ = ("_offset", "_ssrc", "clock_rate", "frame_ticks", "last", "last_at")

    def __init__(self, clock_rate: int, frame_ticks: int, start: int) -> None:
        self.clock_rate = clock_rate
        self.frame_ticks = frame_ticks
        self.last = start  # the timestamp last sent
        self.last_at: float | None = None  # and when (None: nothing sent yet)
        self._ssrc: int | None = None
        self._offset = 0

    def now(self, at: float) -> int:
        """Where the stream's clock is at `at`: the last timestamp plus the time since it."""
        if self.last_at is None:
            return self.last
        elapsed = round((at - self.last_at) * self.clock_rate)
        return (self.last + max(elapsed, self.frame_ticks)) % TIMESTAMP_MOD

    def made(self, at: float) -> tuple[int, bool]:
        """The timestamp of a frame of ours sent at `at`, and whether it starts the stream."""
        self._ssrc = None
        first = self.last_at is None
        self.last, self.last_at = self.now(at), at
        return self.last, first

    def forwarded(self, ssrc: int, timestamp: int, at: float) -> tuple[int, bool]:
        """A source packet's timestamp on our clock, and whether a new source stream starts
        (a marker: the receiver's jitter buffer should resynchronise)."""
        new = ssrc != self._ssrc
        if new:
            self._ssrc = ssrc
            self._offset = (self.now(at) - timestamp) % TIMESTAMP_MOD
        self.last, self.last_at = (timestamp + self._offset) % TIMESTAMP_MOD, at
        return self.last, new

    def continue_at(self, timestamp: int, at: float) -> None:
        """Our stream went on to `timestamp` by other means (a DTMF event's duration)."""
        self.last, self.last_at = timestamp, at

    def rebase(self, clock_rate: int, frame_ticks: int) -> None:
        """Another codec on the same stream: the next source maps anew."""
        self.clock_rate, self.frame_ticks = clock_rate, frame_ticks
        self._ssrc = None


class AudioLeg:
    """What a room needs of a member: a source of 20 ms frames (`receiving`, `pull`,
    `output_at`), a listener (`sending`, `send_pcm`, `local_frame`), or both. RTP legs are both
    and can also forward packets; WebRTC legs are one or the other, and a WebRTC listener in
    G.711 takes forwarded packets too."""

    forwardable = False  # packets of this leg can go to another as they are
    hears: AudioLeg | None = None  # None: every source in the room; else only that one

    def __init__(self, spec: codecs.CodecSpec) -> None:
        self.spec = spec
        self.room: RoomAudio | None = None
        self.sending = True  # it takes audio
        self.receiving = True  # it gives audio
        self.forward_to: list[AudioLeg] = []  # listeners taking our packets as they are
        self.forward_from: AudioLeg | None = None
        self.buffered = False
        self.mixing = False
        self._outputs: dict[int, tuple[codecs.Resampler, PcmFifo]] = {}

    @property
    def local_audio(self) -> bool:
        return False

    def flush(self) -> None:
        """Forget buffered input (no one mixes this source any more)."""

    def pull(self, now: float) -> Pcm | None:
        return None

    def local_frame(self, now: float) -> tuple[Pcm | None, bool]:
        return None, False

    def send_pcm(self, pcm: Pcm | None, now: float) -> None:
        """One frame of what this listener hears (None: silence)."""

    def forward(self, packet: RtpPacket, source: CallMedia, now: float) -> None:
        """A packet of `source`, for legs that take packets as they are."""

    def output_at(self, pcm: Pcm, rate: int) -> Pcm | None:
        """`pcm` (one pull) converted to `rate`: 20 ms of it, or None while the resampler fills."""
        if rate == self.spec.sample_rate:
            return pcm
        stream = self._outputs.get(rate)
        if stream is None:
            frame = rate * FRAME_MS // 1000
            resampler = codecs.Resampler(self.spec.sample_rate, rate)
            # soxr's blocks need a cushion of two frames; the polyphase filter needs none.
            prime = 3 * frame if resampler.blocky else 0
            stream = self._outputs[rate] = (resampler, PcmFifo(prime=prime))
        resampler, fifo = stream
        fifo.push(resampler.process(pcm))
        return fifo.take(rate * FRAME_MS // 1000)


class CallMedia(AudioLeg):
    """The RTP side of one call."""

    forwardable = True

    def __init__(
        self,
        *,
        pool: PortPool,
        answer: sdp.AudioAnswer,
        spec: codecs.CodecSpec,
        srtp: SrtpContext | None = None,
        on_dtmf: Callable[[str], None] | None = None,
        on_first_packet: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(spec)
        self.pool = pool
        self.srtp = srtp
        self.on_dtmf = on_dtmf
        self.on_first_packet = on_first_packet
        self.stats = MediaStats()
        self.rtcp_mux = answer.rtcp_mux
        self.rtp, self.rtcp = pool.open(self._on_rtp, None if answer.rtcp_mux else self._on_rtcp)
        self.port = self.rtp.port
        self.clock_rate = spec.rtp_clock
        self.frame_ticks = spec.frame_ticks(FRAME_MS)
        self.frame_samples = spec.frame_samples(FRAME_MS)
        self.sender = RtpSender(
            ssrc=secrets.randbits(32),
            clock_rate=spec.rtp_clock,
            payload_type=answer.audio.payload_type,
            initial_sequence=secrets.randbits(16),
            initial_timestamp=secrets.randbits(32),
        )
        self.receiver = RtpReceiver(spec.rtp_clock)
        self.jitter = JitterBuffer(clock_rate=spec.rtp_clock, frame_ms=FRAME_MS)
        self.latch = Latch(None)
        self.audio_pt = 0
        self.event_pt: int | None = None
        self.remote_rtcp: tuple[str, int] | None = None
        self.last_packet_at: float | None = None
        self.started_at: float | None = None
        self.update(answer)
        # our stream's clock, forwarded sources mapped onto it
        self.timeline = Timeline(spec.rtp_clock, self.frame_ticks, self.sender_timestamp())
        # decoding and mixing state
        self._decoder: codecs.Decoder | None = None
        self._encoder: codecs.Encoder | None = None
        self._decoded = PcmFifo()
        self._silence = codecs.silence_payload(spec, FRAME_MS)
        self.players: deque[Player] = deque()
        self.room_tone: ToneGenerator | None = None  # what the room hears instead of the phone
        self._dtmf_queue: deque[str] = deque()
        self._dtmf_out: _DtmfOut | None = None
        self._dtmf_gap = 0
        self.closed = False
        self.cname = secrets.token_hex(8)
        self.next_report_at = 0.0
        self._sent_since_report = False
        # the SDP session and SRTP keys, kept for re-INVITEs
        self.session_id = 0
        self.session_version = 0
        self.keys: SrtpKeys | None = None
        self.remote_keys: SrtpKeys | None = None
        # when we made the offer (late offer): what we offered, for the answer in the ACK
        self.offered_codecs: tuple[sdp.Codec, ...] = ()
        self.offered_keys: list[SrtpKeys] = []

    # -- SDP changes ----------------------------------------------------------------------

    def update(self, answer: sdp.AudioAnswer) -> None:
        """Apply a (new) negotiated answer: peer address, payload types, direction."""
        self.audio_pt = answer.audio.payload_type
        event = answer.telephone_event
        self.event_pt = event.payload_type if event is not None else None
        self.event_clock = event.codec.clock_rate if event is not None else 8000
        self.dtmf_in = DtmfReceiver(clock_rate=self.event_clock)
        remote = (answer.remote_address, answer.remote_port)
        if self.latch.expected != remote:
            self.latch.reset(remote if answer.remote_port else None)
        self.remote_rtcp = (
            (answer.remote_rtcp_address, answer.remote_rtcp_port)
            if answer.remote_rtcp_port
            else None
        )
        held = not (self.sending and self.receiving)
        self.sending = answer.direction.sends and bool(answer.remote_port)
        self.receiving = answer.direction.receives
        if held and self.sending and self.receiving and self.started_at is not None:
            # Back from hold: the silence before the resume does not count toward the media
            # timeout, or a long hold would hang up before the phone's first packet.
            self.last_packet_at = self._now()
        if self.room is not None:
            self.room.route()

    def change_codec(self, spec: codecs.CodecSpec) -> None:
        """The peer moved to another codec (re-INVITE): new coder state, same stream."""
        self.spec = spec
        self.clock_rate = spec.rtp_clock
        self.frame_ticks = spec.frame_ticks(FRAME_MS)
        self.frame_samples = spec.frame_samples(FRAME_MS)
        self.receiver = RtpReceiver(spec.rtp_clock)
        self.jitter = JitterBuffer(clock_rate=spec.rtp_clock, frame_ms=FRAME_MS)
        self._decoder = self._encoder = None
        self._outputs.clear()
        self._decoded = PcmFifo()
        self._silence = codecs.silence_payload(spec, FRAME_MS)
        self.timeline.rebase(spec.rtp_clock, self.frame_ticks)

    def sender_timestamp(self) -> int:
        return int(self.sender.timestamp)

    # -- input ----------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        self.started_at = now
        self._loop = loop
        self.rtp.start(loop)
        if self.rtcp is not None:
            self.rtcp.start(loop)

    def _now(self) -> float:
        return self._loop.time()

    def _on_rtp(self, data: bytes, source: tuple[str, int]) -> None:
        stats = self.stats
        if self.rtcp_mux and is_rtcp(data):
            self._on_rtcp(data, source)
            return
        if self.srtp is not None:
            try:
                data = self.srtp.unprotect(data)
            except MediaError:
                stats.srtp_failed += 1
                return
        try:
            packet = parse_rtp(data)
        except MediaError:
            stats.malformed += 1
            return
        now = self._now()
        if not self.latch.check(source, now):
            stats.wrong_source += 1
            return
        stats.packets_in += 1
        first = self.last_packet_at is None
        self.last_packet_at = now
        pt = packet.payload_type
        if pt == self.audio_pt:
            if self.receiver.receive(packet, now) and self.room is not None:
                self.room.on_audio(self, packet, now)
        elif pt == self.event_pt:
            stats.dtmf_in += 1
            try:
                digit = self.dtmf_in.receive(packet, now)
            except MediaError:
                stats.malformed += 1
                return
            if digit is not None and self.on_dtmf is not None:
                self.on_dtmf(digit.digit)
        elif pt != COMFORT_NOISE_PT:
            stats.unknown_payload += 1
        if first and self.on_first_packet is not None:
            callback, self.on_first_packet = self.on_first_packet, None
            callback()

    def _on_rtcp(self, data: bytes, source: tuple[str, int]) -> None:
        if self.srtp is not None:
            try:
                data = self.srtp.unprotect_rtcp(data)
            except MediaError:
                self.stats.srtp_failed += 1
                return
        try:
            packets = parse_rtcp(data)
        except MediaError:
            self.stats.rtcp_malformed += 1
            return
        latched = self.latch.destination
        if latched is not None and source[0] != latched[0]:
            self.stats.wrong_source += 1  # RTCP from a host other than the media's
            return
        self.stats.rtcp_in += 1
        now = self._now()
        if latched is not None:
            # RTCP from the media's host keeps the call alive; from anyone before RTP, not.
            self.last_packet_at = now
        for packet in packets:
            if isinstance(packet, SenderReport):
                self.receiver.sender_report_received(packet, now)

    def report(self, now: float, wallclock: float) -> None:
        """Our RTCP report when due (RFC 3550 s6): SR when we sent since the last one, else RR,
        with a report block about the caller's stream and our CNAME."""
        if now < self.next_report_at:
            return
        first = self.next_report_at == 0.0
        self.next_report_at = now + rtcp_interval(secrets.randbelow(1000) / 1000, initial=first)
        if first:
            return
        destination = self.remote_rtcp if not self.rtcp_mux else self.latch.destination
        latched = self.latch.destination
        if latched is not None and not self.rtcp_mux and self.remote_rtcp is not None:
            destination = (latched[0], self.remote_rtcp[1])  # symmetric: the latched host
        if destination is None:
            return
        block = self.receiver.report_block(now)
        sender_info = (
            self.sender.sender_info(ntp_timestamp(wallclock)) if self._sent_since_report else None
        )
        self._sent_since_report = False
        data = build_compound_report(
            ssrc=self.sender.ssrc,
            cname=self.cname,
            reports=(block,) if block is not None else (),
            sender_info=sender_info,
        )
        if self.srtp is not None:
            try:
                data = self.srtp.protect_rtcp(data)
            except MediaError:
                return
        sock = self.rtcp if self.rtcp is not None else self.rtp
        sock.send(data, destination)
        self.stats.rtcp_out += 1

    # -- output ---------------------------------------------------------------------------

    def _send(self, payload: bytes, timestamp: int, marker: bool, payload_type: int) -> None:
        destination = self.latch.destination
        if destination is None or not self.sending:
            return
        data = self.sender.packet(
            payload,
            samples=self.frame_ticks,
            payload_type=payload_type,
            marker=marker,
            timestamp=timestamp,
        )
        if self.srtp is not None:
            try:
                data = self.srtp.protect(data)
            except MediaError:
                self.stats.srtp_failed += 1
                return
        self.rtp.send(data, destination)
        self.stats.packets_out += 1
        self._sent_since_report = True

    def forward(self, packet: RtpPacket, source: CallMedia, now: float) -> None:
        """Send a packet of `source` on as ours: codec kept (or G.711 translated), header ours."""
        timestamp, new = self.timeline.forwarded(packet.ssrc, packet.timestamp, now)
        payload = packet.payload
        if source.spec is not self.spec:
            payload = codecs.transcode_g711(payload, source.spec, self.spec)
        self._send(payload, timestamp, packet.marker or new, self.audio_pt)
        self.stats.forwarded += 1

    def send_pcm(self, pcm: Pcm | None, now: float) -> None:
        """One mixed frame (None: silence) on the clock."""
        timestamp, first = self.timeline.made(now)
        if pcm is None:
            payload = self._silence
        else:
            if self._encoder is None:
                self._encoder = codecs.new_encoder(self.spec)
            payload = self._encoder.encode(pcm)
        self._send(payload, timestamp, first, self.audio_pt)
        self.stats.mixed_frames += 1

    # -- decoding for the mixer -----------------------------------------------------------

    def play_to_room(self, tone: ToneSpec | None) -> None:
        """The room hears `tone` from this leg instead of its phone (ringback while an outbound
        call rings), or the phone again (None). Its listeners mix while the tone plays."""
        self.room_tone = None if tone is None else ToneGenerator(tone, self.spec.sample_rate)
        self.forwardable = tone is None
        if tone is None:
            self.flush()
        if self.room is not None:
            self.room.route()

    def pull(self, now: float) -> Pcm | None:
        """This leg's next 20 ms as PCM at its codec rate, None when it is silent.

        Packets of another length (30 ms is common) are decoded whole into a FIFO and taken
        out 20 ms at a time, so the mixer always sums frames of one size."""
        if self.room_tone is not None:
            return self.room_tone.frame(self.frame_samples)
        frame = self.jitter.pop(now)
        fifo = self._decoded
        if frame is not None:
            if self._decoder is None:
                self._decoder = codecs.new_decoder(self.spec)
            if frame.packet is None:
                fifo.push(self._decoder.conceal(self.frame_samples))
            else:
                try:
                    fifo.push(self._decoder.decode(frame.packet.payload))
                except MediaError:
                    self.stats.malformed += 1
                    fifo.push(self._decoder.conceal(self.frame_samples))
        if len(fifo.buffer) >= self.frame_samples or (frame is not None and len(fifo.buffer)):
            return fifo.take(self.frame_samples)
        return None

    def flush(self) -> None:
        self.jitter.flush()

    # -- local audio: players and DTMF ----------------------------------------------------

    @property
    def local_audio(self) -> bool:
        return bool(self.players or self._dtmf_queue or self._dtmf_out or self._dtmf_gap)

    def play(self, player: Player) -> None:
        self.players.append(player)
        if self.room is not None:
            self.room.route()

    def stop_players(self) -> None:
        self.players.clear()
        if self.room is not None:
            self.room.route()

    def send_dtmf(self, digits: str) -> None:
        """Queue digits for the caller: RFC 4733 events, or in-band tones without them."""
        for digit in digits.upper():
            if digit in DIGITS or digit == "W":
                self._dtmf_queue.append(digit)
        if self.room is not None:
            self.room.route()

    def local_frame(self, now: float) -> tuple[Pcm | None, bool]:
        """The local audio for this tick and whether an RFC 4733 packet took the tick."""
        if self._dtmf_out is not None or (self._dtmf_queue and not self._dtmf_gap):
            if self._dtmf_step(now):
                return None, True
        elif self._dtmf_gap:
            self._dtmf_gap -= 1
            if not self.local_audio and self.room is not None:
                self.room.route()  # the digits are done: back to forwarding where it applies
        while self.players:
            pcm = self.players[0].frame(self.spec.sample_rate * FRAME_MS // 1000)
            if pcm is not None:
                return pcm, False
            self.players.popleft()
            if not self.local_audio and self.room is not None:
                self.room.route()
        return None, False

    def _dtmf_step(self, now: float) -> bool:
        """Send the due RFC 4733 packet; True when one was sent this tick."""
        out = self._dtmf_out
        if out is None:
            digit = self._dtmf_queue.popleft()
            if digit == "W":
                self._dtmf_gap = DTMF_PAUSE_MS // FRAME_MS
                return False
            if self.event_pt is None:
                tone = dtmf_tone(digit, sample_rate=self.spec.sample_rate, duration_ms=DTMF_TONE_MS)
                self.players.append(PcmPlayer(tone))
                self._dtmf_gap = (DTMF_TONE_MS + DTMF_GAP_MS) // FRAME_MS
                return False
            timestamp = self.timeline.now(now)
            sender = DtmfSender(clock_rate=self.event_clock)
            packets = deque(
                (p.send_at_ms // FRAME_MS, p.event.serialize(), p.marker)
                for p in sender.packets(digit, duration_ms=DTMF_TONE_MS, ptime_ms=FRAME_MS)
            )
            out = self._dtmf_out = _DtmfOut(timestamp=timestamp, packets=packets)
        sent = False
        while out.packets and out.packets[0][0] <= out.tick:
            _, payload, marker = out.packets.popleft()
            assert self.event_pt is not None
            self._send(payload, out.timestamp, marker, self.event_pt)
            sent = True
        out.tick += 1
        if not out.packets:
            self._dtmf_out = None
            self._dtmf_gap = DTMF_GAP_MS // FRAME_MS
            # Audio resumes after the event's duration, on the same timeline.
            self.timeline.continue_at(
                (out.timestamp + out.tick * self.frame_ticks) % TIMESTAMP_MOD, now
            )
        return sent

    # -- end ------------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.room is not None:
            self.room.remove(self)
        self.rtp.close()
        if self.rtcp is not None:
            self.rtcp.close()
        self.pool.release(self.port)
        self.on_dtmf = None
        self.on_first_packet = None
        self.players.clear()


G711 = (codecs.PCMU_SPEC, codecs.PCMA_SPEC)


def can_forward(source: codecs.CodecSpec, target: codecs.CodecSpec) -> bool:
    """Whether packets of `source` go to `target` without decoding."""
    return source is target or (source in G711 and target in G711)


def _can_forward(source: AudioLeg, listener: AudioLeg) -> bool:
    return source.forwardable and listener.forwardable and can_forward(source.spec, listener.spec)


class RoomAudio:
    """The legs of one room and who hears whom."""

    def __init__(self, name: str, clock: MediaClock) -> None:
        self.name = name
        self.clock = clock
        self.legs: list[AudioLeg] = []
        self.mixers: list[AudioLeg] = []
        self.sources: list[AudioLeg] = []

    def add(self, leg: AudioLeg) -> None:
        if leg.room is not None:
            leg.room.remove(leg)
        leg.room = self
        self.legs.append(leg)
        self.route()

    def remove(self, leg: AudioLeg) -> None:
        if leg in self.legs:
            self.legs.remove(leg)
        leg.room = None
        leg.forward_to = []
        leg.forward_from = None
        leg.mixing = leg.buffered = False
        self.route()

    def route(self) -> None:
        """Decide, for every listener, between forwarding and mixing (see the module doc)."""
        talkers = [leg for leg in self.legs if leg.receiving]
        for leg in self.legs:
            leg.forward_to = []
            leg.forward_from = None
            leg.mixing = False
        buffered: set[AudioLeg] = set()
        for listener in self.legs:
            if not listener.sending:
                continue
            if listener.hears is not None:
                sources = [s for s in talkers if s is listener.hears]
            else:
                sources = [s for s in talkers if s is not listener]
            source = sources[0] if len(sources) == 1 else None
            if (
                listener.forwardable
                and source is not None
                and not listener.local_audio
                and _can_forward(source, listener)
            ):
                source.forward_to.append(listener)
                listener.forward_from = source
                continue
            listener.mixing = True
            buffered.update(sources)
        for leg in self.legs:
            if leg.buffered and leg not in buffered:
                leg.flush()
            leg.buffered = leg in buffered
        self.mixers = [leg for leg in self.legs if leg.mixing]
        self.sources = [leg for leg in self.legs if leg.buffered]
        if self.mixers:
            self.clock.add(self)
        else:
            self.clock.discard(self)

    def on_audio(self, source: CallMedia, packet: RtpPacket, now: float) -> None:
        for listener in source.forward_to:
            listener.forward(packet, source, now)
        if source.buffered:
            source.jitter.push(packet, now)

    def tick(self, now: float) -> None:
        decoded: dict[AudioLeg, Pcm] = {}
        for source in self.sources:
            pcm = source.pull(now)
            if pcm is not None:
                decoded[source] = pcm
        for listener in list(self.mixers):
            local, event_sent = listener.local_frame(now)
            if event_sent:
                continue
            rate = listener.spec.sample_rate
            parts = []
            hears = listener.hears
            for source, pcm in decoded.items():
                if source is not listener and (hears is None or source is hears):
                    converted = source.output_at(pcm, rate)
                    if converted is not None:
                        parts.append(converted)
            if local is not None:
                parts.append(local)
            listener.send_pcm(mixer.mix(parts) if parts else None, now)


class MediaClock:
    """One 20 ms clock for every mixing room: ticks on a fixed schedule, late ticks skipped."""

    def __init__(self) -> None:
        self.rooms: set[RoomAudio] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0
        self.ticks = 0
        self.skipped = 0
        self.on_second: Callable[[float], None] | None = None

    def add(self, room: RoomAudio) -> None:
        self.rooms.add(room)
        self._ensure()

    def discard(self, room: RoomAudio) -> None:
        self.rooms.discard(room)

    def start(self) -> None:
        self._ensure()

    def _ensure(self) -> None:
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._next = loop.time() + FRAME_S
            self._handle = loop.call_at(self._next, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.ticks += 1
        # Rooms get the scheduled time, not the (later) time the loop ran us: frames on the
        # clock are exactly 20 ms apart in RTP time whatever the loop's lateness.
        scheduled = self._next
        for room in list(self.rooms):
            try:
                room.tick(scheduled)
            except Exception:
                # One room's fault must not silence the others (counted, logged once per tick).
                log.exception("media tick failed in room %s", room.name)
                self.rooms.discard(room)
        if self.on_second is not None and self.ticks % (1000 // FRAME_MS) == 0:
            self.on_second(now)
        self._next += FRAME_S
        if self._next < now:
            missed = int((now - self._next) / FRAME_S) + 1
            self.skipped += missed
            self._next += missed * FRAME_S
        self._handle = loop.call_at(self._next, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
