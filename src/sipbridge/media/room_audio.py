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

from collections.abc import Callable
from typing import Any, Protocol

from mypy_extensions import mypyc_attr

from sipbridge.media import codecs, mixer
from sipbridge.media.levels import PacketLevels
from sipbridge.media.players import FRAME_MS, Pcm, PcmFifo
from sipbridge.media.rtp import RtpPacket

G711 = (codecs.PCMU_SPEC, codecs.PCMA_SPEC)


def can_forward(source: codecs.CodecSpec, target: codecs.CodecSpec) -> bool:
    """Whether packets of `source` go to `target` without decoding."""
    return source is target or (source in G711 and target in G711)


@mypyc_attr(allow_interpreted_subclasses=True)  # subclassed outside the compiled packages
class AudioLeg:
    """What a room needs of a member: a source of 20 ms frames (`receiving`, `pull`,
    `output_at`), a listener (`sending`, `send_pcm`, `local_frame`), or both. RTP legs are both
    and can also forward packets; WebRTC legs are one or the other, and a WebRTC listener in
    G.711 takes forwarded packets too."""

    forwardable = False  # packets of this leg can go to another as they are
    # A listener that takes each source's frame apart (`send_sources`) instead of their sum:
    # a stereo recording puts some sources on one channel and the rest on the other.
    takes_sources = False
    hears: AudioLeg | None = None  # None: every source in the room; else only that one
    levels: PacketLevels | None = None  # a source's audio levels, for the active speakers
    # Where the relay's fast path (`media/relay.py`) sends a datagram for this listener as it is
    # (a buffer that is reused, so it must be sent at once, not kept); None: only `forward`. It
    # may raise OSError (a socket's own `sendto`): counted in `relay_send_errors`.
    relay_sink: Callable[[memoryview, tuple[str, int]], object] | None = None
    relay_send_errors = 0

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

    def rerouted(self) -> None:
        """Its routing changed (`forward_to`, `forward_from`, `buffered`): a driver that forwards
        its packets elsewhere than here (server/media/crelay.py) looks at it again."""

    def sync(self, *, levels: bool = False) -> None:
        """Bring its counters (and its audio `levels`, when asked) up to date before they are
        read, for a driver that keeps them elsewhere while it relays (server/media/crelay.py);
        nothing to do here."""

    def pull(self, now: float) -> Pcm | None:
        return None

    def local_frame(self, now: float) -> tuple[Pcm | None, bool]:
        return None, False

    def send_pcm(self, pcm: Pcm | None, now: float) -> None:
        """One frame of what this listener hears (None: silence)."""

    def send_sources(self, frames: list[tuple[AudioLeg, Pcm]], now: float) -> None:
        """One frame of each source this listener hears, at its rate (`takes_sources`)."""

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


_ABSENT: Any = object()  # a leg the room does not hold (`_role`)


class RoomAudio:
    """The legs of one room and who hears whom.

    Routing is kept up to date incrementally: a leg that joins, leaves or changes (`changed`)
    costs the decisions of the listeners it can affect, not a pass over the room. A listener's
    decision depends only on how many legs talk (0, 1, 2 or more besides itself) and, when just
    one does, on that one; so a join or leave re-decides the joining leg, its own listeners
    (those that `hears` it), and everyone else only while the count of talkers is 2 or less,
    when their decisions do change. Whether a source is buffered depends on whether some other
    listener mixes: a count, looked at again only when it passes 0 or 1. With 1,000 callers in
    a mixing room a join is a handful of dictionary operations (issue 17: it was a pass over all
    listeners, each over all talkers - 34 ms at 1,000 legs, per join, during a flood).
    """

    def __init__(self, name: str, clock: RoomClock) -> None:
        self.name = name
        self.clock = clock
        # Ordered sets (dicts of None): join order, O(1) membership and removal.
        self.legs: dict[AudioLeg, None] = {}
        self.mixers: dict[AudioLeg, None] = {}  # listeners that mix (the clock ticks them)
        self.sources: dict[AudioLeg, None] = {}  # sources buffered for a mix
        self.decisions = 0  # listener decisions made so far: the work routing has cost
        self._talkers: dict[AudioLeg, None] = {}  # legs that give audio (`receiving`)
        self._quiet: dict[AudioLeg, None] = {}  # listeners of every source that give none
        self._hearers: dict[AudioLeg, dict[AudioLeg, None]] = {}  # source -> its own listeners
        self._role: dict[AudioLeg, AudioLeg | None] = {}  # leg -> its `hears` as last seen
        self._signature: dict[AudioLeg, tuple[bool, codecs.CodecSpec]] = {}  # as a source
        self._open_mixers: dict[AudioLeg, None] = {}  # mixing listeners of every source
        self._mix_group: dict[AudioLeg, AudioLeg | None] = {}  # mixing listener -> its `hears`
        self._source_mixers: dict[AudioLeg, int] = {}  # source -> its own listeners that mix

    def add(self, leg: AudioLeg) -> None:
        if leg.room is not None:
            leg.room.remove(leg)
        leg.room = self
        self.legs[leg] = None
        self.changed(leg)

    def remove(self, leg: AudioLeg) -> None:
        if leg in self.legs:
            del self.legs[leg]
            self.changed(leg)
        leg.room = None
        leg.forward_to = []
        leg.forward_from = None
        leg.mixing = leg.buffered = False
        leg.rerouted()

    def route(self) -> None:
        """Bring every leg's routing up to date: for changes the room was not told of (cost
        proportional to the room; `changed` is the cheap way)."""
        for leg in list(self.legs):
            self.changed(leg)

    def changed(self, leg: AudioLeg) -> None:
        """`leg` joined, left, or changed what decides routing: whether it talks or listens
        (`receiving`, `sending`), whom it `hears`, its codec, its `forwardable` or its
        `local_audio`. Re-decides the listeners this can affect (see the class doc)."""
        held = leg in self.legs
        talkers = self._talkers
        affected: dict[AudioLeg, None] = {leg: None}
        # as a listener: of every source, or of one
        role = leg.hears if held else _ABSENT
        old_role = self._role.get(leg, _ABSENT)
        if role is not old_role:
            if old_role is not _ABSENT:
                if old_role is None:
                    self._quiet.pop(leg, None)
                else:
                    self._unhear(leg, old_role)
            if role is _ABSENT:
                del self._role[leg]
            else:
                self._role[leg] = role
                if role is not None:
                    self._hearers.setdefault(role, {})[leg] = None
        talks = held and leg.receiving
        if role is None and not talks:
            self._quiet[leg] = None
        else:
            self._quiet.pop(leg, None)
        # as a source
        signature = (leg.forwardable, leg.spec)
        old_signature = self._signature.get(leg)
        if held:
            self._signature[leg] = signature
        else:
            self._signature.pop(leg, None)
        if talks != (leg in talkers):
            before = len(talkers)
            if talks:
                talkers[leg] = None
            else:
                del talkers[leg]
            fewest = min(before, len(talkers))
            if fewest <= 2:  # a talker's own count of sources passes 0, 1 or 2
                affected.update(talkers)
            if fewest <= 1:  # so does the count of a listener that gives no audio
                affected.update(self._quiet)
            affected.update(self._hearers.get(leg, ()))
            affected.update(dict.fromkeys(leg.forward_to))
        elif talks and signature != old_signature:
            # whoever hears this one source alone may now forward it, or no longer
            if len(talkers) == 1:
                affected.update(self._quiet)
            elif len(talkers) == 2:
                affected.update(talkers)
            affected.update(self._hearers.get(leg, ()))
        open_before = len(self._open_mixers)
        sole_before = next(iter(self._open_mixers)) if open_before == 1 else None
        refresh: dict[AudioLeg, None] = {leg: None}
        for listener in affected:
            self._decide(listener, refresh)
        open_after = len(self._open_mixers)
        fewest = min(open_before, open_after)
        if fewest == 0:  # no listener of every source mixed, or none does now
            refresh.update(talkers)
        elif fewest == 1:  # the only one's own buffer follows whether another mixes
            if sole_before is not None:
                refresh[sole_before] = None
            if open_after == 1:
                refresh[next(iter(self._open_mixers))] = None
        for source in refresh:
            self._buffer(source)
        if self.mixers:
            self.clock.add(self)
        else:
            self.clock.discard(self)

    def _unhear(self, listener: AudioLeg, source: AudioLeg) -> None:
        hearers = self._hearers.get(source)
        if hearers is not None:
            hearers.pop(listener, None)
            if not hearers:
                del self._hearers[source]

    def _sole_source(self, listener: AudioLeg) -> AudioLeg | None:
        """The one source `listener` hears, None when it hears none or several."""
        talkers = self._talkers
        hears = listener.hears
        if hears is not None:
            return hears if hears in talkers else None
        count = len(talkers) - (listener in talkers)
        if count != 1:
            return None
        for talker in talkers:  # at most two
            if talker is not listener:
                return talker
        return None  # pragma: no cover - count was 1

    def _decide(self, listener: AudioLeg, refresh: dict[AudioLeg, None]) -> None:
        """Forward or mix for `listener` (the module doc), applied where it changed."""
        self.decisions += 1
        source: AudioLeg | None = None
        mixing = False
        group: AudioLeg | None = None  # the source a mixing listener hears (None: every one)
        if listener in self.legs and listener.sending:
            sole = self._sole_source(listener)
            if (
                listener.forwardable
                and sole is not None
                and not listener.local_audio
                and _can_forward(sole, listener)
            ):
                source = sole
            else:
                mixing = True
                group = listener.hears
        old = listener.forward_from
        if old is not source:
            if old is not None and listener in old.forward_to:
                old.forward_to.remove(listener)
                old.rerouted()
            if source is not None:
                source.forward_to.append(listener)
                source.rerouted()
            listener.forward_from = source
            listener.rerouted()
        listener.mixing = mixing
        if mixing:
            self.mixers[listener] = None
        else:
            self.mixers.pop(listener, None)
        had = listener in self._mix_group
        old_group = self._mix_group.get(listener)
        if had == mixing and (not mixing or group is old_group):
            return
        if had:
            if old_group is None:
                del self._open_mixers[listener]
            else:
                self._source_mixers[old_group] -= 1
                if not self._source_mixers[old_group]:
                    del self._source_mixers[old_group]
                refresh[old_group] = None
        if not mixing:
            del self._mix_group[listener]
            return
        self._mix_group[listener] = group
        if group is None:
            self._open_mixers[listener] = None
        else:
            self._source_mixers[group] = self._source_mixers.get(group, 0) + 1
            refresh[group] = None

    def _buffer(self, source: AudioLeg) -> None:
        """Whether someone mixes `source`: a listener of every source other than itself, or
        one of its own listeners. Its buffer is flushed when no one does any more."""
        if source not in self.legs:  # it left (`remove` clears it), or is another room's
            self.sources.pop(source, None)
            return
        wanted = source in self._talkers and (
            len(self._open_mixers) > (source in self._open_mixers) or source in self._source_mixers
        )
        if wanted == source.buffered:
            return
        if not wanted:
            source.flush()
        source.buffered = wanted
        source.rerouted()
        if wanted:
            self.sources[source] = None
        else:
            self.sources.pop(source, None)

    def on_audio(self, source: AudioLeg, packet: RtpPacket, now: float) -> None:
        """A packet of `source`: forwarded to its listeners, buffered when someone mixes it."""
        for listener in source.forward_to:
            listener.forward(packet, source, now)
        if source.buffered:
            source.buffer(packet, now)

    def tick(self, now: float) -> None:
        """One 20 ms frame for every mixing listener (the shared clock's tick at `now`).

        Each source is pulled (decoded) once, and converted to each listeners' rate once: a
        source's resampler is a stream, and a second listener at the same rate feeding it the
        same frame again would hear each frame resampled after itself (a click every 20 ms)."""
        decoded: dict[AudioLeg, Pcm] = {}
        for source in self.sources:
            pcm = source.pull(now)
            if pcm is not None:
                decoded[source] = pcm
        if not decoded:
            self._tick_silent(now)
            return
        at_rate: dict[tuple[AudioLeg, int], Pcm | None] = {}
        for listener in list(self.mixers):
            local, event_sent = listener.local_frame(now)
            if event_sent:
                continue
            rate = listener.spec.sample_rate
            parts = []
            hears = listener.hears
            takes = listener.takes_sources
            apart = []
            for source, pcm in decoded.items():
                if source is not listener and (hears is None or source is hears):
                    if source.spec.sample_rate == rate:
                        converted: Pcm | None = pcm
                    else:
                        key = (source, rate)
                        if key in at_rate:
                            converted = at_rate[key]
                        else:
                            converted = at_rate[key] = source.output_at(pcm, rate)
                    if converted is not None:
                        parts.append(converted)
                        if takes:
                            apart.append((source, converted))
            if takes:
                listener.send_sources(apart, now)
                continue
            if local is not None:
                parts.append(local)
            listener.send_pcm(mixer.mix(parts) if parts else None, now)

    def _tick_silent(self, now: float) -> None:
        """`tick` when no source gave a frame: each listener hears its local audio or silence
        (what the mix comes to with no parts), without a pass over the sources per listener.
        In a room of silent callers this is every tick, for every leg (issue 18)."""
        for listener in list(self.mixers):
            local, event_sent = listener.local_frame(now)
            if event_sent:
                continue
            if listener.takes_sources:
                listener.send_sources([], now)
            else:
                listener.send_pcm(local, now)
