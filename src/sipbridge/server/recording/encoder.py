"""The recordings' encoder: a child process that encodes and writes every recording's file.

The server's event loop mixes; this process encodes (PyAV) and writes, on a core of its own and
out of the server's GIL. Threads in the server were measured to starve its loop: with 100
recordings, a thread each made the 20 ms media tick 300 ms late (p50), and a shared pool of two
was worse (their GIL hand-offs convoy with the loop); this process leaves the loop on time.

It is run as a script (`python encoder.py`), importing nothing of sipbridge, and speaks on its
standard input and output in messages of a 9-byte header (`!BII`: kind, recording number,
payload length) and a payload:

    in   OPEN  json {path, container, codec, channels, rate}  create the file ("x": never over
                                                                an existing one) and its encoder
         PCM   !I rate, then int16 samples, interleaved        converted to the file's rate
                                                                (soxr), encoded per 200 ms
         CLOSE -                                               encode the rest, flush, close
    out  OPENED  -                                             the file is open
         WRITTEN !Q samples per channel encoded so far         after each batch (the server
                                                                bounds what is queued by it)
         DONE    json {samples, size, error}                   closed (error: why it failed)

End of input: every file is finished and closed, then it exits. A failure (a full disk, an
unwritable directory) fails that recording only; its file is closed as far as it was written.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
from typing import IO, Any

HEADER = struct.Struct("!BII")
OPEN, PCM, CLOSE = 1, 2, 3
OPENED, WRITTEN, DONE = 1, 2, 3
SAMPLES = struct.Struct("!Q")
RATE_PREFIX = struct.Struct("!I")
BATCH_S = 0.2
# libopus at complexity 5 instead of 10: measured on speech at its default 64 kbit/s mono, 0.25%
# of a core per recording instead of 0.34%, the file the same size; the encoder's CPU is most of
# what a recording costs.
OPTIONS = {"libopus": {"compression_level": "5"}}
MAX_MESSAGE = 1 << 24


class QuietFile:
    """The file PyAV writes through, keeping an error instead of raising it inside PyAV's file
    callbacks (where PyAV drops it with a traceback on stderr, and FFmpeg may carry on):
    `Target.check` raises it after each write, outside PyAV."""

    def __init__(self, path: str) -> None:
        # "x": never over a file that appeared since the request was checked
        self.raw = open(path, "xb")  # noqa: SIM115 - closed by close()
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                self.raw.write(data)
            except OSError as exc:
                self.error = exc
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        try:
            return self.raw.seek(offset, whence)
        except OSError as exc:
            self.error = self.error or exc
            return self.raw.tell()

    def tell(self) -> int:
        return self.raw.tell()

    def flush(self) -> None:
        try:
            self.raw.flush()
        except OSError as exc:
            self.error = self.error or exc

    def close(self) -> None:
        try:
            self.raw.close()
        except OSError as exc:
            self.error = self.error or exc


class Target:
    """One recording's file, its encoder, and the samples waiting for a batch."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.path = str(spec["path"])
        self.channels = int(spec["channels"])
        self.rate = int(spec["rate"])
        self.layout = "stereo" if self.channels == 2 else "mono"
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.samples = 0
        self.error = ""
        self.created = False
        self.file: QuietFile | None = None
        self.container: Any = None
        self.stream: Any = None
        self.batch_bytes = int(BATCH_S * self.rate) * 2 * self.channels
        self.spec = spec
        self.converting: tuple[int, Any] | None = None  # (input rate, soxr stream)

    def open(self) -> None:
        import av  # noqa: PLC0415 - the process's one heavy import, here for a clear error

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.file = QuietFile(self.path)
        self.created = True
        self.container = av.open(self.file, "w", format=str(self.spec["container"]))
        codec = str(self.spec["codec"])
        self.stream = self.container.add_stream(
            codec, rate=self.rate, layout=self.layout, options=dict(OPTIONS.get(codec, {}))
        )

    def convert(self, rate: int, pcm: bytes, last: bool = False) -> bytes:
        """`pcm` at `rate` as samples at the file's rate (a stream per input rate: a change of
        rate first flushes the last one's tail)."""
        import numpy as np  # noqa: PLC0415
        import soxr  # noqa: PLC0415

        out = b""
        if self.converting is not None and (last or self.converting[0] != rate):
            tail = self.converting[1].resample_chunk(
                np.zeros((0, self.channels), dtype=np.int16), last=True
            )
            out += np.ascontiguousarray(tail, dtype=np.int16).tobytes()
            self.converting = None
        if last or rate == self.rate:
            return out + pcm
        if self.converting is None:
            stream = soxr.ResampleStream(rate, self.rate, self.channels, dtype="int16")
            self.converting = (rate, stream)
        samples = np.frombuffer(pcm, dtype=np.int16).reshape(-1, self.channels)
        converted = self.converting[1].resample_chunk(samples)
        return out + np.ascontiguousarray(converted, dtype=np.int16).tobytes()

    def add(self, payload: bytes) -> bool:
        """Queue samples; True when a batch was encoded."""
        if self.error:
            return False
        (rate,) = RATE_PREFIX.unpack_from(payload)
        pcm = self.convert(rate, payload[RATE_PREFIX.size :])
        self.pending.append(pcm)
        self.pending_bytes += len(pcm)
        if self.pending_bytes < self.batch_bytes:
            return False
        self.encode()
        return True

    def encode(self) -> None:
        import av  # noqa: PLC0415
        import numpy as np  # noqa: PLC0415

        if not self.pending or self.error:
            return
        data = b"".join(self.pending)
        self.pending, self.pending_bytes = [], 0
        if not data:  # an empty frame is an encoder error (EINVAL, ENOMEM for libopus)
            return
        pcm = np.frombuffer(data, dtype=np.int16)
        try:
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=self.layout)
            frame.sample_rate = self.rate
            frame.pts = self.samples
            self.samples += len(pcm) // self.channels
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.check()
        except Exception as exc:  # a disk or an encoder failure: this recording fails
            self.error = f"writing {self.path} failed: {exc}"

    def check(self) -> None:
        if self.file is not None and self.file.error is not None:
            raise self.file.error

    def close(self) -> dict[str, Any]:
        if not self.error:
            self.pending.append(self.convert(self.rate, b"", last=True))
        self.encode()
        if not self.error and self.stream is not None:
            try:
                for packet in self.stream.encode(None):
                    self.container.mux(packet)
                self.check()
            except Exception as exc:
                self.error = f"writing {self.path} failed: {exc}"
        try:
            if self.container is not None:
                self.container.close()
            if self.file is not None:
                self.file.close()  # its buffer flushed: a full disk fails here too
                self.check()
        except Exception as exc:
            self.error = self.error or f"closing {self.path} failed: {exc}"
        try:
            size = os.path.getsize(self.path) if self.created else 0
        except OSError:
            size = 0
        return {"samples": self.samples, "size": size, "error": self.error}


def message(kind: int, number: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, number, len(payload)) + payload


def serve(read_fd: int, out: IO[bytes]) -> None:
    targets: dict[int, Target] = {}
    buffer = bytearray()
    while True:
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        buffer += chunk
        replies: list[bytes] = []
        progressed: set[int] = set()
        at = 0
        while len(buffer) - at >= HEADER.size:
            kind, number, size = HEADER.unpack_from(buffer, at)
            if size > MAX_MESSAGE:
                raise SystemExit(f"recording encoder: a message of {size} bytes")
            if len(buffer) - at - HEADER.size < size:
                break
            payload = bytes(buffer[at + HEADER.size : at + HEADER.size + size])
            at += HEADER.size + size
            if kind == OPEN:
                target = Target(json.loads(payload))
                try:
                    target.open()
                except Exception as exc:
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                    target.error = f"cannot create {target.path}: {reason}"
                    result = {"samples": 0, "size": 0, "error": target.error}
                    if target.created:
                        result = target.close()
                    replies.append(message(DONE, number, json.dumps(result).encode()))
                    continue
                targets[number] = target
                replies.append(message(OPENED, number))
            elif kind == PCM and number in targets:
                target = targets[number]
                if target.add(payload):
                    progressed.add(number)
                if target.error:  # failed now: said at once, not at the recording's end
                    del targets[number]
                    progressed.discard(number)
                    replies.append(message(DONE, number, json.dumps(target.close()).encode()))
            elif kind == CLOSE and number in targets:
                result = targets.pop(number).close()
                progressed.discard(number)
                replies.append(message(DONE, number, json.dumps(result).encode()))
        del buffer[:at]
        for number in progressed:
            replies.append(message(WRITTEN, number, SAMPLES.pack(targets[number].samples)))
        if replies:
            tell(out, b"".join(replies))
    for number, target in targets.items():  # input closed: finish every file
        tell(out, message(DONE, number, json.dumps(target.close()).encode()))


def tell(out: IO[bytes], data: bytes) -> None:
    """Report to the server; a server gone (killed) hears nothing, and its files are still
    finished."""
    with contextlib.suppress(BrokenPipeError, OSError):
        out.write(data)
        out.flush()


if __name__ == "__main__":
    serve(sys.stdin.fileno(), sys.stdout.buffer)
