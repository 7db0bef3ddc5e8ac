"""bench/media.py's RTP loop in C (bench/_rtpgen.c), built with the system compiler on first use
and driven through ctypes. The load generator only: nothing of sipbridge is in it.

`load()` returns the library, or None with the reason in `why_not` (no compiler, a build error):
bench/media.py then runs its Python engine, which does the same per packet in the interpreter
and says so in its JSON ("generator_engine").
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import socket
import struct
import subprocess
from array import array
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("_rtpgen.c")
BUILD = Path(__file__).resolve().parent.parent / "build" / "bench"

# gen_series / gen_counter / gen_phone_figure indices, as in _rtpgen.c
LATENCY, RECV_JITTER, SEND_JITTER, LATENESS = range(4)
COUNTERS = (
    "window_sent",
    "window_received",
    "duplicates",
    "reordered",
    "stray",
    "misrouted",
    "server_silence",
    "send_errors",
    "recv_errors",
)
SENT, RECEIVED, SEQ_GAPS, RTCP_IN = range(4)
MAX_SAMPLES = 10

why_not = ""
_lib: ctypes.CDLL | None = None


def _build() -> Path:
    source = SOURCE.read_bytes()
    target = BUILD / f"_rtpgen-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if target.exists():
        return target
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler (cc)")
    BUILD.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", str(partial), str(SOURCE)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    partial.replace(target)  # atomic: two benches building at once both end with a whole file
    return target


def load() -> ctypes.CDLL | None:
    global _lib, why_not
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.SubprocessError) as err:
        why_not = f"{type(err).__name__}: {err}"[:200]
        return None
    vp, i32, i64, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_uint32
    lib.gen_new.restype = vp
    lib.gen_new.argtypes = [i32, i32, i64]
    lib.gen_free.argtypes = [vp]
    lib.gen_phone.argtypes = [vp, i32, i32, i32, i32, u32, ctypes.c_uint16, u32]
    lib.gen_watch_sip.argtypes = [vp, i32]
    lib.gen_stream.argtypes = [vp, i32, u32, ctypes.c_uint16, i64]
    lib.gen_unstream.argtypes = [vp, i32]
    lib.gen_unstream.restype = None
    lib.gen_set_window.argtypes = [vp, i64, i64]
    lib.gen_set_window.restype = None
    lib.gen_set_streaming.argtypes = [vp, i32]
    lib.gen_set_streaming.restype = None
    lib.gen_start_schedule.argtypes = [vp, i64]
    lib.gen_start_schedule.restype = None
    lib.gen_counter.argtypes = [vp, i32]
    lib.gen_counter.restype = i64
    lib.gen_phone_figure.argtypes = [vp, i32, i32]
    lib.gen_phone_figure.restype = i64
    lib.gen_series.argtypes = [vp, i32, vp, ctypes.c_size_t]
    lib.gen_series.restype = ctypes.c_size_t
    lib.gen_samples.argtypes = [vp, vp]
    lib.gen_run.argtypes = [vp, i64]
    _lib = lib
    return lib


class Engine:
    """One step's streams: phones added once, streams started as calls are answered."""

    def __init__(self, lib: ctypes.CDLL, n: int, slots: int, slot_ns: int) -> None:
        self.lib = lib
        handle = lib.gen_new(n, slots, slot_ns)
        if not handle:
            raise MemoryError("gen_new")
        self.g = ctypes.c_void_p(handle)
        self.n = n

    def phone(
        self, idx: int, rtp: socket.socket, rtcp: socket.socket, *, ssrc: int, seq: int, ts: int
    ) -> None:
        if self.lib.gen_phone(self.g, idx, rtp.fileno(), rtcp.fileno(), idx ^ 1, ssrc, seq, ts):
            raise OSError(f"gen_phone {idx}")

    def watch_sip(self, sip: socket.socket) -> None:
        if self.lib.gen_watch_sip(self.g, sip.fileno()):
            raise OSError("gen_watch_sip")

    def stream(self, idx: int, remote: tuple[str, int], answered_mono: int) -> None:
        (addr,) = struct.unpack("=I", socket.inet_aton(remote[0]))  # stays in network order
        self.lib.gen_stream(self.g, idx, addr, remote[1], answered_mono)

    def unstream(self, idx: int) -> None:
        self.lib.gen_unstream(self.g, idx)

    def window(self, start: int, end: int) -> None:
        self.lib.gen_set_window(self.g, start, end)

    def streaming(self, on: bool) -> None:
        self.lib.gen_set_streaming(self.g, int(on))

    def schedule_from(self, first_mono: int) -> None:
        self.lib.gen_start_schedule(self.g, first_mono)

    def run(self, until_mono: int) -> bool:
        """True when the SIP socket is readable, False at `until_mono`."""
        return bool(self.lib.gen_run(self.g, until_mono))

    def counter(self, name: str) -> int:
        return int(self.lib.gen_counter(self.g, COUNTERS.index(name)))

    def figure(self, idx: int, which: int) -> int:
        return int(self.lib.gen_phone_figure(self.g, idx, which))

    def series(self, which: int) -> array[int]:
        n = self.lib.gen_series(self.g, which, None, 0)
        out = array("q", bytes(8 * n))
        if n:
            address, _ = out.buffer_info()
            self.lib.gen_series(self.g, which, address, n)
        return out

    def samples(self) -> list[tuple[int, int, int, int, int]]:
        """Misrouted packets: (to, from, counter, seq, ns after the receiver's answer)."""
        raw = (ctypes.c_int64 * (MAX_SAMPLES * 5))()
        n = self.lib.gen_samples(self.g, raw)
        return [tuple(raw[i * 5 : i * 5 + 5]) for i in range(n)]  # type: ignore[misc]

    def close(self) -> None:
        if self.g:
            self.lib.gen_free(self.g)
            self.g = ctypes.c_void_p(None)
