"""One RTP leg of a call, sans-IO: datagrams and time in, datagrams and events out.

`RtpLeg` is the call's RTP session without its sockets: the peer it latched to (RFC 4961),
SRTP, the receive statistics and jitter buffer, the outgoing stream and its timeline, DTMF both
ways (RFC 4733) and RTCP reports (RFC 3550 s6). In the shape of aioquic's `QuicConnection`:

- `receive(data, addr, now)` takes a datagram of the RTP port (RTCP too when multiplexed,
  RFC 5761), `receive_rtcp(data, addr, now)` one of the RTCP port;
- `datagrams_to_send(now)` drains what the leg (and the room forwarding into it) made, as
  `(data, address, rtcp)`: `rtcp` says which port sends it when RTCP has its own. A driver
  may instead set `rtp_sink` to take RTP datagrams as they are made (see there);
- `get_timer()` is the next deadline (an RTCP report, the media timeout), `handle_timer(now)`
  acts on it;
- `next_event()` returns what happened: `FirstPacket`, `DtmfReceived`, `MediaTimedOut`.

A driver feeds it and, after every input it fed (to this leg or, through a room, to legs that
forward into it), transmits what `datagrams_to_send` returns.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from sipbridge.media import codecs
from sipbridge.media.dtmf import DIGITS, DtmfReceiver, DtmfSender, dtmf_tone
from sipbridge.media.errors import MediaError
from sipbridge.media.jitter import JitterBuffer
from sipbridge.media.levels import PacketLevels, pcm_dbov
from sipbridge.media.players import FRAME_MS, Pcm, PcmFifo, PcmPlayer, Player
from sipbridge.media.room_audio import AudioLeg
from sipbridge.media.rtp import (
    ReceiverReport,
    ReportBlock,
    RtpPacket,
    SenderReport,
    build_compound_report,
    is_rtcp,
    parse_rtcp,
    parse_rtp,
)
from sipbridge.media.session import Latch, RtpReceiver, RtpSender, ntp_timestamp, rtcp_interval
from sipbridge.media.srtp import SrtpContext
from sipbridge.media.timeline import TIMESTAMP_MOD, Timeline
from sipbridge.media.tones import ToneGenerator, ToneSpec

Address = tuple[str, int]
Datagram = tuple[bytes, Address, bool]  # (data, destination, sent from the RTCP port)

COMFORT_NOISE_PT = 13
DTMF_TONE_MS = 250  # the reference's digit length and gap (SIP-BEHAVIOUR.md s5)
DTMF_GAP_MS = 250
DTMF_PAUSE_MS = 500  # `w` in a digit string
MEDIA_TIMEOUT_S = 15.0
MEDIA_TIMEOUT_INITIAL_S = 30.0  # before the first packet, when the timeout is the default
# A decoded frame at or under -45 dBov is a pause, 10 dB under speech (rooms/speakers.py): the
# jitter buffer shrinks its delay there rather than cut a frame out of speech.
QUIET_DBOV = 45


# Dataclasses made for every call write their own `__init__` (`init=False`): mypyc compiles
# it, where the one the dataclasses module generates stays interpreted (issue 18).
@dataclass(init=False, frozen=True, kw_only=True, slots=True)
class StreamConfig:
    """What offer/answer agreed for the leg, in RTP terms (telephony/server map SDP onto it)."""

    audio_pt: int
    event_pt: int | None = None  # telephone-event (RFC 4733), None when not negotiated
    event_clock: int = 8000
    remote: Address = ("", 0)  # where the peer said it receives; port 0: nowhere yet
    remote_rtcp: Address | None = None  # its RTCP port when not multiplexed
    rtcp_mux: bool = True
    sends: bool = True  # we may send (the peer receives)
    receives: bool = True  # the peer sends

    def __init__(
        self,
        *,
        audio_pt: int,
        event_pt: int | None = None,
        event_clock: int = 8000,
        remote: Address = ("", 0),
        remote_rtcp: Address | None = None,
        rtcp_mux: bool = True,
        sends: bool = True,
        receives: bool = True,
    ) -> None:
        object.__setattr__(self, "audio_pt", audio_pt)
        object.__setattr__(self, "event_pt", event_pt)
        object.__setattr__(self, "event_clock", event_clock)
        object.__setattr__(self, "remote", remote)
        object.__setattr__(self, "remote_rtcp", remote_rtcp)
        object.__setattr__(self, "rtcp_mux", rtcp_mux)
        object.__setattr__(self, "sends", sends)
        object.__setattr__(self, "receives", receives)


@dataclass(frozen=True, kw_only=True, slots=True)
class FirstPacket:
    """The first packet from the peer (RTP of any payload type) was accepted."""

    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class DtmfReceived:
    """The peer pressed a key (one RFC 4733 event, reported once)."""

    digit: str
    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class MediaTimedOut:
    """Nothing - no RTP, no RTCP from the media's host - came for the media timeout."""

    at: float
    silent_for: float


LegEvent = FirstPacket | DtmfReceived | MediaTimedOut

_NO_LOCAL_FRAME: tuple[Pcm | None, bool] = (None, False)

SR_KEPT = 4  # our last SRs remembered, to match the LSR of a report about our stream


@dataclass(frozen=True, kw_only=True, slots=True)
class RemoteReport:
    """The peer's last reception report about our stream (RFC 3550 s6.4.1), at `at`: its
    loss (fraction of the last interval, 0..1, and cumulative), its jitter estimate (s) and the
    round-trip time it lets us compute (s; None before it echoes one of our SRs)."""

    fraction_lost: float
    cumulative_lost: int
    jitter: float
    rtt: float | None
    at: float


@dataclass(init=False, eq=False, kw_only=True)
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

    def __init__(
        self,
        *,
        packets_in: int = 0,
        packets_out: int = 0,
        malformed: int = 0,
        wrong_source: int = 0,
        unknown_payload: int = 0,
        srtp_failed: int = 0,
        rtcp_in: int = 0,
        rtcp_out: int = 0,
        rtcp_malformed: int = 0,
        dtmf_in: int = 0,
        forwarded: int = 0,
        mixed_frames: int = 0,
    ) -> None:
        self.packets_in = packets_in
        self.packets_out = packets_out
        self.malformed = malformed
        self.wrong_source = wrong_source
        self.unknown_payload = unknown_payload
        self.srtp_failed = srtp_failed
        self.rtcp_in = rtcp_in
        self.rtcp_out = rtcp_out
        self.rtcp_malformed = rtcp_malformed
        self.dtmf_in = dtmf_in
        self.forwarded = forwarded
        self.mixed_frames = mixed_frames


@dataclass(eq=False, slots=True)
class _DtmfOut:
    """RFC 4733 events being sent: (send at tick index, payload, marker) per packet."""

    timestamp: int
    packets: deque[tuple[int, bytes, bool]]
    tick: int = 0


@mypyc_attr(allow_interpreted_subclasses=True)  # subclassed outside the compiled packages
class RtpLeg(AudioLeg):
    """The RTP side of one call, sans-IO (see the module doc)."""

    forwardable = True

    def __init__(
        self,
        spec: codecs.CodecSpec,
        stream: StreamConfig,
        *,
        srtp: SrtpContext | None = None,
        ssrc: int | None = None,
        cname: str | None = None,
    ) -> None:
        super().__init__(spec)
        self.srtp = srtp
        self.stats = MediaStats()
        self.rtcp_mux = stream.rtcp_mux
        self.clock_rate = spec.rtp_clock
        self.frame_ticks = spec.frame_ticks(FRAME_MS)
        self.frame_samples = spec.frame_samples(FRAME_MS)
        # The random starting points (RFC 3550 s5.1, s6.5.1) from one draw of 18 bytes: SSRC,
        # sequence number, timestamp and CNAME took four system calls a leg (issue 18).
        seed = secrets.token_bytes(18)
        self.sender = RtpSender(
            ssrc=int.from_bytes(seed[0:4], "big") if ssrc is None else ssrc,
            clock_rate=spec.rtp_clock,
            payload_type=stream.audio_pt,
            initial_sequence=int.from_bytes(seed[4:6], "big"),
            initial_timestamp=int.from_bytes(seed[6:10], "big"),
        )
        self.receiver = RtpReceiver(spec.rtp_clock)
        self.jitter = JitterBuffer(clock_rate=spec.rtp_clock, frame_ms=FRAME_MS)
        self.latch = Latch(None)
        self.audio_pt = 0
        self.event_pt: int | None = None
        self.remote_rtcp: Address | None = None
        self.last_packet_at: float | None = None
        self.started_at: float | None = None
        self.timeout: float | None = None  # the media timeout, once armed (`arm_timeout`)
        self._outbox: list[Datagram] = []
        # When set, RTP datagrams go straight to it instead of the outbox. The relay's hot path
        # makes a packet for the *listener* while the *source's* datagram is handled, so with an
        # outbox its driver would have to find and drain every listener after every datagram:
        # measured at +0.4 us per relayed packet, 13% of the Python path. RTCP always goes
        # through the outbox. Tests leave it None and read `datagrams_to_send`.
        self.rtp_sink: Callable[[bytes, Address], None] | None = None
        self._events: deque[LegEvent] = deque()
        self._first = True
        self.configure(stream, 0.0)
        # our stream's clock, forwarded sources mapped onto it
        self.timeline = Timeline(spec.rtp_clock, self.frame_ticks, self.sender_timestamp())
        # decoding and mixing state
        self._decoder: codecs.Decoder | None = None
        self._encoder: codecs.Encoder | None = None
        self._decoded = PcmFifo()
        self._last_pcm: Pcm | None = None  # the last frame decoded or concealed
        self._silence = codecs.silence_payload(spec, FRAME_MS)
        self.players: deque[Player] = deque()
        self.room_tone: ToneGenerator | None = None  # what the room hears instead of the phone
        self._dtmf_queue: deque[str] = deque()
        self._dtmf_out: _DtmfOut | None = None
        self._dtmf_gap = 0
        self.cname = seed[10:18].hex() if cname is None else cname
        self.next_report_at = 0.0
        self._sent_since_report = False
        self._sr_sent: dict[int, float] = {}  # LSR (NTP middle 32 bits) of our SRs -> when
        self.remote_report: RemoteReport | None = None
        # The audio levels of what the peer sends (`media/levels.py`), for the room's active
        # speakers: G.711 payloads are kept as they come and measured when read.
        self.packet_levels = PacketLevels(spec)
        self.levels = self.packet_levels
        self._level_payloads = self.packet_levels.payload_queue()

    # -- negotiation ----------------------------------------------------------------------

    def configure(self, stream: StreamConfig, now: float) -> None:
        """Apply a (new) negotiated stream: peer address, payload types, direction."""
        self.audio_pt = stream.audio_pt
        self.event_pt = stream.event_pt
        self.event_clock = stream.event_clock
        self.dtmf_in = DtmfReceiver(clock_rate=self.event_clock)
        remote = stream.remote
        if self.latch.expected != remote:
            self.latch.reset(remote if remote[1] else None)
        self.remote_rtcp = stream.remote_rtcp
        held = not (self.sending and self.receiving)
        self.sending = stream.sends and bool(remote[1])
        self.receiving = stream.receives
        if held and self.sending and self.receiving and self.started_at is not None:
            # Back from hold: the silence before the resume does not count toward the media
            # timeout, or a long hold would hang up before the phone's first packet.
            self.last_packet_at = now
        if self.room is not None:
            self.room.changed(self)

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
        self.packet_levels.change_codec(spec)
        self._level_payloads = self.packet_levels.payload_queue()

    def sender_timestamp(self) -> int:
        return int(self.sender.timestamp)

    # -- input ----------------------------------------------------------------------------

    def receive(self, data: bytes, addr: Address, now: float) -> None:
        """A datagram of the RTP port from `addr` at `now` (RTCP too, when multiplexed)."""
        stats = self.stats
        if self.rtcp_mux and is_rtcp(data):
            self.receive_rtcp(data, addr, now)
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
        if not self.latch.check(addr, now):
            stats.wrong_source += 1
            return
        stats.packets_in += 1
        self.last_packet_at = now
        pt = packet.payload_type
        if pt == self.audio_pt:
            if self.receiver.receive(packet, now) and self.room is not None:
                # the room's forwarding, inline: this is the relay's hot path
                for listener in self.forward_to:
                    listener.forward(packet, self, now)
                if self.buffered:
                    self.jitter.push(packet, now)
                level_payloads = self._level_payloads
                if level_payloads is not None:
                    level_payloads.append(packet.payload)  # measured when read, in bulk
        elif pt == self.event_pt:
            stats.dtmf_in += 1
            try:
                digit = self.dtmf_in.receive(packet, now)
            except MediaError:
                stats.malformed += 1
                digit = None
            if digit is not None:
                self._events.append(DtmfReceived(digit=digit.digit, at=now))
        elif pt != COMFORT_NOISE_PT:
            stats.unknown_payload += 1
        if self._first:
            self._first = False
            self._events.append(FirstPacket(at=now))

    def receive_rtcp(self, data: bytes, addr: Address, now: float) -> None:
        """An RTCP datagram (of the RTCP port, or multiplexed) from `addr` at `now`."""
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
        if latched is not None and addr[0] != latched[0]:
            self.stats.wrong_source += 1  # RTCP from a host other than the media's
            return
        self.stats.rtcp_in += 1
        if latched is not None:
            # RTCP from the media's host keeps the call alive; from anyone before RTP, not.
            self.last_packet_at = now
        for packet in packets:
            if isinstance(packet, SenderReport):
                self.receiver.sender_report_received(packet, now)
            if isinstance(packet, (SenderReport, ReceiverReport)):
                for block in packet.reports:
                    if block.ssrc == self.sender.ssrc:
                        self._remote_report(block, now)

    def _remote_report(self, block: ReportBlock, now: float) -> None:
        """The peer's report about our stream: its loss, jitter and (RFC 3550 s6.4.1) the
        round-trip time: now - when we sent the SR it echoes (LSR) - its delay since (DLSR)."""
        rtt = None
        sent_at = self._sr_sent.get(block.last_sr) if block.last_sr else None
        if sent_at is not None:
            rtt = max(0.0, now - sent_at - block.delay_since_last_sr / 65536)
        elif self.remote_report is not None:
            rtt = self.remote_report.rtt
        self.remote_report = RemoteReport(
            fraction_lost=block.fraction_lost / 256,
            cumulative_lost=block.cumulative_lost,
            jitter=block.jitter / self.clock_rate,
            rtt=rtt,
            at=now,
        )

    def buffer(self, packet: RtpPacket, now: float) -> None:
        self.jitter.push(packet, now)

    # -- output ---------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """What to send, oldest first: (data, destination, whether from the RTCP port)."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> LegEvent | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def _send(self, payload: bytes, timestamp: int, marker: bool, payload_type: int) -> None:
        latch = self.latch
        destination = latch._latched  # `latch.destination`, inline (every frame sent)
        if destination is None:
            destination = latch.expected
        if destination is None or not self.sending:
            return
        data = self.sender.frame(payload, self.frame_ticks, payload_type, marker, timestamp)
        if self.srtp is not None:
            try:
                data = self.srtp.protect(data)
            except MediaError:
                self.stats.srtp_failed += 1
                return
        sink = self.rtp_sink
        if sink is not None:
            sink(data, destination)
        else:
            self._outbox.append((data, destination, False))
        self.stats.packets_out += 1
        self._sent_since_report = True

    def forward(self, packet: RtpPacket, source: RtpLeg, now: float) -> None:
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

    # -- timers: RTCP reports and the media timeout ----------------------------------------

    def begin(self, now: float) -> None:
        """Receiving starts (the call is answered, or early media): silence counts from `now`."""
        self.started_at = now

    def arm_timeout(self, timeout: float | None, now: float) -> None:
        """Report `MediaTimedOut` after `timeout` s of silence (None or 0: the default)."""
        self.started_at = now
        self.timeout = timeout or MEDIA_TIMEOUT_S

    def get_timer(self) -> float | None:
        """The next deadline: an RTCP report or the media timeout (None: nothing is due, not
        armed or on hold - a holding phone may send nothing for as long as it likes)."""
        timeout, started = self.timeout, self.started_at
        if timeout is None or started is None or not (self.receiving and self.sending):
            return None
        last = self.last_packet_at
        if last is None:
            # Before the first packet the default is more patient (30 s); a timeout the
            # trunk or rule set applies from the start.
            initial = MEDIA_TIMEOUT_INITIAL_S if timeout == MEDIA_TIMEOUT_S else timeout
            expires = started + initial
        else:
            expires = last + timeout
        return min(self.next_report_at, expires)

    def handle_timer(self, now: float, wallclock: float | None = None) -> None:
        """Act on what is due at `now`: our RTCP report (`wallclock`, Unix time, for its NTP
        timestamp; `now` when not given), and the media timeout (a `MediaTimedOut` event,
        once: the timeout disarms)."""
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return
        self.report(now, now if wallclock is None else wallclock)
        assert self.timeout is not None and self.started_at is not None
        last = self.last_packet_at
        if last is None:
            initial = MEDIA_TIMEOUT_INITIAL_S if self.timeout == MEDIA_TIMEOUT_S else self.timeout
            silent = now - self.started_at
            expired = silent > initial
        else:
            silent = now - last
            expired = silent > self.timeout
        if expired:
            self.timeout = None
            self._events.append(MediaTimedOut(at=now, silent_for=silent))

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
        if sender_info is not None:
            self._sr_sent[sender_info.ntp_middle] = now
            while len(self._sr_sent) > SR_KEPT:
                del self._sr_sent[next(iter(self._sr_sent))]
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
        self._outbox.append((data, destination, True))
        self.stats.rtcp_out += 1

    # -- decoding for the mixer -----------------------------------------------------------

    def play_to_room(self, tone: ToneSpec | None) -> None:
        """The room hears `tone` from this leg instead of its phone (ringback while an outbound
        call rings), or the phone again (None). Its listeners mix while the tone plays."""
        self.room_tone = None if tone is None else ToneGenerator(tone, self.spec.sample_rate)
        self.forwardable = tone is None
        if tone is None:
            self.flush()
        if self.room is not None:
            self.room.changed(self)

    def pull(self, now: float) -> Pcm | None:
        """This leg's next 20 ms as PCM at its codec rate, None when it is silent.

        Packets of another length (30 ms is common) are decoded whole into a FIFO and taken
        out 20 ms at a time, so the mixer always sums frames of one size."""
        if self.room_tone is not None:
            return self.room_tone.frame(self.frame_samples)
        frame = self.jitter.pop(now, self)
        fifo = self._decoded
        if frame is not None:
            if self._decoder is None:
                self._decoder = codecs.new_decoder(self.spec)
            if frame.packet is None:
                pcm = self._decoder.conceal(self.frame_samples)
            else:
                try:
                    pcm = self._decoder.decode(frame.packet.payload)
                    if self._level_payloads is None:  # not G.711: measured decoded, here
                        self.packet_levels.add_level(
                            pcm_dbov(pcm), len(pcm) * 1000 / self.spec.sample_rate
                        )
                except MediaError:
                    self.stats.malformed += 1
                    pcm = self._decoder.conceal(self.frame_samples)
            fifo.push(pcm)
            self._last_pcm = pcm
        if len(fifo.buffer) >= self.frame_samples or (frame is not None and len(fifo.buffer)):
            return fifo.take(self.frame_samples)
        return None

    def played_quiet(self) -> bool:
        """Whether the audio played last was a pause (or there was none): asked by the jitter
        buffer only when it would drop a frame (`media/jitter.py` `Playout`)."""
        pcm = self._last_pcm
        return pcm is None or pcm_dbov(pcm) >= QUIET_DBOV

    def flush(self) -> None:
        self.jitter.flush()

    # -- local audio: players and DTMF ----------------------------------------------------

    @property
    def local_audio(self) -> bool:
        return bool(self.players or self._dtmf_queue or self._dtmf_out or self._dtmf_gap)

    def play(self, player: Player) -> None:
        self.players.append(player)
        if self.room is not None:
            self.room.changed(self)

    def stop_players(self) -> None:
        self.players.clear()
        if self.room is not None:
            self.room.changed(self)

    def send_dtmf(self, digits: str) -> None:
        """Queue digits for the caller: RFC 4733 events, or in-band tones without them."""
        for digit in digits.upper():
            if digit in DIGITS or digit == "W":
                self._dtmf_queue.append(digit)
        if self.room is not None:
            self.room.changed(self)

    def local_frame(self, now: float) -> tuple[Pcm | None, bool]:
        """The local audio for this tick and whether an RFC 4733 packet took the tick."""
        if not (self.players or self._dtmf_out or self._dtmf_queue or self._dtmf_gap):
            return _NO_LOCAL_FRAME  # the usual tick: no digits, nothing playing
        if self._dtmf_out is not None or (self._dtmf_queue and not self._dtmf_gap):
            if self._dtmf_step(now):
                return None, True
        elif self._dtmf_gap:
            self._dtmf_gap -= 1
            if not self.local_audio and self.room is not None:
                self.room.changed(self)  # the digits are done: back to forwarding where it applies
        while self.players:
            player = self.players[0]
            pcm = player.frame(self.spec.sample_rate * FRAME_MS // 1000)
            if pcm is not None:
                return pcm, False
            # (its end may have cleared the players already: a wrong PIN's prompt hangs up)
            if self.players and self.players[0] is player:
                self.players.popleft()
            if not self.local_audio and self.room is not None:
                self.room.changed(self)
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
        """Leave the room and forget local audio and pending events."""
        if self.room is not None:
            self.room.remove(self)
        self.players.clear()
        self._events.clear()
        self.timeout = None
