"""The room's forward-or-mix decision, its mix, and the pieces it is made of (`Timeline`, the
players and their FIFO), in memory: legs here are plain `AudioLeg`s that record what they hear.
"""

from __future__ import annotations

import numpy as np
import pytest

from sipbridge.media import codecs
from sipbridge.media.players import FRAME_MS, PcmFifo, PcmPlayer, Player
from sipbridge.media.room_audio import G711, AudioLeg, RoomAudio, can_forward
from sipbridge.media.rtp import RtpPacket
from sipbridge.media.timeline import TIMESTAMP_MOD, Timeline
from tests.media.test_leg import Clock

FRAME = 160


class Member(AudioLeg):
    """A leg that gives one constant frame per pull and records what it hears."""

    def __init__(
        self, spec: codecs.CodecSpec = codecs.PCMU_SPEC, level: int = 0, forwardable: bool = True
    ) -> None:
        super().__init__(spec)
        self.forwardable = forwardable
        self.level = level
        self.heard: list[np.ndarray | None] = []
        self.packets: list[RtpPacket] = []
        self.buffered_packets: list[RtpPacket] = []
        self.flushed = 0

    def pull(self, now: float) -> np.ndarray | None:
        if not self.level:
            return None
        return np.full(self.spec.sample_rate * FRAME_MS // 1000, self.level, np.int16)

    def send_pcm(self, pcm: np.ndarray | None, now: float) -> None:
        self.heard.append(pcm)

    def forward(self, packet: RtpPacket, source: object, now: float) -> None:
        self.packets.append(packet)

    def buffer(self, packet: RtpPacket, now: float) -> None:
        self.buffered_packets.append(packet)

    def flush(self) -> None:
        self.flushed += 1


PACKET = RtpPacket(payload_type=0, sequence_number=1, timestamp=0, ssrc=7, payload=b"\xff" * 160)


def test_can_forward_same_codec_or_g711_both_ways() -> None:
    assert can_forward(codecs.G722_SPEC, codecs.G722_SPEC)
    assert all(can_forward(a, b) for a in G711 for b in G711)
    assert not can_forward(codecs.PCMU_SPEC, codecs.G722_SPEC)
    assert not can_forward(codecs.OPUS_SPEC, codecs.PCMA_SPEC)


def test_two_forwardable_legs_forward_and_the_clock_is_left_alone() -> None:
    clock = Clock()
    room = RoomAudio("r", clock)
    a, b = Member(), Member(codecs.PCMA_SPEC)
    room.add(a)
    assert a.mixing and clock.rooms == {room}  # alone: silence on the clock
    room.add(b)
    assert a.forward_to == [b] and b.forward_to == [a] and not clock.rooms
    room.on_audio(a, PACKET, 0.0)
    assert b.packets == [PACKET] and a.buffered_packets == []


def test_a_third_leg_or_another_codec_makes_the_room_mix() -> None:
    clock = Clock()
    room = RoomAudio("r", clock)
    a, b, c = Member(level=100), Member(level=10), Member(codecs.G722_SPEC, level=1)
    for leg in (a, b, c):
        room.add(leg)
    assert set(room.mixers) == set(room.sources) == {a, b, c} and clock.rooms == {room}
    room.on_audio(a, PACKET, 0.0)
    assert a.buffered_packets == [PACKET]
    for index in range(4):
        room.tick(index * 0.02)
    # each hears the others, never itself; c hears 8 kHz sources resampled to 16 kHz
    assert abs(int(a.heard[-1][-1]) - 11) <= 2  # type: ignore[index]
    assert abs(int(c.heard[-1][-1]) - 110) <= 2  # type: ignore[index]
    assert len(c.heard) == 4 and len(c.heard[-1]) == 320  # type: ignore[arg-type]
    room.remove(c)  # two G.711 legs again: back to forwarding, buffers flushed
    assert not clock.rooms and a.flushed == b.flushed == 1 and c.room is None
    room.remove(c)  # twice: harmless
    assert list(room.legs) == [a, b]


def test_a_listener_that_hears_one_source_and_legs_that_only_listen_or_talk() -> None:
    clock = Clock()
    room = RoomAudio("r", clock)
    phone, other = Member(level=5), Member(level=7)
    listener = Member(codecs.OPUS_SPEC, forwardable=False)
    listener.receiving = False
    listener.hears = phone
    talker = Member(codecs.OPUS_SPEC, forwardable=False)
    talker.sending = False
    for leg in (phone, other, listener, talker):
        room.add(leg)
    assert listener.mixing and not talker.mixing and talker in room.sources
    room.tick(0.0)
    room.tick(0.02)
    heard = [frame for frame in listener.heard if frame is not None]
    assert heard and all(abs(int(frame[100]) - 5) <= 1 for frame in heard)


def test_a_leg_moves_between_rooms() -> None:
    clock = Clock()
    first, second = RoomAudio("one", clock), RoomAudio("two", clock)
    a = Member()
    first.add(a)
    second.add(a)
    assert list(first.legs) == [] and list(second.legs) == [a] and a.room is second


def test_the_base_leg_gives_and_hears_nothing() -> None:
    leg = AudioLeg(codecs.PCMU_SPEC)
    assert not leg.local_audio and leg.pull(0.0) is None and leg.local_frame(0.0) == (None, False)
    leg.flush()
    leg.send_pcm(None, 0.0)
    leg.forward(PACKET, leg, 0.0)
    leg.buffer(PACKET, 0.0)
    assert leg.output_at(np.zeros(FRAME, np.int16), 8000) is not None


# -- players and FIFO ---------------------------------------------------------------------------


def test_a_fifo_primes_and_pads_an_underrun() -> None:
    fifo = PcmFifo(prime=300)
    fifo.push(np.ones(200, np.int16))
    assert fifo.take(FRAME) is None  # not primed yet
    fifo.push(np.ones(200, np.int16))
    assert len(fifo.take(FRAME)) == FRAME  # type: ignore[arg-type]
    assert len(fifo.take(FRAME)) == FRAME  # type: ignore[arg-type]
    assert fifo.take(FRAME) is None and fifo.underruns == 1  # ran dry: primes again
    plain = PcmFifo()
    plain.push(np.ones(100, np.int16))
    out = plain.take(FRAME)
    assert out is not None and list(out[98:102]) == [1, 1, 0, 0] and plain.underruns == 1


def test_a_player_pads_its_last_frame_and_says_done_once() -> None:
    done: list[int] = []
    player = PcmPlayer(np.ones(FRAME + 1, np.int16), done=lambda: done.append(1))
    assert len(player.frame(FRAME)) == FRAME  # type: ignore[arg-type]
    last = player.frame(FRAME)
    assert last is not None and int(last[0]) == 1 and int(last[1]) == 0
    assert player.frame(FRAME) is None and player.frame(FRAME) is None and done == [1]
    with pytest.raises(NotImplementedError):
        Player().frame(FRAME)


# -- timeline -----------------------------------------------------------------------------------


def test_a_timeline_maps_sources_onto_one_stream() -> None:
    line = Timeline(8000, FRAME, start=TIMESTAMP_MOD - 80)
    assert line.now(5.0) == TIMESTAMP_MOD - 80  # nothing sent yet
    assert line.made(1.0) == (TIMESTAMP_MOD - 80, True)
    assert line.made(1.001) == (80, False)  # at least a frame later, wrapped
    assert line.forwarded(ssrc=1, timestamp=1000, at=1.021) == (80 + FRAME, True)
    assert line.forwarded(ssrc=1, timestamp=1160, at=1.041) == (80 + 2 * FRAME, False)
    line.continue_at(5000, 2.0)
    assert line.now(2.02) == 5000 + FRAME
    line.rebase(16000, 320)
    assert line.forwarded(ssrc=1, timestamp=0, at=2.02)[1]  # the same source maps anew


class Noise(AudioLeg):
    """A source of a seeded noise, one 20 ms frame per pull, at its codec's rate."""

    def __init__(self, spec: codecs.CodecSpec, seed: int) -> None:
        super().__init__(spec)
        self.sending = False
        self.rng = np.random.default_rng(seed)

    def pull(self, now: float) -> np.ndarray | None:
        size = self.spec.sample_rate * FRAME_MS // 1000
        return (self.rng.standard_normal(size) * 3000).astype(np.int16)


class Hearer(AudioLeg):
    """A listener that gives no audio and keeps what it hears, mixed or each source apart."""

    def __init__(self, spec: codecs.CodecSpec, apart: bool = False) -> None:
        super().__init__(spec)
        self.receiving = False
        self.takes_sources = apart
        self.heard: list[np.ndarray | None] = []
        self.apart: list[list[tuple[AudioLeg, np.ndarray]]] = []

    def send_pcm(self, pcm: np.ndarray | None, now: float) -> None:
        self.heard.append(pcm)

    def send_sources(self, frames: list[tuple[AudioLeg, np.ndarray]], now: float) -> None:
        self.apart.append(frames)


def test_a_source_is_converted_once_per_tick_for_every_listener_at_a_rate() -> None:
    """A source's resampler is a stream: fed the same frame once per listener, the second
    listener at a rate heard each frame resampled after itself (a click every 20 ms)."""
    alone = Hearer(codecs.OPUS_SPEC)
    first, second = Hearer(codecs.OPUS_SPEC), Hearer(codecs.OPUS_SPEC)
    for listeners in ([alone], [first, second]):
        room = RoomAudio("r", Clock())
        room.add(Noise(codecs.PCMU_SPEC, 7))
        for listener in listeners:
            room.add(listener)
        for tick in range(20):
            room.tick(tick * 0.02)
    reference = [f for f in alone.heard if f is not None]
    assert len(reference) >= 15
    for listener in (first, second):
        heard = [f for f in listener.heard if f is not None]
        assert len(heard) == len(reference)
        assert all(np.array_equal(a, b) for a, b in zip(heard, reference, strict=True))


def test_a_listener_that_takes_sources_apart_gets_each_at_its_rate() -> None:
    """`takes_sources`: one frame of each source it hears per tick, converted to its rate, not
    their sum (a stereo recording puts them on different channels)."""
    room = RoomAudio("r", Clock())
    phone, client = Noise(codecs.PCMU_SPEC, 1), Noise(codecs.OPUS_SPEC, 2)
    apart, mixed = Hearer(codecs.OPUS_SPEC, apart=True), Hearer(codecs.OPUS_SPEC)
    for leg in (phone, client, apart, mixed):
        room.add(leg)
    for tick in range(10):
        room.tick(tick * 0.02)
    assert apart.heard == [] and len(apart.apart) == 10
    last = dict(apart.apart[-1])
    assert set(last) == {phone, client}
    assert all(len(frame) == 960 for frame in last.values())
    # the same frames as the mixing listener's parts: their sum is what it heard
    total = sum(frame.astype(np.int32) for frame in last.values())
    assert np.array_equal(np.clip(total, -32768, 32767).astype(np.int16), mixed.heard[-1])
