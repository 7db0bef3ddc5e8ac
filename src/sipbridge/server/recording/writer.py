"""A recording's file: frames from the room's clock, encoded and written by a thread of its own.

The room's mix hands `RecorderLeg` one 20 ms frame per tick on the event loop; the leg only
queues it. A thread per recording encodes (PyAV: Opus in Ogg, AAC in MP4, MP3, PCM in WAV) and
writes, so a
slow disk never stalls the loop. The queue is bounded (`MAX_QUEUED_S` of audio): past it the
recording fails with the reason instead of growing without end, and the file written so far is
still closed properly. `finish()` drains what is queued, flushes the encoder and closes the
container, so the file is playable whenever it ends - StopEgress, the room closing, shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np

from sipbridge.media import codecs, mixer
from sipbridge.media.players import FRAME_MS, Pcm
from sipbridge.media.room_audio import AudioLeg
from sipbridge.rooms.egress import FileFormat

log = logging.getLogger(__name__)

RATE = codecs.OPUS_SPEC.sample_rate  # 48 kHz mono: the mix is made at this rate
FRAME = RATE * FRAME_MS // 1000
MAX_QUEUED_S = 10.0
BATCH_FRAMES = 10  # frames (200 ms) queued before the writer thread is woken to encode them
FRAME_S = FRAME_MS / 1000
MAX_CATCH_UP = 50  # frames of silence for skipped ticks, at most (one second)


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterResult:
    samples: int  # written at RATE
    size: int  # bytes on disk
    error: str = ""


class FileWriter:
    """Encodes queued frames to `path` on its own thread. Create and use it on the loop;
    `on_opened` and `done` are reported there."""

    def __init__(
        self,
        path: str,
        fmt: FileFormat,
        *,
        on_opened: Callable[[], None],
        max_queued_s: float = MAX_QUEUED_S,
        channels: int = 1,
    ) -> None:
        self.path = path
        self.format = fmt
        self.channels = channels
        self._silence = np.zeros(FRAME * channels, dtype=np.int16)
        self.on_opened = on_opened
        self.max_frames = int(max_queued_s * 1000 / FRAME_MS)
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[WriterResult] = self.loop.create_future()
        self.frames = 0  # pushed so far (the recording's length as the loop sees it)
        self._queue: deque[Pcm] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._error = ""
        self._thread = threading.Thread(target=self._run, name=f"recording {path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def push(self, pcm: Pcm | None) -> None:
        """One 20 ms frame (None: silence; stereo: interleaved left, right), in order."""
        with self._cond:
            if self._closing:
                return
            if len(self._queue) >= self.max_frames:
                self._error = f"the disk is too slow: over {self.max_frames * FRAME_MS} ms queued"
                self._closing = True
                self._cond.notify()
                return
            self._queue.append(self._silence if pcm is None else pcm)
            self.frames += 1
            if len(self._queue) >= BATCH_FRAMES:
                # Woken once per batch, not per frame: each wake-up of a writer thread takes
                # the GIL from the event loop, and there is one thread per recording.
                self._cond.notify()

    def finish(self) -> None:
        """Write what is queued, then close the file."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    @property
    def closing(self) -> bool:
        return self._closing

    def _report(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            self.loop.call_soon_threadsafe(callback)

    def _run(self) -> None:
        try:
            self._write()
        except BaseException as exc:  # never a recording left STARTING/ENDING for ever
            log.exception("recording %s: the writer failed", self.path)
            self._fail(f"the recording's writer failed: {exc}")

    def _write(self) -> None:
        samples = 0
        error = ""
        container = None
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            # "x": never overwrite a file that appeared since the request was checked.
            handle = open(self.path, "xb")  # noqa: SIM115 - closed after the container
        except OSError as exc:
            self._fail(f"cannot create {self.path}: {exc.strerror or exc}")
            return
        try:
            layout = "stereo" if self.channels == 2 else "mono"
            container = av.open(handle, "w", format=self.format.container)
            stream = container.add_stream(self.format.codec, rate=RATE, layout=layout)
            assert isinstance(stream, av.audio.stream.AudioStream)
            self._report(self.on_opened)
            while True:
                with self._cond:
                    while len(self._queue) < BATCH_FRAMES and not self._closing:
                        self._cond.wait()
                    batch = list(self._queue)
                    self._queue.clear()
                    closing = self._closing
                if batch:  # one frame of the batch: PyAV cuts it to the codec's frame size
                    pcm = np.concatenate(batch) if len(batch) > 1 else batch[0]
                    frame = av.AudioFrame.from_ndarray(
                        pcm.reshape(1, -1), format="s16", layout=layout
                    )
                    frame.sample_rate = RATE
                    frame.pts = samples
                    samples += len(pcm) // self.channels
                    for packet in stream.encode(frame):
                        container.mux(packet)
                if closing:
                    with self._cond:
                        if self._queue:
                            continue
                    break
            for packet in stream.encode(None):
                container.mux(packet)
        except Exception as exc:  # an encoder or a disk failure: the recording fails, reported
            log.warning("recording %s failed: %s", self.path, exc)
            error = f"writing {self.path} failed: {exc}"
        finally:
            try:
                if container is not None:
                    container.close()
            except Exception as exc:
                error = error or f"closing {self.path} failed: {exc}"
            try:  # its buffer flushed: a full disk can fail here too
                handle.close()
            except OSError as exc:
                error = error or f"closing {self.path} failed: {exc}"
        with self._cond:
            error = error or self._error
        try:
            size = os.path.getsize(self.path)
        except OSError:
            size = 0
        result = WriterResult(samples=samples, size=size, error=error)
        self._report(lambda: self._resolve(result))

    def _fail(self, error: str) -> None:
        with self._cond:
            self._closing = True
            self._queue.clear()
        result = WriterResult(samples=0, size=0, error=error)
        self._report(lambda: self._resolve(result))

    def _resolve(self, result: WriterResult) -> None:
        if not self.done.done():
            self.done.set_result(result)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class RecorderLeg(AudioLeg):
    """A room member that only listens: to every source (a room recording) or to one (`hears`,
    a track recording). It never forwards, so the room mixes for it on every tick, silence
    included, and the file's length is the recording's wall-clock length."""

    def __init__(self, writer: FileWriter, hears: AudioLeg | None = None) -> None:
        super().__init__(codecs.OPUS_SPEC)
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
                self.writer.push(None)
            self.filled += max(0, missed)

    def send_pcm(self, pcm: Pcm | None, now: float) -> None:
        self.catch_up(now)
        self.writer.push(pcm)


class StereoRecorderLeg(RecorderLeg):
    """A room recording in two channels: `channel_of(source)` (0 left, 1 right) says where each
    source goes; each channel is the mix of its sources. The room hands it the sources apart
    (`takes_sources`), each decoded once for every mix of the room, as for a mono one."""

    takes_sources = True

    def __init__(self, writer: FileWriter, channel_of: Callable[[AudioLeg], int]) -> None:
        super().__init__(writer)
        self.channel_of = channel_of

    def send_sources(self, frames: list[tuple[AudioLeg, Pcm]], now: float) -> None:
        self.catch_up(now)
        if not frames:
            self.writer.push(None)
            return
        sides: tuple[list[Pcm], list[Pcm]] = ([], [])
        for source, pcm in frames:
            sides[self.channel_of(source)].append(pcm)
        stereo = np.zeros((FRAME, 2), dtype=np.int16)
        for channel, parts in enumerate(sides):
            if parts:
                stereo[:, channel] = mixer.mix(parts)
        self.writer.push(stereo.reshape(-1))
