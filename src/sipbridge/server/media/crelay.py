"""The driver of the compiled relay engine (`sipbridge/_crelay.c`): RTP legs relayed off the event
loop, in a thread that takes no GIL.

Every started call leg's RTP socket is handed to the engine (`adopt`), which reads it from then
on. A leg that is a pure relay - exactly what `media/relay.py` forwards: one listener taking its
packets as they are, nobody mixing it, no SRTP or capture on either side, the source latched and
validated, the listener's timeline mapping it - is *armed*: the engine forwards its ordinary
packets itself, keeping the statistics the Python path keeps. Everything else comes back through
the engine's queue (`_drain`, on the loop when its eventfd is readable) and takes the Python path
unchanged, with the time the engine read it. The engine reads a socket only while its leg is
armed: at the first packet it hands back the leg disarms itself and the event loop reads the
socket again, as it reads every leg that is not a pure relay (mixing, SRTP, the first packets).
Python arms it again (`_try_arm`, with the legs' state at that moment) when a routing change
(`rerouted`) leaves it a pure relay, or when the sweep of the legs the loop reads (every
`REARM_S`) finds it one again: a digit's or a flood's packets stay on the loop meanwhile.

While a leg is armed its counters live in the engine; `sync` brings them into the legs' objects
(receiver, latch, sender, timeline, stats, levels), and every reader calls it first: the RTCP
report and media timeout (`CallMedia.get_timer`), quality, metrics, speakers, the call's end.
Disarming does the same, so Python always continues from what the engine left.

`SIPBRIDGE_NO_CRELAY=1`, or an engine that was not built, leaves every leg on the event loop.
The engine batches its system calls across sockets with io_uring where the kernel allows it (else
recvmmsg/sendmmsg, and always with `SIPBRIDGE_CRELAY_URING=0`); `counters()["uring"]` says which
mode runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from mypy_extensions import mypyc_attr

from sipbridge.media import codecs
from sipbridge.media.levels import _ALAW_POWER, _ULAW_POWER, PacketLevels, g711_levels
from sipbridge.server.loop_calls import remove_reader
from sipbridge.server.media.leg_driver import CallMedia

try:
    from sipbridge import _crelay  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - the build failed: the pure-Python path relays
    _crelay = None

log = logging.getLogger(__name__)

_U32 = 0xFFFFFFFF
BATCH_US = 1000  # the engine's rounds start this far apart: one wake-up serves many sockets
# While traffic is sparse (under 10 datagrams a millisecond: 100 relayed calls) the rounds stretch
# to find about 10 datagrams each, up to this far apart: at 50 relayed calls, half the wake-ups.
SPARSE_US = 2000
REARM_S = 0.1  # how often legs the event loop reads are looked at again


def available() -> bool:
    """Whether legs are relayed by the compiled engine (built, and not switched off)."""
    return _crelay is not None and os.environ.get("SIPBRIDGE_NO_CRELAY", "") in ("", "0")


def uring() -> bool:
    """Whether the engine is asked to batch its system calls with io_uring (`_crelay.c`'s io_uring
    mode): yes unless `SIPBRIDGE_CRELAY_URING=0`. Beside rtpengine on a quiet machine
    (`bench/media.py`, 200-800 relayed calls) it took 0.82-0.92x the recvmmsg/sendmmsg mode's CPU
    a call at the same added latency. The engine falls back by itself where the kernel refuses
    io_uring (ENOSYS, a seccomp policy, kernel.io_uring_disabled): `counters()["uring"]` says what
    it runs."""
    return os.environ.get("SIPBRIDGE_CRELAY_URING", "1") != "0"


def new_sender() -> Any:
    """The compiled sender of the clock's ticks (`ports.SendBatch`), None without the engine (or
    with one built before it had a sender: `make crelay` builds it again)."""
    sender = getattr(_crelay, "Sender", None) if available() else None
    return sender() if sender is not None else None


@mypyc_attr(allow_interpreted_subclasses=True)  # tests switch its own disarm off
class RelayEngine:
    """One engine thread for the legs of one event loop (the module doc)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        assert _crelay is not None
        batch = int(os.environ.get("SIPBRIDGE_CRELAY_BATCH_US", BATCH_US))
        sparse = int(os.environ.get("SIPBRIDGE_CRELAY_SPARSE_US", max(batch, SPARSE_US)))
        self._engine: Any = _crelay.Engine(
            _ULAW_POWER.tobytes(), _ALAW_POWER.tobytes(), batch, max(sparse, batch), uring()
        )
        self._loop = loop
        self.legs: dict[int, CallMedia] = {}  # slot -> its leg
        self._target: dict[int, CallMedia] = {}  # armed slot -> the listener it forwards to
        self._into: dict[int, int] = {}  # a listener's slot -> the armed slot forwarding to it
        self._dirty: dict[CallMedia, None] = {}  # legs to look at again, soon
        self._scheduled = False
        self._waiting: dict[CallMedia, None] = {}  # read by the loop: looked at every REARM_S
        self._sweep: asyncio.TimerHandle | None = None
        self._refused: dict[CallMedia, None] = {}  # legs the engine cannot take: the loop's
        self.arms = 0
        self.handed_back = 0
        self.closed = False
        self._fd: int = self._engine.notify_fd()
        loop.add_reader(self._fd, self._drain)

    # -- legs in and out ------------------------------------------------------------------

    def adopt(self, leg: CallMedia) -> None:
        """The engine reads `leg`'s RTP socket from now on (the event loop does not)."""
        sock = leg.rtp.sock
        slot: int = self._engine.add(sock.fileno(), int(sock.family))
        leg.crelay, leg.crelay_slot = self, slot
        self.legs[slot] = leg
        self._to_loop(leg)  # the loop reads it until it is a pure relay

    def release(self, leg: CallMedia) -> None:
        """`leg` ends: its counters collected, its socket no longer read (before it closes)."""
        slot = leg.crelay_slot
        if slot is None:
            return
        self._disarm_around(leg)
        self._collect(slot, disarm=True)
        self._engine.remove(slot)
        self.legs.pop(slot, None)
        self._dirty.pop(leg, None)
        self._waiting.pop(leg, None)
        self._refused.pop(leg, None)
        leg.crelay, leg.crelay_slot = None, None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for leg in list(self.legs.values()):
            self.release(leg)
        with contextlib.suppress(Exception):
            remove_reader(self._loop, self._fd)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._engine.close()

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = self._engine.counters()
        out["arms"] = self.arms
        out["armed"] = len(self._target)
        return out

    # -- state between the engine and the legs --------------------------------------------

    def sync(self, leg: CallMedia, *, levels: bool = False) -> None:
        """The engine's counters for `leg`, as source and as listener, into its objects; its
        audio levels too when `levels` is True (only the speakers' update reads them: every
        packet's level, made into Python objects every second for every leg, cost 5% of the
        loop at 400 relayed calls)."""
        slot = leg.crelay_slot
        if slot is None:
            return
        self._collect(slot, disarm=False, levels=levels)
        source = self._into.get(slot)
        if source is not None:
            self._collect(source, disarm=False, levels=False)
        kept = leg.packet_levels
        if levels and kept._levels and kept._payloads:  # one queue, oldest first, for a reader
            _measure_payloads(kept)

    def rerouted(self, leg: CallMedia) -> None:
        """`leg`'s routing or stream changed: nothing of it is relayed until it is looked at
        again (soon, on the loop, once the change is complete)."""
        if leg.crelay_slot is None:
            return
        self._disarm_around(leg)
        self._dirty[leg] = None
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._rearm)

    def latched(self, leg: CallMedia) -> None:
        """`leg` latched onto another address: the direction into it sends there from now."""
        slot = leg.crelay_slot
        source = self._into.get(slot) if slot is not None else None
        if source is not None:
            self._collect(source, disarm=True)
            self._try_arm(self.legs[source])

    def _disarm_around(self, leg: CallMedia) -> None:
        slot = leg.crelay_slot
        if slot is None:
            return
        if slot in self._target:
            self._collect(slot, disarm=True)
        source = self._into.get(slot)
        if source is not None:
            self._collect(source, disarm=True)

    def _collect(self, slot: int, *, disarm: bool, levels: bool = True) -> None:
        engine = self._engine
        changes = engine.disarm(slot) if disarm else engine.collect(slot, levels)
        leg = self.legs[slot]
        listener = self._target.get(slot)
        if disarm and listener is not None:
            del self._target[slot]
            if listener.crelay_slot is not None:
                self._into.pop(listener.crelay_slot, None)
        if changes is not None:
            _apply(leg, listener, changes)
        if disarm:
            self._to_loop(leg)

    def _to_loop(self, leg: CallMedia) -> None:
        """The event loop reads `leg`'s socket again - once what the engine handed back of it was
        taken (`_drain` calls again), so that its datagrams keep their order."""
        if leg.closed or leg.crelay_slot is None:
            return
        armed, active, queued = self._engine.state(leg.crelay_slot)
        if not leg.rtp.reading and not active and not queued:
            leg.rtp.start(self._loop)
        if not armed:
            self._wait(leg)

    def _wait(self, leg: CallMedia) -> None:
        if leg not in self._refused:
            self._waiting[leg] = None
            self._sweep_later()

    def _sweep_later(self) -> None:
        if self._sweep is None:
            self._sweep = self._loop.call_later(REARM_S, self._sweep_due)

    def _rearm(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, {}
        for leg in dirty:
            self._try_arm(leg)
            source = leg.forward_from
            if isinstance(source, CallMedia) and source.crelay is self:
                self._try_arm(source)

    def _sweep_due(self) -> None:
        """The legs the event loop reads, looked at again: those that became pure relays (the
        first packets, a digit or a flood over) go to the engine."""
        self._sweep = None
        waiting, self._waiting = self._waiting, {}
        for leg in waiting:
            if leg.crelay is self and leg.crelay_slot not in self._target:
                self._try_arm(leg)
                if leg.crelay_slot not in self._target and leg not in self._refused:
                    self._waiting[leg] = None
        if self._waiting:  # (`_try_arm` may have scheduled the next sweep already)
            self._sweep_later()

    def _try_arm(self, leg: CallMedia) -> None:
        """Arm `leg` (as a source) when it is a pure relay to a leg of this engine."""
        slot = leg.crelay_slot
        if slot is None or slot in self._target or leg in self._refused:
            return
        listener = _pure_relay(leg, self)
        if listener is None:  # the loop reads it (it is armed nowhere): looked at again later
            self._wait(leg)
            return
        target = listener.crelay_slot
        assert target is not None
        self._collect(slot, disarm=True)  # nothing may be left uncollected when armed
        leg.rtp.stop_reading()  # the engine reads it from the next datagram on
        try:
            armed = self._arm(slot, target, leg, listener)
        except (ValueError, TypeError, OverflowError):
            # an address the engine cannot take (an IPv6 zone by name): the loop keeps the leg
            log.warning("the relay engine cannot relay leg %s", slot, exc_info=True)
            self._refused[leg] = None
            armed = False
        if armed:
            self.arms += 1
            self._target[slot] = listener
            self._into[target] = slot
            self._waiting.pop(leg, None)
        else:
            self._to_loop(leg)

    def _arm(self, slot: int, target: int, leg: CallMedia, listener: CallMedia) -> bool:
        receiver, sender, timeline = leg.receiver, listener.sender, listener.timeline
        destination = listener.latch._latched or listener.latch.expected
        armed: bool = self._engine.arm(
            slot,
            target,
            leg.audio_pt,
            leg.latch._latched,
            receiver.ssrc,
            receiver._max_seq,
            receiver._cycles,
            receiver._jitter,
            receiver._last_arrival,
            receiver._last_timestamp,
            float(receiver.clock_rate),
            _level_kind(leg),
            destination,
            listener.audio_pt,
            sender._sequence,
            sender.ssrc,
            timeline._offset,
            sender._marker_pending,
            listener.frame_ticks,
        )
        return armed

    # -- datagrams handed back ------------------------------------------------------------

    def _drain(self) -> None:
        entries = self._engine.take()
        touched: dict[int, CallMedia] = {}
        legs = self.legs
        for slot, data, addr, at in entries:
            leg = legs.get(slot)
            if leg is None:
                continue
            if slot not in touched:
                touched[slot] = leg
                self._collect(slot, disarm=True)  # what it forwarded before this packet
            try:
                leg.deliver(data, addr, at)
            except Exception:
                log.exception("RTP datagram handed back by the relay engine failed")
        self.handed_back += len(entries)
        for leg in touched.values():
            self._to_loop(leg)  # it reads what follows; armed again by the sweep


def _level_kind(leg: CallMedia) -> int:
    """Which table measures the levels of `leg`'s payloads in the engine (0: none kept)."""
    if leg._level_payloads is None:
        return 0
    spec = leg.packet_levels.spec
    return 1 if spec is codecs.PCMU_SPEC else 2 if spec is codecs.PCMA_SPEC else 0


def _pure_relay(leg: CallMedia, engine: RelayEngine) -> CallMedia | None:
    """The listener `leg`'s packets would be relayed to by `media/relay.py` without looking at
    their contents, None when there is none (its checks that do not depend on the packet)."""
    if leg.srtp is not None or leg.buffered or leg._first or leg.capture is not None:
        return None
    if leg.closed or leg.room is None or leg.rtp.fast is None:
        return None
    targets = leg.forward_to
    if len(targets) != 1:
        return None
    other = targets[0]
    if not isinstance(other, CallMedia) or other.crelay is not engine:
        return None
    if other.relay_sink is None or other.spec is not leg.spec:
        return None
    if other.srtp is not None or not other.sending or other.capture is not None or other.closed:
        return None
    if leg.latch._latched is None:
        return None
    if (other.latch._latched or other.latch.expected) is None:
        return None
    ssrc = leg.receiver.ssrc
    if ssrc is None or other.timeline._ssrc != ssrc:
        return None
    return other


def _measure_payloads(kept: PacketLevels) -> None:
    kept._levels.extend(g711_levels(list(kept._payloads), kept.spec))
    kept._payloads.clear()


def _apply(leg: CallMedia, listener: CallMedia | None, changes: tuple[Any, ...]) -> None:
    """What the engine did since it was last asked, added to the legs' objects exactly as the
    Python path (`media/relay.py`) would have left them."""
    (
        packets,
        octets,
        max_seq,
        cycles,
        jitter,
        last_arrival,
        last_timestamp,
        d_sum,
        d_count,
        last_now,
        levels,
        truncated,
        out_seq,
        marker_pending,
        out_packets,
        out_octets,
        send_errors,
        last_stamp,
        last_stamp_at,
        sent,
    ) = changes
    if truncated:
        leg.rtp.truncated += truncated
    if levels is not None:  # kept by the engine until asked for: maybe from earlier packets
        kept = leg.packet_levels
        if kept._payloads:  # older than the engine's: measured first, to keep the order
            _measure_payloads(kept)
        per_ms = kept.spec.sample_rate / 1000
        add = kept.add_level
        for level, size in levels:  # measured by the engine as `dbov` would
            add(level, size / per_ms)
    if not packets:
        return
    receiver = leg.receiver
    leg.latch._last_seen = last_now
    leg.stats.packets_in += packets
    previous = leg.last_packet_at
    leg.last_packet_at = last_now if previous is None else max(previous, last_now)
    receiver._max_seq = max_seq
    receiver._cycles = cycles
    receiver._received += packets
    receiver._packets += packets
    receiver._octets += octets
    receiver._last_packet_at = last_now
    receiver._jitter = jitter
    receiver._d_sum += d_sum
    receiver._d_count += d_count
    receiver._last_arrival = last_arrival
    receiver._last_timestamp = last_timestamp
    if listener is None:  # pragma: no cover - forwarded packets always had a listener
        return
    timeline = listener.timeline
    timeline.last = last_stamp
    timeline.last_at = last_stamp_at
    sender = listener.sender
    sender._marker_pending = bool(marker_pending)
    sender._sequence = out_seq
    sender._timestamp = (last_stamp + listener.frame_ticks) & _U32
    sender._packets += out_packets
    sender._octets += out_octets
    listener.relay_send_errors += send_errors
    lstats = listener.stats
    lstats.packets_out += out_packets
    lstats.forwarded += out_packets
    if sent:
        listener._sent_since_report = True
