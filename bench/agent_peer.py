"""The agent side of bench/agent_call.py: ONE process holding N `rtc.Room` connections of the
official `livekit` SDK, one per phone call, each answering its call the way a voice agent does.

    ip netns exec NS .venv/bin/python bench/agent_peer.py --url ws://HOST_IP:PORT \\
        --rooms call_010000,call_010001 [--queue-ms 20] [--period-ms 500] [--limit 120]

API key and secret come from the environment (LIVEKIT_API_KEY, LIVEKIT_API_SECRET): the peer
makes each room's token itself (identity `agent-<i>`, room_join for that room only).

Run it inside the network namespace of tests/netns.py (libwebrtc ignores loopback). Per room:
connect (auto-subscribe on), publish a microphone track from an `rtc.AudioSource(48000, 1,
queue_size_ms=--queue-ms)`; all rooms are connected and published before it prints `ready`, so
the phone's INVITEs never wait for the SDK's own start. When the SIP participant's audio track
is subscribed (which is what answers the call) two tasks start for that call:

- listen: the track read through `rtc.AudioStream` (48 kHz mono, 10 ms frames). Each frame is
  stamped with CLOCK_MONOTONIC when the iterator hands it over; a tone burst's onset is the first
  sample above THRESHOLD after at least QUIET_NS without one, timed as if the frame were played
  from the moment it arrived: arrival + (offset in the frame) / 48 kHz. The samples from it to
  the last loud one give the burst's length;
- speak: 10 ms frames captured on the monotonic clock (deadline k * 10 ms from the start, never
  faster; a capture blocks while the source's queue is full; when more than LATE_S behind, the
  frames missed are skipped, counted). Every --period-ms a 1 kHz tone burst starts on a frame
  boundary, 20, 40 or 60 ms long in turn (its class: a burst matched to the wrong onset shows
  as a class mismatch); its capture time (CLOCK_MONOTONIC just before `capture_frame`), the
  source's `queued_duration` then and how late the capture was are recorded.

CLOCK_MONOTONIC is one clock for every network namespace, so the orchestrator compares these
times with the phone's directly.

stdin commands, one a line: `mark LABEL` (snapshot every room's WebRTC stats: jitter buffer,
concealment, packets lost, packets sent), `stop` (end: disconnect every room, print the result).
stdout: one JSON object a line, `{"event": "ready", ...}` once connected, `{"event": "result",
...}` at the end. Every wait is bounded; a watchdog ends the process (exit 2) after --limit s.
The process leaves with os._exit (WIRE.md s6: the Rust core may panic at interpreter exit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import threading
import time
from typing import Any

import numpy as np
from livekit import api, rtc

RATE = 48000
FRAME_MS = 10
FRAME = RATE * FRAME_MS // 1000
BURST_HZ = 1000.0
BURST_MS = 20  # a burst lasts 1, 2 or 3 times this, in turn: which one it is travels with it
CLASSES = 3
AMPLITUDE = 16000  # -6 dBFS
THRESHOLD = 4000  # an onset: the first sample beyond -18 dBFS ...
QUIET_NS = 200_000_000  # ... after at least 200 ms without one
CONNECT_PARALLEL = 4
LATE_S = 0.1  # a capture this late: the frames it missed are skipped (counted)


def burst_class(length_ns: int) -> int:
    """Which burst (0, 1, 2: 20, 40, 60 ms) a loud run of `length_ns` (first to last loud
    sample) was."""
    return min(CLASSES - 1, max(0, round(length_ns / (BURST_MS * 1_000_000)) - 1))


def burst(rate: int, ms: int) -> np.ndarray[Any, np.dtype[np.int16]]:
    """A cosine tone burst: full amplitude at its first sample, so the onset is sample 0."""
    t = np.arange(rate * ms // 1000) / rate
    wave: np.ndarray[Any, np.dtype[np.int16]] = np.round(
        AMPLITUDE * np.cos(2 * math.pi * BURST_HZ * t)
    ).astype(np.int16)
    return wave


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class Call:
    """One room: its connection, its microphone, and what it heard and said."""

    def __init__(self, idx: int, room_name: str, peer: Peer) -> None:
        self.idx = idx
        self.room_name = room_name
        self.peer = peer
        self.room = rtc.Room()
        self.source: rtc.AudioSource | None = None
        self.connect_ms = 0.0
        self.error = ""
        self.joined_at = 0  # the SIP participant seen (participant_connected), monotonic ns
        self.published_at = 0  # its audio track announced (track_published)
        self.subscribed_at = 0  # its audio track subscribed
        # [onset (monotonic ns, as if played from its frame's arrival), length (ns, counted in
        # samples from the onset to the last loud one: delivery jitter does not change it)]
        self.onsets: list[list[int]] = []
        # (capture time ns, queued ms before it, ms behind its schedule, class)
        self.bursts: list[tuple[int, float, float, int]] = []
        self.frames = 0
        self.first_frame_at = 0
        self.last_frame_at = 0
        self.frame_gaps = 0  # consecutive frames handed over > 50 ms apart
        self.late = 0  # captures more than LATE_S behind their schedule
        self.capture_errors = 0
        self.stats: dict[str, dict[str, float]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.room.on("participant_connected", self._on_participant)
        self.room.on("track_subscribed", self._on_track)
        self.room.on("track_published", self._on_published)

    def _on_participant(self, p: rtc.RemoteParticipant) -> None:
        if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP and not self.joined_at:
            self.joined_at = time.monotonic_ns()

    def _on_published(self, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP and not self.published_at:
            self.published_at = time.monotonic_ns()

    def _on_track(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
    ) -> None:
        if self.subscribed_at or track.kind != rtc.TrackKind.KIND_AUDIO:
            return
        if p.kind != rtc.ParticipantKind.PARTICIPANT_KIND_SIP:
            return
        self.subscribed_at = time.monotonic_ns()
        if not self.joined_at:
            self.joined_at = self.subscribed_at
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self.listen(track)))
        if not self.peer.speak_early:
            self.tasks.append(loop.create_task(self.speak()))

    async def connect(self, url: str, key: str, secret: str) -> None:
        tok = (
            api.AccessToken(key, secret)
            .with_identity(f"agent-{self.idx}")
            .with_grants(api.VideoGrants(room_join=True, room=self.room_name))
            .to_jwt()
        )
        began = time.monotonic()
        options = rtc.RoomOptions(auto_subscribe=True, connect_timeout=10)
        await asyncio.wait_for(self.room.connect(url, tok, options), 15)
        self.source = rtc.AudioSource(RATE, 1, queue_size_ms=self.peer.queue_ms)
        track = rtc.LocalAudioTrack.create_audio_track("agent-voice", self.source)
        publish = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await asyncio.wait_for(self.room.local_participant.publish_track(track, publish), 10)
        self.connect_ms = (time.monotonic() - began) * 1000
        if self.peer.speak_early:
            self.tasks.append(asyncio.get_running_loop().create_task(self.speak()))

    async def listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
        ns_per_sample = 1e9 / RATE
        quiet = round(QUIET_NS / ns_per_sample)
        position = 0  # samples of the stream before this frame
        onset_at = last_loud = -quiet
        try:
            async for event in stream:
                now = time.monotonic_ns()
                if self.last_frame_at and now - self.last_frame_at > 50_000_000:
                    self.frame_gaps += 1
                if not self.first_frame_at:
                    self.first_frame_at = now
                self.last_frame_at = now
                self.frames += 1
                frame = event.frame
                x = np.frombuffer(frame.data, dtype=np.int16)
                hits = np.flatnonzero((x > THRESHOLD) | (x < -THRESHOLD))
                if hits.size:
                    first = position + int(hits[0])
                    if first - last_loud >= quiet:
                        onset_at = first
                        self.onsets.append([now + int(hits[0] * ns_per_sample), 0])
                    last_loud = position + int(hits[-1])
                    if self.onsets:
                        self.onsets[-1][1] = int((last_loud - onset_at) * ns_per_sample)
                position += len(x)
                if self.peer.stopping:
                    break
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.aclose(), 3)

    async def speak(self) -> None:
        source = self.source
        assert source is not None
        peer = self.peer
        loop = asyncio.get_running_loop()
        period = max(1, peer.period_ms // FRAME_MS)
        start = loop.time()
        k = 0
        frames = peer.burst_frames[0]
        for _ in range(int(peer.limit * 1000 / FRAME_MS)):  # bounded by the watchdog's limit
            if peer.stopping:
                return
            due = start + k * FRAME_MS / 1000
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -LATE_S:
                # the frames missed are not captured, so the bursts stay on their grid
                self.late += 1
                k += int(-wait * 1000 / FRAME_MS)
                due = start + k * FRAME_MS / 1000
            phase = k % period
            k += 1
            if phase == 0:
                cls = len(self.bursts) % CLASSES
                frames = peer.burst_frames[cls]
                behind = max(0.0, loop.time() - due) * 1000
                queued = source.queued_duration * 1000
                self.bursts.append((time.monotonic_ns(), queued, behind, cls))
            frame = frames[phase] if phase < len(frames) else peer.silence
            try:
                await asyncio.wait_for(source.capture_frame(frame), 2)
            except Exception:
                self.capture_errors += 1

    async def snapshot(self, label: str) -> None:
        """The room's WebRTC counters now (cumulative), under `label`."""
        out: dict[str, float] = {"t_ns": float(time.monotonic_ns())}
        try:
            stats = await asyncio.wait_for(self.room.get_rtc_stats(), 3)
        except Exception:
            self.stats[label] = out
            return

        def add(key: str, value: float) -> None:
            out[key] = out.get(key, 0.0) + value

        seen: set[str] = set()
        # single peer connection: the same reports may be in both lists
        for s in [*stats.publisher_stats, *stats.subscriber_stats]:
            which = s.WhichOneof("stats") or ""
            if which == "inbound_rtp" and s.inbound_rtp.stream.kind == "audio":
                r, i = s.inbound_rtp.received, s.inbound_rtp.inbound
                if f"in/{s.inbound_rtp.rtc.id}" in seen:
                    continue
                seen.add(f"in/{s.inbound_rtp.rtc.id}")
                add("in_packets", r.packets_received)
                add("in_lost", r.packets_lost)
                add("jb_delay_s", i.jitter_buffer_delay)
                add("jb_emitted", i.jitter_buffer_emitted_count)
                add("samples", i.total_samples_received)
                add("concealed", i.concealed_samples)
                add("silent_concealed", i.silent_concealed_samples)
                add("concealment_events", i.concealment_events)
                add("removed_for_acceleration", i.removed_samples_for_acceleration)
                add("inserted_for_deceleration", i.inserted_samples_for_deceleration)
                out["jb_target_s"] = i.jitter_buffer_target_delay
            elif which == "outbound_rtp" and s.outbound_rtp.stream.kind == "audio":
                if f"out/{s.outbound_rtp.rtc.id}" in seen:
                    continue
                seen.add(f"out/{s.outbound_rtp.rtc.id}")
                add("out_packets", s.outbound_rtp.sent.packets_sent)
        self.stats[label] = out

    def result(self) -> dict[str, object]:
        return {
            "idx": self.idx,
            "room": self.room_name,
            "error": self.error,
            "connect_ms": round(self.connect_ms, 1),
            "joined_at": self.joined_at,
            "published_at": self.published_at,
            "subscribed_at": self.subscribed_at,
            "onsets": self.onsets,
            "bursts": [[t, round(q, 2), round(b, 2), c] for t, q, b, c in self.bursts],
            "frames": self.frames,
            "first_frame_at": self.first_frame_at,
            "last_frame_at": self.last_frame_at,
            "frame_gaps": self.frame_gaps,
            "late": self.late,
            "capture_errors": self.capture_errors,
            "stats": self.stats,
        }


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.url = args.url
        self.queue_ms = args.queue_ms
        self.period_ms = args.period_ms
        self.limit = args.limit
        self.speak_early = args.speak_from == "connect"
        self.stopping = False
        self.stop = asyncio.Event()
        self.commands: asyncio.Queue[str] = asyncio.Queue()
        self.burst_frames: list[list[rtc.AudioFrame]] = []
        for cls in range(CLASSES):
            wave = burst(RATE, (cls + 1) * BURST_MS)
            self.burst_frames.append(
                [
                    rtc.AudioFrame(wave[i : i + FRAME].tobytes(), RATE, 1, FRAME)
                    for i in range(0, len(wave), FRAME)
                ]
            )
        self.silence = rtc.AudioFrame(bytes(2 * FRAME), RATE, 1, FRAME)
        self.calls = [Call(i, name, self) for i, name in enumerate(args.rooms.split(","))]

    def read_stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        """A thread: stdin lines to the loop (EOF means stop)."""
        for line in sys.stdin:
            loop.call_soon_threadsafe(self.commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(self.commands.put_nowait, "stop")

    async def run(self) -> int:
        key = os.environ.get("LIVEKIT_API_KEY", "")
        secret = os.environ.get("LIVEKIT_API_SECRET", "")
        gate = asyncio.Semaphore(CONNECT_PARALLEL)
        began = time.monotonic()

        async def connect(call: Call) -> None:
            async with gate:
                try:
                    await call.connect(self.url, key, secret)
                except Exception as exc:
                    call.error = f"connect: {type(exc).__name__}: {exc}"

        await asyncio.gather(*(connect(c) for c in self.calls))
        emit(
            "ready",
            pid=os.getpid(),
            connected=sum(1 for c in self.calls if not c.error),
            seconds=round(time.monotonic() - began, 3),
            errors=[c.error for c in self.calls if c.error][:5],
        )
        loop = asyncio.get_running_loop()
        threading.Thread(target=self.read_stdin, args=(loop,), daemon=True).start()
        deadline = loop.time() + self.limit
        for _ in range(10_000):  # commands: a handful per step
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                command = await asyncio.wait_for(self.commands.get(), left)
            except TimeoutError:
                break
            verb, _, label = command.partition(" ")
            if verb == "mark":
                await asyncio.gather(*(c.snapshot(label) for c in self.calls if not c.error))
            elif verb == "stop":
                break
        await self.finish()
        return 0

    async def finish(self) -> None:
        self.stopping = True
        tasks = [t for c in self.calls for t in c.tasks]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=3)
            for task in pending:
                task.cancel()
        emit("result", pid=os.getpid(), calls=[c.result() for c in self.calls])

        async def leave(call: Call) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call.room.disconnect(), 5)

        await asyncio.gather(*(leave(c) for c in self.calls))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", required=True, help="ws://HOST:PORT of the server")
    parser.add_argument("--rooms", required=True, help="room names, comma-separated")
    parser.add_argument("--queue-ms", type=int, default=20, help="AudioSource queue (20)")
    parser.add_argument("--period-ms", type=int, default=500, help="one burst every (500)")
    parser.add_argument(
        "--speak-from",
        choices=("answer", "connect"),
        default="answer",
        help="capture from the caller's track subscribed (answer) or from connect",
    )
    parser.add_argument("--limit", type=float, default=120.0, help="watchdog, seconds (120)")
    args = parser.parse_args()

    def watchdog() -> None:
        emit("error", error=f"still running after {args.limit:.0f} s")
        os._exit(2)

    timer = threading.Timer(args.limit + 15, watchdog)
    timer.daemon = True
    timer.start()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    code = 1
    try:
        code = loop.run_until_complete(Peer(args).run())
    except BaseException as exc:
        emit("error", error=f"{type(exc).__name__}: {exc}")
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
