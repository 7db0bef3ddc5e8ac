"""The driver of the RTP legs: sockets and the loop's clock around `media.leg.RtpLeg`, and the
one shared 20 ms clock of every mixing room.

The protocol and media logic is sans-IO in `media/`: the leg (`media/leg.py`), the room's
forward-or-mix decision and mix (`media/room_audio.py`), the stream's clock
(`media/timeline.py`), players (`media/players.py`). Here a `CallMedia` binds its ports, feeds
each datagram to `receive` with the loop's time, and sends what the legs return; `MediaClock`
calls each mixing room's `tick(now)` every 20 ms. The names of the media classes stay
importable from this module.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sipbridge import sdp
from sipbridge.media import codecs
from sipbridge.media.leg import (
    COMFORT_NOISE_PT,
    DTMF_GAP_MS,
    DTMF_PAUSE_MS,
    DTMF_TONE_MS,
    DtmfReceived,
    FirstPacket,
    MediaStats,
    MediaTimedOut,
    RtpLeg,
    StreamConfig,
)
from sipbridge.media.players import FRAME_MS, Pcm, PcmFifo, PcmPlayer, Player
from sipbridge.media.relay import relay_datagram
from sipbridge.media.room_audio import G711, AudioLeg, RoomAudio, can_forward
from sipbridge.media.rtp import RtpPacket
from sipbridge.media.srtp import SrtpContext, SrtpKeys
from sipbridge.media.timeline import TIMESTAMP_MOD, Timeline
from sipbridge.server.media import silence
from sipbridge.server.media.ports import MediaSocket, PortPool, SendBatch

try:
    from sipbridge import _crelay  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - not built: the loop makes every frame
    _crelay = None
# A leg's silence made by the tick's sender (`silence.py`), if the engine built has it.
SilentStream: Any = getattr(_crelay, "SilentStream", None)

if TYPE_CHECKING:
    from sipbridge.server.media.crelay import RelayEngine

__all__ = [
    "COMFORT_NOISE_PT",
    "DTMF_GAP_MS",
    "DTMF_PAUSE_MS",
    "DTMF_TONE_MS",
    "FRAME_MS",
    "FRAME_S",
    "G711",
    "TIMESTAMP_MOD",
    "AudioLeg",
    "CallMedia",
    "MediaClock",
    "MediaStats",
    "Pcm",
    "PcmFifo",
    "PcmPlayer",
    "Player",
    "RoomAudio",
    "Timeline",
    "can_forward",
    "stream_config",
]

log = logging.getLogger(__name__)

FRAME_S = FRAME_MS / 1000
TICKS_PER_S = 1000 // FRAME_MS
CATCH_UP = 10  # ticks the clock runs back to back when late (200 ms); later, it skips them


def stream_config(answer: sdp.AudioAnswer) -> StreamConfig:
    """The negotiated SDP answer in the RTP terms of `media/`."""
    event = answer.telephone_event
    return StreamConfig(
        audio_pt=answer.audio.payload_type,
        event_pt=event.payload_type if event is not None else None,
        event_clock=event.codec.clock_rate if event is not None else 8000,
        remote=(answer.remote_address, answer.remote_port),
        remote_rtcp=(
            (answer.remote_rtcp_address, answer.remote_rtcp_port)
            if answer.remote_rtcp_port
            else None
        ),
        rtcp_mux=answer.rtcp_mux,
        sends=answer.direction.sends,
        receives=answer.direction.receives,
    )


class CallMedia(RtpLeg):
    """The RTP side of one call: an `RtpLeg` on its own port(s), with the call's SDP state."""

    _time: Callable[[], float] = staticmethod(lambda: 0.0)  # the loop's clock, once started

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
        super().__init__(spec, stream_config(answer), srtp=srtp)
        self.pool = pool
        self.on_dtmf = on_dtmf
        self.on_first_packet = on_first_packet
        self.on_timeout: Callable[[], None] | None = None
        self.rtp: MediaSocket
        self.rtcp: MediaSocket | None
        self.rtp, self.rtcp = pool.open(
            self._receive_at, None if answer.rtcp_mux else self._on_rtcp
        )
        self.port = self.rtp.port
        self.rtp_sink = self.rtp.send  # RTP out as it is made; RTCP through `transmit`
        # The relay's fast path (`media/relay.py`): datagrams of this leg forwarded in place
        # when it is a pure relay, and this leg's socket sending what a pure relay forwards.
        self.rtp.fast = functools.partial(relay_datagram, self)
        self.relay_sink = self.rtp.sock.sendto  # its errors counted by the fast path
        # Told of every RTP packet in and out when the call's RTP is captured (its SIP trace).
        self.capture: Callable[[bytes, bool, tuple[str, int]], None] | None = None
        self.closed = False
        # The compiled relay (`crelay.py`) reading the RTP socket instead of the loop, if any.
        self.crelay: RelayEngine | None = None
        self.crelay_slot: int | None = None
        # the SDP session and SRTP keys, kept for re-INVITEs
        self.session_id = 0
        self.session_version = 0
        self.keys: SrtpKeys | None = None
        self.remote_keys: SrtpKeys | None = None
        # when we made the offer (late offer): what we offered, for the answer in the ACK
        self.offered_codecs: tuple[sdp.Codec, ...] = ()
        self.offered_keys: list[SrtpKeys] = []
        # Its silence made by the tick's sender (`send_pcm`): the stream while armed, the
        # frames and failed sends of it already counted here, the tick it was queued for.
        self.silent: Any = None
        self._silent_seen = 0
        self._silent_errors = 0
        self._silent_at = -1.0

    def update(self, answer: sdp.AudioAnswer) -> None:
        """Apply a (new) negotiated answer: peer address, payload types, direction."""
        self.rerouted()  # the engine's (and the sender's) copy of the stream is stale from here
        self.configure(stream_config(answer), self._now())

    def change_codec(self, spec: codecs.CodecSpec) -> None:
        self.rerouted()
        super().change_codec(spec)

    def start(
        self, loop: asyncio.AbstractEventLoop, now: float, engine: RelayEngine | None = None
    ) -> None:
        """Start reading the sockets (RTP through `engine` when given); silence counts from
        `now`."""
        self._time = loop.time
        self.begin(now)
        self.rtp.start(loop)  # until the engine arms it
        if engine is not None:
            try:
                engine.adopt(self)
            except OSError:
                log.exception("the relay engine cannot take the leg: the loop reads it")
        if self.rtcp is not None:
            self.rtcp.start(loop)

    # -- the compiled relay's hooks (`crelay.py`) -----------------------------------------

    def rerouted(self) -> None:
        if self.rtp.stamped != self.buffered:  # its packets feed a jitter buffer: true arrivals
            self.rtp.stamp(self.buffered)
        if self.silent is not None:
            self.silent_off()
        if self.crelay is not None:
            self.crelay.rerouted(self)

    def sync(self, *, levels: bool = False) -> None:
        if self.silent is not None:
            self._silent_sync()
        if self.crelay is not None:
            self.crelay.sync(self, levels=levels)

    # -- silence made by the tick's sender (`_crelay.c` SilentStream) ----------------------

    def send_pcm(self, pcm: Pcm | None, now: float) -> None:
        """One mixed frame (None: silence) on the clock. Silence in a tick of the clock with a
        sender is made there, from the stream's state handed over once (`silent`): the same
        bytes `RtpLeg.send_pcm` makes, without the leg's objects (issue 18: 2 us of the loop
        a frame; in a room of callers who send nothing, every frame). Anything else the leg
        sends, or reads of its stream, takes the state back first (`silent_off`, `sync`)."""
        if pcm is None:
            batch = self.rtp.batch
            queue = batch.silent
            if queue is not None and now == batch.at and self._silent_at != now:
                stream = self.silent
                if stream is None:
                    stream = self._silent_on()
                if stream is not None:
                    queue.append(stream)
                    batch.silent_legs.append(self)
                    self._silent_at = now
                    return
        if self.silent is not None:
            self.silent_off()
        super().send_pcm(pcm, now)

    def _silent_on(self) -> Any:
        return silence.arm(self, SilentStream)

    def _silent_sync(self) -> None:
        silence.sync(self)

    def silent_off(self) -> None:
        """The loop makes this leg's frames again, from the stream's state (`silence.disarm`)."""
        silence.disarm(self)

    def silent_by_loop(self, at: float) -> None:
        """The sender could not take the tick: this leg's frame of it is made here."""
        self._silent_at = -1.0
        silence.disarm(self)
        RtpLeg.send_pcm(self, None, at)

    # `get_timer` reads the counters without a sync: the engine only moves `last_packet_at` on,
    # so a deadline from stale counters is early, never late, and `handle_timer` syncs first.

    def forward(self, packet: RtpPacket, source: Any, now: float) -> None:
        if self.silent is not None:
            self.silent_off()
        super().forward(packet, source, now)

    def send_dtmf(self, digits: str) -> None:
        if self.silent is not None:
            self.silent_off()  # (the digits' packets continue the stream from its state)
        super().send_dtmf(digits)

    def handle_timer(self, now: float, wallclock: float | None = None) -> None:
        if self.silent is not None:
            self._silent_sync()  # the RTCP report reads the stream
        if self.crelay is not None:
            self.crelay.sync(self, levels=False)  # the media timeout and RTCP report read them
        super().handle_timer(now, wallclock)
        self.transmit()
        if self._events:
            self._dispatch()

    def deliver(self, data: bytes, source: tuple[str, int], now: float) -> None:
        """A datagram the relay engine read at `now` and handed back: the Python paths."""
        rtp = self.rtp
        fast = rtp.fast
        if fast is not None:
            size = len(data)
            rtp._buffer[:size] = data
            if fast(rtp._buffer, rtp._whole[:size], source, now):
                return
        self._receive_at(data, source, now)

    def _now(self) -> float:
        return self._time()

    # -- the socket side: datagrams in, datagrams out -------------------------------------

    def capture_rtp(self, capture: Callable[[bytes, bool, tuple[str, int]], None]) -> None:
        """Tell `capture` of every RTP packet from now on: (packet, outgoing, peer address)."""
        self.rerouted()
        self.capture = capture
        send = self.rtp.send
        self.rtp.fast = None  # every packet through `_receive_at`, which tells `capture`
        self.relay_sink = None

        def sink(data: bytes, destination: tuple[str, int]) -> None:
            capture(data, True, destination)
            send(data, destination)

        self.rtp_sink = sink

    def _receive_at(self, data: bytes, source: tuple[str, int], now: float) -> None:
        if self.capture is not None:
            self.capture(data, False, source)
        latched = self.latch._latched
        self.receive(data, source, now)
        if self.latch._latched != latched:
            if self.silent is not None:
                self.silent_off()  # its silence goes to the new address from the next tick
            if self.crelay is not None:
                self.crelay.latched(self)
        # Packets it made for the room's listeners left through their `rtp_sink`s; a datagram
        # in makes nothing for our own outbox (RTCP leaves on `handle_timer`). Its events:
        if self._events:
            self._dispatch()

    def _on_rtcp(self, data: bytes, source: tuple[str, int], now: float) -> None:
        self.receive_rtcp(data, source, now)

    def transmit(self) -> None:
        """Send what the leg left in its outbox (RTCP: its RTP leaves through `rtp_sink`)."""
        if not self._outbox:
            return
        rtp, rtcp = self.rtp, self.rtcp
        for data, destination, control in self.datagrams_to_send(0.0):
            (rtcp if control and rtcp is not None else rtp).send(data, destination)

    def report(self, now: float, wallclock: float) -> None:
        super().report(now, wallclock)
        self.transmit()

    def _dispatch(self) -> None:
        while (event := self.next_event()) is not None:
            if isinstance(event, DtmfReceived):
                if self.on_dtmf is not None:
                    self.on_dtmf(event.digit)
            elif isinstance(event, FirstPacket):
                if self.on_first_packet is not None:
                    callback, self.on_first_packet = self.on_first_packet, None
                    callback()
            elif isinstance(event, MediaTimedOut) and self.on_timeout is not None:
                callback, self.on_timeout = self.on_timeout, None
                callback()

    # -- end ------------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.silent_off()  # (its counters in; a frame of the tick that runs is sent first)
        self.closed = True
        super().close()
        if self.crelay is not None:
            self.crelay.release(self)  # its counters in, its socket out, before it closes
        self.rtp.fast = None
        self.relay_sink = None
        self.rtp.close()
        if self.rtcp is not None:
            self.rtcp.close()
        self.pool.release(self.port)
        self.on_dtmf = None
        self.on_first_packet = None
        self.on_timeout = None
        self.capture = None


class MediaClock:
    """One 20 ms clock for every mixing room: ticks on a fixed schedule, late ticks caught up.

    A tick that runs up to CATCH_UP ticks late (the loop held up: GC, a heavy request, CPU
    contention) first reads what the mixing legs' sockets hold, then runs the ticks it missed
    back to back, each at its own scheduled time: the frames go out late, as a burst the
    phones' jitter buffers absorb, but none is cut. Later than that (a flood, a long stall) the
    missed ticks are skipped (`skipped`): a burst that long helps no one.

    While no room mixes (every leg relayed, or none), the clock does not wake every 20 ms: it
    passes the ticks up to the next one of the once-a-second work (`on_second`) without running
    them (counted in `idle`), and a room that starts mixing brings it back to the next tick of
    the grid. At 50 relayed calls the 50 wake-ups a second were half of the event loop's CPU
    (0.75-1.0% of a core down to 0.4-0.5%; issue 18)."""

    def __init__(self) -> None:
        self.rooms: set[RoomAudio] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0
        self._idle = 0  # ticks passed without running them before the one `_handle` runs
        self.ticks = 0
        self.skipped = 0
        self.caught_up = 0
        self.idle = 0
        self.on_second: Callable[[float], None] | None = None
        # Where the rooms' sends of one tick are collected and made in one call (`SendBatch`):
        # the service's port pool's, so that its legs' sockets collect into it.
        self.batch = SendBatch()

    def add(self, room: RoomAudio) -> None:
        self.rooms.add(room)
        if self._handle is not None and self._idle:
            self._wake()
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

    def _wake(self) -> None:
        """A room mixes while the clock passes idle ticks: the next tick of the grid runs (the
        ticks gone by are passed there, in the timer's callback, not inside `add`).

        The timer is moved only when that is earlier than where it is. Every join to a mixing
        room comes here again until the tick has run, and a timer cancelled and set again in
        the past goes to the back of the loop's queue each time: a burst of calls set up one a
        turn (`InboundCalls.invite`) kept it there for the whole burst, and every mixing room
        went silent for it (200-400 ms of a flood; issue 17's flood test, in CI)."""
        assert self._handle is not None
        loop = asyncio.get_running_loop()
        now = loop.time()
        passed = int((now - self._next) / FRAME_S) + 1 if now >= self._next else 0
        if passed >= self._idle:
            return  # it already runs at the next tick of the grid, or before it
        self._handle.cancel()
        self._idle = passed
        self._handle = loop.call_at(self._next + passed * FRAME_S, self._tick)

    def _pass(self, count: int, now: float) -> None:
        """`count` ticks of the grid go by without running (nothing mixed in them)."""
        if count <= 0:
            return
        before = self.ticks
        self.ticks += count
        self.idle += count
        self._next += count * FRAME_S
        if self.on_second is not None and self.ticks // TICKS_PER_S != before // TICKS_PER_S:
            self.on_second(now)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        try:
            self._pass(self._idle, now)
            self._idle = 0
            behind = int((now - self._next) / FRAME_S)  # ticks due after this one
            if 0 < behind <= CATCH_UP and self.rooms:
                self.read_sources()
                for _ in range(behind):
                    self.caught_up += 1
                    self.advance(self._next)
            self.advance(now)
        except Exception:
            # The clock must outlive any fault of a tick's sends or of a room's once-a-second
            # work: every room on it would fall silent (logged; the next tick is scheduled).
            log.exception("media clock tick failed")
            self._idle = 0
            self._next = max(self._next, now) + FRAME_S
        if not self.rooms:  # nothing to mix: wake for the next once-a-second tick only
            self._idle = TICKS_PER_S - 1 - self.ticks % TICKS_PER_S
        self._handle = loop.call_at(self._next + self._idle * FRAME_S, self._tick)

    def read_sources(self) -> None:
        """The mixing legs' sockets read, so that their packets are in the jitter buffers before
        the ticks run, whatever order the loop runs timers and I/O in (uvloop: timers first)."""
        for room in list(self.rooms):
            for source in list(room.sources):
                if isinstance(source, CallMedia):
                    source.rtp.drain()

    def advance(self, now: float) -> None:
        """The tick due at `self._next`, run at `now`; the next is scheduled on the grid."""
        self.ticks += 1
        # Rooms get the scheduled time, not the (later) time the loop ran us: frames on the
        # clock are exactly 20 ms apart in RTP time whatever the loop's lateness.
        scheduled = self._next
        batch = self.batch
        batch.begin(scheduled)
        try:
            for room in list(self.rooms):
                try:
                    room.tick(scheduled)
                except Exception:
                    # One room's fault must not silence the others (counted, logged once per
                    # tick).
                    log.exception("media tick failed in room %s", room.name)
                    self.rooms.discard(room)
        finally:
            batch.flush()
        if self.on_second is not None and self.ticks % TICKS_PER_S == 0:
            self.on_second(now)
        self._next += FRAME_S
        if self._next < now:
            missed = int((now - self._next) / FRAME_S) + 1
            self.skipped += missed
            self._next += missed * FRAME_S

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._idle = 0
