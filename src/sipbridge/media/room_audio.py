"""The legs of one room and who hears whom: the forward-or-mix decision, and the mix.

When a listener hears exactly one other leg with a codec it can take as is (the same codec, or
PCMU/PCMA translated by table), that source's packets are forwarded to it the moment they
arrive, header rewritten for the listener's stream: no jitter buffer, no decode, no clock
(DESIGN.md: do no codec work that nobody needs). Otherwise the listener mixes: on every tick of
the shared 20 ms clock the room pulls one frame per source through its jitter buffer and
decoder, resamples to the listener's rate, sums all but the listener's own, and the listener
encodes and sends. Prompts, tones and DTMF for one leg switch that leg to the clock while they
play. `RoomAudio` decides and mixes; it reads no clock - the clock's driver calls `tick(now)`.
"""

from __future__ import annotations

from typing import Any, Protocol

from sipbridge.media import codecs, mixer
from sipbridge.media.levels import PacketLevels
from sipbridge.media.players import FRAME_MS, Pcm, PcmFifo
from sipbridge.media.rtp import RtpPacket

G711 = (codecs.PCMU_SPEC, codecs.PCMA_SPEC)


def can_forward(source: codecs.CodecSpec, target: codecs.CodecSpec) -> bool:
    """Whether packets of `source` go to `target` without decoding."""
    return source is target or (source in G711 and target in G711)


class AudioLeg:
    """What a room needs of a member: a source of 20 ms frames (`receiving`, `pull`,
    `output_at`), a listener (`sending`, `send_pcm`, `local_frame`), or both. RTP legs are both
    and can also forward packets; WebRTC legs are one or the other, and a WebRTC listener in
    G.711 takes forwarded packets too."""

    forwardable = False  # packets of this leg can go to another as they are
    hears: AudioLeg | None = None  # None: every source in the room; else only that one
    levels: PacketLevels | None = None  # a source's audio levels, for the active speakers

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

    # `source` is the RTP leg whose packet this is (`RtpLeg`); typed loosely so that listeners
    # written against a subclass of it (the server's socket driver) still override this.
    def forward(self, packet: RtpPacket, source: Any, now: float) -> None:
        """A packet of `source`, for legs that take packets as they are."""

    def buffer(self, packet: RtpPacket, now: float) -> None:
        """A packet of this leg for the mixer (its jitter buffer)."""

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


def _can_forward(source: AudioLeg, listener: AudioLeg) -> bool:
    return source.forwardable and listener.forwardable and can_forward(source.spec, listener.spec)


class RoomClock(Protocol):
    """The shared 20 ms clock as a room sees it: it ticks the rooms that mix, and no others."""

    def add(self, room: RoomAudio) -> None: ...

    def discard(self, room: RoomAudio) -> None: ...


class RoomAudio:
    """The legs of one room and who hears whom."""

    def __init__(self, name: str, clock: RoomClock) -> None:
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

    def on_audio(self, source: AudioLeg, packet: RtpPacket, now: float) -> None:
        """A packet of `source`: forwarded to its listeners, buffered when someone mixes it."""
        for listener in source.forward_to:
            listener.forward(packet, source, now)
        if source.buffered:
            source.buffer(packet, now)

    def tick(self, now: float) -> None:
        """One 20 ms frame for every mixing listener (the shared clock's tick at `now`)."""
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
