"""An adaptive jitter buffer for one received audio stream, sans-IO.

Packets go in with `push(packet, now)` as they arrive; the shared playout clock calls `pop(now)`
once per `frame_ms` tick and gets the audio for that tick. Time is always an argument (seconds,
monotonic); nothing here reads a clock.

How playout works
-----------------
Playout follows the RTP timestamp (RFC 3550 s5.1: it advances at the media clock rate, so it says
*when* each packet's audio belongs). The buffer keeps a playout point in extended timestamp units
that moves on by one frame per pop; a pop delivers the earliest buffered packet whose timestamp
falls before the end of the current frame slot.

- Packets of exactly `frame_ms` (the common 20 ms case) play one per pop.
- Longer packets (30, 40, 60 ms) play when their timestamp comes due; the pops that fall inside a
  packet's audio return None (nothing new: the decoder still has audio from that packet), so time
  never drifts. Their duration is learned from consecutive sequence numbers.
- Shorter packets (10 ms): a pop delivers one packet, and packets whose audio lies wholly before
  the playout point are dropped (counted in `skipped`), so every other one would be lost. Give
  the buffer `frame_ms` equal to the stream's ptime and pop it that often instead.

A pop returns None when there is nothing to play and no loss to conceal: not started yet, waiting
for the initial delay, silence (DTX: the next buffered packet follows the last played one in
sequence, its time has not come), or an empty buffer - a packet that is merely delayed may still
come, and counts as late if it misses its slot. It returns `JitterFrame(None, lost=True)` when
the slot has no packet and a gap in sequence numbers says one was lost (a later one is buffered),
and while it stretches the delay (below): the decoder conceals that frame.

Adaptive delay
--------------
The arrival delay of each packet relative to its timestamp ("transit", RFC 3550 A.8) is kept over
a window of recent packets. The target delay `delay` is the spread between the fastest packet and
the 97th percentile one, plus a small guard for pop timing, clamped to [min_delay, max_delay]: a
late packet in 33 is accepted as loss rather than delaying every packet for it. The target grows
at once and falls by at most 10 ms per second. The playout point follows it: when buffered audio
is short of the target the buffer holds the playout point for one tick (returning a concealment
frame, counted in `stretched`, while packets wait); when it has been more than 1.5 frames over
the target throughout a 200 ms window, it drops one frame (counted in `skipped`), or all of the
excess at once when that is larger than `max_delay` (the playout clock stalled, a flood). A single
late tick of the playout clock drops nothing. What plays the frames can say whether what it
played last was quiet (`pop`'s `listener`): the one-frame drop then waits for a pause, up to
`_QUIET_WAIT` (counted in `deferred`), since a frame cut out of speech clicks and one cut from a
pause is not heard. A phone whose first packets come late and together (starting up under load)
leaves the buffer over its target this way, in its first words.

Resynchronisation
-----------------
The buffer restarts playout on a new stream (flushing what it holds, counted in `resets`) when the
SSRC changes (RFC 3550 s8), when the timestamp jumps by more than a second either way, when a
packet with the marker bit starts a talkspurt after silence (RFC 3551 s4.1) with nothing left to
play, and when packets have arrived late for a quarter second on end (the sender reset its clock
without saying so). Packets still in flight from before a restart are counted late and dropped.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from sipbridge.media.rtp import RtpPacket

__all__ = ["JitterBuffer", "JitterFrame", "JitterStats"]

_SEQ_MOD = 1 << 16  # RFC 3550 s5.1: 16-bit sequence number
_TS_MOD = 1 << 32  # RFC 3550 s5.1: 32-bit timestamp

# A timestamp step larger than this (either way) is a new timeline, not jitter or silence.
_JUMP_SECONDS = 1.0
# Late packets arriving for this long without one in time: the stream moved under us.
_LATE_RESYNC_SECONDS = 0.25
# Transit samples kept for the delay estimate: 2 s of 20 ms packets.
_WINDOW = 100
# The percentile of transit spread the target delay covers.
_PERCENTILE = 97
# The estimate is recomputed every this many packets (a sort of the window), and on every packet
# while the window is small or when a packet arrives late.
_ESTIMATE_EVERY = 10
# Margin for the jitter of the playout clock itself.
_GUARD_SECONDS = 0.005
# How fast the target may fall when jitter calms down.
_DECAY_PER_SECOND = 0.01
# The playout point is moved forward only when it has been over the target this long.
_SHRINK_WINDOW = 0.2
# ... and, for a caller that says what is quiet, at a pause, unless none came for this long.
_QUIET_WAIT = 4.0
# The longest packet duration learned from timestamps: telephony packets carry 10-60 ms (20 ms
# by default, RFC 3551 s4.2); a longer step between consecutive packets is silence.
_MAX_PACKET_SECONDS = 0.12
# How many played or dropped sequence numbers are remembered to recognise their duplicates.
_RECENT = 256
# Slack when comparing the buffered delay with the target: float rounding and sub-millisecond
# wobble of the playout clock must not stretch the delay.
_SLACK = 0.001


def _signed(delta: int, modulus: int) -> int:
    """`delta` reduced modulo `modulus` into [-modulus/2, modulus/2): serial number arithmetic."""
    half = modulus >> 1
    return (delta + half) % modulus - half


@dataclass(frozen=True, slots=True)
class JitterFrame:
    """What one pop delivers: the next packet, or a lost frame the decoder should conceal.

    `lost` is True (and `packet` None) for a frame with no audio: a packet missing from the
    sequence, or a frame inserted to grow the playout delay.
    """

    packet: RtpPacket | None
    lost: bool


# Dataclasses made for every call write their own `__init__` (`init=False`): mypyc compiles
# it, where the one the dataclasses module generates stays interpreted (issue 18).
@dataclass(init=False, slots=True)
class JitterStats:
    """Running counts. Every pushed packet ends up in exactly one of duplicates, late, overflow,
    played, skipped, flushed, or is still buffered; every frame popped is played, lost or
    stretched."""

    received: int = 0  # packets pushed
    played: int = 0  # packets delivered by pop
    lost: int = 0  # frames concealed because their packet was missing
    late: int = 0  # packets that arrived after their slot was played (dropped)
    duplicates: int = 0  # copies of packets already buffered or played (dropped)
    overflow: int = 0  # packets dropped because the buffer was full
    resets: int = 0  # playout restarts: SSRC change, timestamp jump, talkspurt, lasting lateness
    skipped: int = 0  # packets dropped at playout to shrink the delay or catch up
    stretched: int = 0  # concealment frames inserted to grow the delay
    flushed: int = 0  # packets dropped by flush() or a restart
    deferred: int = 0  # one-frame drops that waited for a pause (`pop`'s `listener`)

    def __init__(
        self,
        *,
        received: int = 0,
        played: int = 0,
        lost: int = 0,
        late: int = 0,
        duplicates: int = 0,
        overflow: int = 0,
        resets: int = 0,
        skipped: int = 0,
        stretched: int = 0,
        flushed: int = 0,
        deferred: int = 0,
    ) -> None:
        self.received = received
        self.played = played
        self.lost = lost
        self.late = late
        self.duplicates = duplicates
        self.overflow = overflow
        self.resets = resets
        self.skipped = skipped
        self.stretched = stretched
        self.flushed = flushed
        self.deferred = deferred


class Playout(Protocol):
    """What plays a buffer's frames, as `pop` may ask it."""

    def played_quiet(self) -> bool:
        """Whether the audio played last was a pause."""
        ...


class JitterBuffer:
    """Reorders, times and conceals one audio stream for a fixed-rate playout clock.

    `clock_rate` is the RTP clock rate of the payload (8000 for G.711 and G.722); `frame_ms` is
    the playout tick; the target playout delay stays within [`min_delay`, `max_delay`] seconds;
    at most `max_packets` are held (the oldest goes first).
    """

    __slots__ = (
        "_base_ts",
        "_buffered",
        "_covered_until",
        "_done",
        "_done_order",
        "_estimated_at",
        "_floor_seq",
        "_frame_seconds",
        "_heap",
        "_jump_samples",
        "_last_delta",
        "_last_played_seq",
        "_late_since",
        "_least_excess",
        "_max_packet_samples",
        "_max_seq",
        "_max_seq_ts",
        "_max_ts",
        "_min_transit",
        "_next_shrink_at",
        "_next_ts",
        "_packet_samples",
        "_previous_ssrc",
        "_shrink_due_at",
        "_since_estimate",
        "_ssrc",
        "_started",
        "_transits",
        "clock_rate",
        "delay",
        "frame_samples",
        "max_delay",
        "max_packets",
        "min_delay",
        "stats",
    )

    def __init__(
        self,
        *,
        clock_rate: int,
        frame_ms: int = 20,
        min_delay: float = 0.02,
        max_delay: float = 0.06,
        max_packets: int = 64,
    ) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock rate {clock_rate} must be positive")
        if clock_rate * frame_ms // 1000 <= 0:
            raise ValueError(f"a frame of {frame_ms} ms holds no sample at {clock_rate} Hz")
        if not 0 <= min_delay <= max_delay:
            raise ValueError(f"need 0 <= min_delay ({min_delay}) <= max_delay ({max_delay})")
        if max_packets < 1:
            raise ValueError(f"max_packets {max_packets} must be at least 1")
        self.clock_rate = clock_rate
        self.frame_samples = clock_rate * frame_ms // 1000
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.max_packets = max_packets
        self.delay = min_delay
        self.stats = JitterStats()
        self._frame_seconds = frame_ms / 1000
        self._jump_samples = int(clock_rate * _JUMP_SECONDS)
        self._max_packet_samples = int(clock_rate * _MAX_PACKET_SECONDS)
        self._packet_samples = self.frame_samples
        # (extended timestamp, extended sequence number, packet); extended sequence numbers in
        # the heap are unique (`_buffered`), so packets themselves are never compared
        self._heap: list[tuple[int, int, RtpPacket]] = []
        self._buffered: set[int] = set()
        self._done: set[int] = set()
        self._done_order: deque[int] = deque()
        self._transits: deque[float] = deque(maxlen=_WINDOW)
        self._ssrc: int | None = None
        self._previous_ssrc: int | None = None
        self._estimated_at = 0.0
        self._late_since: float | None = None
        self._floor_seq: int | None = None
        self._reset_stream(0, 0, 0.0)

    def __len__(self) -> int:
        """Packets held."""
        return len(self._heap)

    # --- arrival ---------------------------------------------------------------------------

    def push(self, packet: RtpPacket, now: float) -> None:
        """Take a packet that arrived at `now`."""
        stats = self.stats
        stats.received += 1
        if self._ssrc is None:
            self._restart(packet, now)
        elif packet.ssrc != self._ssrc:
            # RFC 3550 s8: a new SSRC is a new stream (the peer restarted, or a transfer moved
            # the media source); packets still in flight from the one we left are late.
            if packet.ssrc == self._previous_ssrc and self._drop_late(now):
                return
            stats.resets += 1
            self._previous_ssrc = self._ssrc
            self._restart(packet, now)
            self._insert(packet, packet.sequence_number, packet.timestamp, now)
            return
        # RFC 3550 A.1: extend the 16-bit sequence number and the 32-bit timestamp around the
        # highest seen, so wrap-around keeps their order
        ext_seq = self._max_seq + _signed(packet.sequence_number - self._max_seq, _SEQ_MOD)
        ts_delta = _signed(packet.timestamp - self._max_ts, _TS_MOD)
        ext_ts = self._max_ts + ts_delta
        if ext_seq in self._buffered or ext_seq in self._done:
            stats.duplicates += 1
            return
        # RFC 3551 s4.1: the marker starts a talkspurt after silence; with nothing left to play,
        # restart on it so the new talkspurt gets the current target delay
        talkspurt = (
            packet.marker and self._started and not self._heap and ts_delta > self._packet_samples
        )
        if self._floor_seq is not None and ext_seq < self._floor_seq:
            # sent before the talkspurt or jump we resynchronised on
            if self._drop_late(now):
                return
            self._resync(packet, now)
        elif abs(ts_delta) > self._jump_samples or talkspurt:
            self._resync(packet, now)
        elif self._started and ext_ts < self._next_ts:
            # its slot has been played; its transit still tells the delay estimate about it
            self._observe_transit(ext_ts, now, force=True)
            if self._drop_late(now):
                return
            self._resync(packet, now)
        else:
            self._insert(packet, ext_seq, ext_ts, now)
            return
        self._insert(packet, packet.sequence_number, packet.timestamp, now)

    def _drop_late(self, now: float) -> bool:
        """Count a late packet and say to drop it; False once lateness has lasted so long that
        the caller should resynchronise on it instead."""
        if self._late_since is None:
            self._late_since = now
        elif now - self._late_since >= _LATE_RESYNC_SECONDS:
            return False
        self.stats.late += 1
        return True

    def _resync(self, packet: RtpPacket, now: float) -> None:
        self.stats.resets += 1
        self._restart(packet, now)
        self._floor_seq = packet.sequence_number

    def _restart(self, packet: RtpPacket, now: float) -> None:
        """Drop what is held and start a new stream whose first packet is `packet`."""
        self.stats.flushed += len(self._heap)
        self._ssrc = packet.ssrc
        self._reset_stream(packet.sequence_number, packet.timestamp, now)

    def _reset_stream(self, sequence_number: int, timestamp: int, now: float) -> None:
        self._heap.clear()
        self._buffered.clear()
        self._done.clear()
        self._done_order.clear()
        self._transits.clear()
        self._min_transit = math.inf
        self._since_estimate = 0
        self._late_since = None
        self._started = False
        self._floor_seq = None
        self._max_seq = self._last_played_seq = sequence_number
        self._max_ts = self._max_seq_ts = self._base_ts = timestamp
        self._next_ts = self._covered_until = timestamp
        self._last_delta = 0
        self._next_shrink_at = now
        self._least_excess = math.inf
        self._shrink_due_at = -1.0

    def _insert(self, packet: RtpPacket, ext_seq: int, ext_ts: int, now: float) -> None:
        self._late_since = None
        if ext_seq > self._max_seq:
            if ext_seq == self._max_seq + 1 and not packet.marker:
                # the packet duration: two equal timestamp steps between consecutive packets
                # (a step alone may span silence)
                delta = ext_ts - self._max_seq_ts
                if delta == self._last_delta and 0 < delta <= self._max_packet_samples:
                    self._packet_samples = delta
                self._last_delta = delta
            self._max_seq = ext_seq
            self._max_seq_ts = ext_ts
        self._max_ts = max(self._max_ts, ext_ts)
        self._observe_transit(ext_ts, now)
        entry = (ext_ts, ext_seq, packet)
        heap = self._heap
        if len(heap) >= self.max_packets:
            self.stats.overflow += 1
            if entry[:2] < heap[0][:2]:
                self._remember_done(ext_seq)  # the newcomer is the oldest: it goes
                return
            _, dropped, _ = heapq.heapreplace(heap, entry)
            self._buffered.discard(dropped)
            self._remember_done(dropped)
        else:
            heapq.heappush(heap, entry)
        self._buffered.add(ext_seq)

    def _remember_done(self, ext_seq: int) -> None:
        self._done.add(ext_seq)
        self._done_order.append(ext_seq)
        if len(self._done_order) > _RECENT:
            self._done.discard(self._done_order.popleft())

    # --- delay estimate --------------------------------------------------------------------

    def _observe_transit(self, ext_ts: int, now: float, *, force: bool = False) -> None:
        # RFC 3550 A.8: transit = arrival - timestamp, both in seconds here; only differences
        # between packets matter, so the unknown clock offset cancels
        transit = now - (ext_ts - self._base_ts) / self.clock_rate
        self._transits.append(transit)
        self._min_transit = min(self._min_transit, transit)
        self._since_estimate += 1
        if force or self._since_estimate >= _ESTIMATE_EVERY or len(self._transits) < _WINDOW // 5:
            self._estimate(now)

    def _estimate(self, now: float) -> None:
        ordered = sorted(self._transits)
        fastest = ordered[0]
        index = (_PERCENTILE * len(ordered) + 99) // 100 - 1  # nearest-rank percentile
        spread = ordered[index] - fastest
        target = min(max(spread + _GUARD_SECONDS, self.min_delay), self.max_delay)
        if target >= self.delay:
            self.delay = target
        else:
            elapsed = max(0.0, now - self._estimated_at)
            self.delay = max(target, self.delay - _DECAY_PER_SECOND * elapsed)
        self._min_transit = fastest
        self._estimated_at = now
        self._since_estimate = 0

    def _buffered_delay(self, ext_ts: int, now: float) -> float:
        """How long the fastest recent packet would have waited if `ext_ts` plays at `now`."""
        return now - (ext_ts - self._base_ts) / self.clock_rate - self._min_transit

    # --- playout ---------------------------------------------------------------------------

    def pop(self, now: float, listener: Playout | None = None) -> JitterFrame | None:
        """The frame for the playout tick at `now`; None when there is nothing to play.

        `listener`, when given, says whether the audio played last was quiet: a one-frame drop
        to shrink the delay waits for that (see the module's docstring). It is asked only then."""
        heap = self._heap
        if not self._started:
            if not heap:
                return None
            first_ts, first_seq, _ = heap[0]
            if self._buffered_delay(first_ts, now) < self.delay - _SLACK:
                return None  # filling up to the target delay
            self._started = True
            self._next_ts = self._covered_until = first_ts
            self._last_played_seq = first_seq - 1
            self._next_shrink_at = now + _SHRINK_WINDOW
            self._least_excess = math.inf
        frame = self._frame_seconds
        slot = self._next_ts
        waited = self._buffered_delay(slot, now)
        if waited < self.delay - _SLACK:
            # short of the target: hold the playout point for one tick
            if heap:
                self.stats.stretched += 1
                return JitterFrame(None, True)
            return None
        # Over the target: shrink only when the excess lasted a whole window, so one late tick of
        # the playout clock (which then catches up) drops nothing
        self._least_excess = min(self._least_excess, waited - self.delay)
        if now >= self._next_shrink_at:
            excess = self._least_excess
            waits = False
            if excess > self.max_delay:
                # far behind (the playout clock stalled, or a flood): catch up at once
                slot += int(excess / frame + _SLACK) * self.frame_samples
            elif excess > 1.5 * frame:
                if self._shrink_due_at < 0:
                    self._shrink_due_at = now
                if (
                    listener is not None
                    and now - self._shrink_due_at < _QUIET_WAIT
                    and not listener.played_quiet()
                ):
                    waits = True  # in the middle of speech: at the next pause
                    if self._shrink_due_at == now:
                        self.stats.deferred += 1
                else:
                    slot += self.frame_samples
            if not waits:
                # the window starts again (while a drop waits for a pause, its excess is
                # still watched: if the excess goes, so does the drop)
                self._least_excess = math.inf
                self._next_shrink_at = now + _SHRINK_WINDOW
                self._shrink_due_at = -1.0
        self._next_ts = slot + self.frame_samples
        while heap and heap[0][0] + self._packet_samples <= slot:
            _, dropped, _ = heapq.heappop(heap)
            self._forget(dropped)
            self.stats.skipped += 1
        if heap and heap[0][0] < self._next_ts:
            ext_ts, ext_seq, packet = heapq.heappop(heap)
            self._forget(ext_seq)
            self._covered_until = ext_ts + self._packet_samples
            self.stats.played += 1
            return JitterFrame(packet, False)
        if slot < self._covered_until or not heap or heap[0][1] <= self._last_played_seq + 1:
            # still inside the last packet's audio, silence, or an empty buffer
            return None
        self._covered_until = slot + self.frame_samples
        self.stats.lost += 1
        return JitterFrame(None, True)

    def _forget(self, ext_seq: int) -> None:
        """A packet has left the buffer at playout."""
        self._buffered.discard(ext_seq)
        self._remember_done(ext_seq)
        self._last_played_seq = max(self._last_played_seq, ext_seq)

    def flush(self) -> None:
        """Drop everything held; the next packet starts playout afresh (not counted a reset)."""
        self.stats.flushed += len(self._heap)
        self._ssrc = None
        self._previous_ssrc = None
        self._reset_stream(0, 0, 0.0)
