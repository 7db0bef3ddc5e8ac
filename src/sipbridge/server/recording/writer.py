"""Recordings' files: frames from the room's clock, encoded and written off the event loop.

The room's mix hands `RecorderLeg` one 20 ms frame per tick on the event loop; the leg only
queues it for the encoder, a child process shared by every recording (`encoder.py`: PyAV, Opus
in Ogg, AAC in MP4, MP3, PCM in WAV), so neither encoding nor a slow disk holds the loop, or
its GIL. The frames of a tick go to it in one write on a non-blocking pipe.

What a recording has queued (sent, not yet encoded and written) is bounded (`MAX_QUEUED_S` of
audio, by the encoder's `WRITTEN` reports): past it the recording fails with the reason instead
of growing without end, and its file is closed as far as it was written. `finish()` has the
encoder write what is queued, flush and close, so the file is playable whenever it ends -
StopEgress, the room closing, shutdown. If the encoder process dies, every recording it had
fails with the reason, and the next one starts a new process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sipbridge.media import codecs, mixer
from sipbridge.media.players import FRAME_MS, Pcm
from sipbridge.media.room_audio import AudioLeg
from sipbridge.rooms.egress import FileFormat
from sipbridge.server.recording import encoder as wire

log = logging.getLogger(__name__)

RATE = codecs.OPUS_SPEC.sample_rate  # 48 kHz: the mix is made at this rate
FRAME = RATE * FRAME_MS // 1000
MAX_QUEUED_S = 10.0
FRAME_S = FRAME_MS / 1000
MAX_CATCH_UP = 500  # frames of silence for skipped ticks, at most (ten seconds)
BATCH_FRAMES = 10  # 200 ms of audio per message to the encoder
COMPACT_AT = 1 << 20  # bytes sent before the queue to the encoder is compacted
READ_SIZE = 1 << 16
CLOSE_WAIT_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterResult:
    samples: int  # written at RATE
    size: int  # bytes on disk
    error: str = ""


class EncoderProcess:
    """The encoder child and the loop's side of its pipes (non-blocking, no task)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.writers: dict[int, FileWriter] = {}
        self.next_number = 1
        self.started = 0  # processes started so far
        self._out = bytearray()
        self._out_at = 0  # bytes of `_out` already written to the process
        self._in = bytearray()
        self._flush_soon = False
        self._writing = False
        self._exit = asyncio.Event()

    def ensure(self) -> None:
        """Start the process unless it runs (at the service's start, so that a recording's
        file opens within milliseconds of its request)."""
        if self.proc is not None:
            return
        self.loop = asyncio.get_running_loop()
        self.proc = subprocess.Popen(  # our own script, by its path
            [sys.executable, "-u", wire.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        self.started += 1
        self._exit = asyncio.Event()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        os.set_blocking(self.proc.stdin.fileno(), False)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.loop.add_reader(self.proc.stdout.fileno(), self._readable)

    def register(self, writer: FileWriter) -> int:
        self.ensure()
        number = self.next_number
        self.next_number += 1
        self.writers[number] = writer
        return number

    def send(self, kind: int, number: int, payload: bytes = b"") -> None:
        """Queue a message; everything queued in one tick leaves in one write."""
        self._out += wire.HEADER.pack(kind, number, len(payload))
        self._out += payload
        if not self._flush_soon and not self._writing and self.loop is not None:
            self._flush_soon = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        if self.proc is None or self.proc.stdin is None or len(self._out) <= self._out_at:
            return
        fd = self.proc.stdin.fileno()
        try:
            with memoryview(self._out) as view:
                sent = os.write(fd, view[self._out_at :])
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # the process is gone: its end is read from stdout
            log.warning("recording encoder: writing to it failed: %s", exc)
            self._out.clear()
            self._out_at = 0
            return
        # What was sent is dropped by moving an offset, the buffer compacted only once half of
        # it is sent: deleting the sent head at each write moved all the rest each time, and
        # with the encoder behind (megabytes queued) that stalled the loop (p50 +700 ms).
        self._out_at += sent
        if self._out_at >= len(self._out):
            self._out.clear()
            self._out_at = 0
        elif self._out_at > COMPACT_AT and self._out_at * 2 > len(self._out):
            del self._out[: self._out_at]
            self._out_at = 0
        assert self.loop is not None
        if self._out and not self._writing:  # the pipe is full: go on when it drains
            self._writing = True
            self.loop.add_writer(fd, self._drain)
        elif not self._out and self._writing:
            self._writing = False
            self.loop.remove_writer(fd)

    def _drain(self) -> None:
        self._flush()

    def _readable(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            data = os.read(self.proc.stdout.fileno(), READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            self._exited()
            return
        self._in += data
        at = 0
        while len(self._in) - at >= wire.HEADER.size:
            kind, number, size = wire.HEADER.unpack_from(self._in, at)
            if len(self._in) - at - wire.HEADER.size < size:
                break
            payload = bytes(self._in[at + wire.HEADER.size : at + wire.HEADER.size + size])
            at += wire.HEADER.size + size
            writer = self.writers.get(number)
            if writer is None:
                continue
            if kind == wire.OPENED:
                writer.on_opened()
            elif kind == wire.WRITTEN:
                writer.written = wire.SAMPLES.unpack(payload)[0]
            elif kind == wire.DONE:
                del self.writers[number]
                doc = json.loads(payload)
                writer.ended(
                    WriterResult(samples=doc["samples"], size=doc["size"], error=doc["error"])
                )
        del self._in[:at]

    def _exited(self) -> None:
        """The process ended (killed, crashed, or its input closed): each recording it had
        fails with the reason; the next recording starts a new process."""
        proc, self.proc = self.proc, None
        assert proc is not None and proc.stdout is not None and self.loop is not None
        self.loop.remove_reader(proc.stdout.fileno())
        if self._writing and proc.stdin is not None:
            self.loop.remove_writer(proc.stdin.fileno())
        self._writing = False
        self._out.clear()
        self._out_at = 0
        self._in.clear()
        code = proc.wait()
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        writers, self.writers = self.writers, {}
        if writers:
            log.error("recording encoder exited (%s) with %d recordings", code, len(writers))
        for writer in writers.values():
            reason = f"the recording encoder process exited (code {code})"
            writer.ended(WriterResult(samples=writer.written, size=0, error=reason))
        self._exit.set()

    async def close(self) -> None:
        """End the process once its recordings are done: what is queued sent, its input
        closed, its exit waited for (bounded), else killed."""
        proc = self.proc
        if proc is None or proc.stdin is None:
            return
        self._flush()
        if self._writing and self.loop is not None:
            self.loop.remove_writer(proc.stdin.fileno())
            self._writing = False
        with contextlib.suppress(OSError):
            os.set_blocking(proc.stdin.fileno(), True)  # the last bytes, then end of input
            proc.stdin.write(bytes(self._out[self._out_at :]))
            self._out.clear()
            self._out_at = 0
            proc.stdin.close()
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self._exit.wait()
        except TimeoutError:
            proc.kill()
            self._exited()


class FileWriter:
    """A recording's file, written by the encoder process. Create and use it on the loop;
    `on_opened` and `done` are reported there."""

    def __init__(
        self,
        path: str,
        fmt: FileFormat,
        *,
        on_opened: Callable[[], None],
        max_queued_s: float = MAX_QUEUED_S,
        channels: int = 1,
        encoder: EncoderProcess,
    ) -> None:
        self.path = path
        self.format = fmt
        self.channels = channels
        self.on_opened = on_opened
        self.max_samples = int(max_queued_s * RATE)
        self.encoder = encoder
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[WriterResult] = self.loop.create_future()
        self.frames = 0  # pushed so far (the recording's length as the loop sees it)
        self.written = 0  # samples the encoder reports encoded and written
        self.number = 0  # the encoder's number for it, once started
        self._early: list[bytes] = []  # pushed before start()
        self._batch = bytearray()  # frames not yet sent, all at `_batch_rate`
        self._batch_rate = RATE
        self._batched = 0
        self._closing = False
        self._error = ""

    def start(self) -> None:
        self.number = self.encoder.register(self)
        spec = {
            "path": self.path,
            "container": self.format.container,
            "codec": self.format.codec,
            "channels": self.channels,
            "rate": RATE,
        }
        self.encoder.send(wire.OPEN, self.number, json.dumps(spec).encode())
        for early in self._early:  # what was pushed before
            self.encoder.send(wire.PCM, self.number, early)
        self._early.clear()
        if self._closing:
            self.encoder.send(wire.CLOSE, self.number)

    def push(self, pcm: Pcm | None, rate: int = RATE) -> None:
        """One 20 ms frame at `rate` (None: silence; stereo: interleaved left, right), in
        order. The file is at RATE: the encoder converts other rates (a room of phones is
        mixed at their 8 kHz, the loop resampling nothing)."""
        if self._closing:
            return
        if (self.frames * FRAME - self.written) >= self.max_samples:
            self._error = f"the disk is too slow: over {self.max_samples * 1000 // RATE} ms queued"
            self.finish()
            # Failed now, not once the encoder gets to it (a stuck disk may hold it for ever):
            # the file is closed by it later, as far as it got.
            self.ended(WriterResult(samples=self.written, size=0, error=self._error))
            return
        if pcm is None:
            pcm = _silence(rate * FRAME_MS // 1000 * self.channels)
        if not self.number:  # not started: kept as it came, sent at the start
            self._early.append(wire.RATE_PREFIX.pack(rate) + pcm.tobytes())
            self.frames += 1
            return
        if rate != self._batch_rate:
            self._send_batch()
            self._batch_rate = rate
        self._batch += pcm.tobytes()
        self._batched += 1
        self.frames += 1
        if self._batched >= BATCH_FRAMES:
            self._send_batch()

    def _send_batch(self) -> None:
        """The frames pushed since the last batch, in one message (once started): the
        encoder's work per message is in Python, per batch not per frame."""
        if self.number and self._batch:
            payload = wire.RATE_PREFIX.pack(self._batch_rate) + bytes(self._batch)
            self.encoder.send(wire.PCM, self.number, payload)
            self._batch.clear()
            self._batched = 0

    def finish(self) -> None:
        """Write what is queued, then close the file."""
        if self._closing:
            return
        self._closing = True
        if self.number:
            self._send_batch()
            self.encoder.send(wire.CLOSE, self.number)

    @property
    def closing(self) -> bool:
        return self._closing

    def ended(self, result: WriterResult) -> None:
        """The encoder closed the file (on the loop)."""
        self._closing = True
        if self._error and not result.error:
            result = WriterResult(samples=result.samples, size=result.size, error=self._error)
        if not self.done.done():
            self.done.set_result(result)


_SILENCE: dict[int, Pcm] = {}


def _silence(samples: int) -> Pcm:
    found = _SILENCE.get(samples)
    if found is None:
        found = _SILENCE[samples] = np.zeros(samples, dtype=np.int16)
    return found


# What a recorder mixes at: the highest rate of what it hears (PCMU/PCMA 8 kHz, G.722 16 kHz,
# Opus 48 kHz), so a room of phones is mixed as it is, with no resampling on the loop.
MIX_SPECS = {
    rate: codecs.CodecSpec(name="L16", sample_rate=rate, rtp_clock=rate)
    for rate in (8000, 16000, 48000)
}


class RecorderLeg(AudioLeg):
    """A room member that only listens: to every source (a room recording) or to one (`hears`,
    a track recording). It never forwards, so the room mixes for it on every tick, silence
    included, and the file's length is the recording's wall-clock length. It mixes at the
    highest rate of the sources it hears (`local_frame`, asked first on each tick)."""

    def __init__(self, writer: FileWriter, hears: AudioLeg | None = None) -> None:
        super().__init__(MIX_SPECS[48000])
        self.writer = writer
        self.receiving = False  # it gives the room no audio
        self.hears = hears
        self._last_tick: float | None = None
        self.filled = 0  # silent frames pushed for skipped ticks

    def catch_up(self, now: float) -> None:
        """Silence for the ticks the shared clock skipped (a late event loop): the file keeps
        the recording's wall-clock length."""
        last, self._last_tick = self._last_tick, now
        if last is not None:
            missed = min(round((now - last) / FRAME_S) - 1, MAX_CATCH_UP)
            for _ in range(missed):
                self.writer.push(None, self.spec.sample_rate)
            self.filled += max(0, missed)

    def local_frame(self, now: float) -> tuple[Pcm | None, bool]:
        """No audio of its own; the rate it mixes at this tick, chosen from its sources."""
        room = self.room
        if room is not None:
            hears = self.hears
            if hears is not None:
                rate = hears.spec.sample_rate
            else:
                rate = max((s.spec.sample_rate for s in room.sources), default=0)
            if rate and rate != self.spec.sample_rate:
                self.spec = MIX_SPECS.get(rate) or MIX_SPECS[48000]
        return None, False

    def send_pcm(self, pcm: Pcm | None, now: float) -> None:
        self.catch_up(now)
        self.writer.push(pcm, self.spec.sample_rate)


class StereoRecorderLeg(RecorderLeg):
    """A room recording in two channels: `channel_of(source)` (0 left, 1 right) says where each
    source goes; each channel is the mix of its sources. The room hands it the sources apart
    (`takes_sources`), each decoded once for every mix of the room, as for a mono one."""

    def __init__(self, writer: FileWriter, channel_of: Callable[[AudioLeg], int]) -> None:
        super().__init__(writer)
        # set here, not in the class: a compiled base keeps its own default per instance
        self.takes_sources = True
        self.channel_of = channel_of

    def send_sources(self, frames: list[tuple[AudioLeg, Pcm]], now: float) -> None:
        self.catch_up(now)
        rate = self.spec.sample_rate
        if not frames:
            self.writer.push(None, rate)
            return
        sides: tuple[list[Pcm], list[Pcm]] = ([], [])
        for source, pcm in frames:
            sides[self.channel_of(source)].append(pcm)
        stereo = np.zeros((len(frames[0][1]), 2), dtype=np.int16)
        for channel, parts in enumerate(sides):
            if parts:
                stereo[:, channel] = mixer.mix(parts)
        self.writer.push(stereo.reshape(-1), rate)
