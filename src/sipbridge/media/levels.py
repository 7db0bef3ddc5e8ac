"""Audio levels of what a source sends, in RFC 6464 terms: dBov, 0 (loudest) to 127 (silence).

The level of a packet is its RMS relative to the overload point of 16-bit audio, as RFC 6465
Appendix A computes it (a full-scale sine is -3 dBov). Levels feed the room's active-speaker
detection (`rooms/speakers.py`).

A phone's G.711 is measured without being decoded: each code's squared value comes from a
256-entry table. The relay's hot path only keeps a reference to the payload (`PacketLevels.add`,
a bounded deque append); the payloads are measured in one numpy pass when the room's speaker
update reads them (`PacketLevels.read`, every 400 ms), which is 20 packets per pass instead of
one Python-level loop per packet.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import numpy.typing as npt

from sipbridge.media import codecs
from sipbridge.media.g711 import ALAW_DECODE, ULAW_DECODE

SILENT_DBOV = 127  # RFC 6464: -127 dBov, digital silence
MAX_PENDING = 64  # packets kept between reads (1.28 s of 20 ms packets): older ones are dropped
_FULL_SCALE_SQUARED = 32767.0 * 32767.0

# Each code's squared linear value relative to full scale (G.711 s3.1, tables 1a/2a).
_ULAW_POWER = np.array([v * v for v in ULAW_DECODE], dtype=np.float64) / _FULL_SCALE_SQUARED
_ALAW_POWER = np.array([v * v for v in ALAW_DECODE], dtype=np.float64) / _FULL_SCALE_SQUARED
_POWER_TABLES = {codecs.PCMU_SPEC: _ULAW_POWER, codecs.PCMA_SPEC: _ALAW_POWER}


def dbov(mean_square: float) -> int:
    """The RFC 6464 level (0..127, larger is quieter) of a mean square relative to full scale."""
    if mean_square <= 0.0:
        return SILENT_DBOV
    level = -10.0 * math.log10(mean_square)
    return min(SILENT_DBOV, max(0, round(level)))


def pcm_dbov(pcm: npt.NDArray[np.int16]) -> int:
    """The level of 16-bit PCM samples (RFC 6465 Appendix A)."""
    if not len(pcm):
        return SILENT_DBOV
    samples = pcm.astype(np.float64)
    return dbov(float(np.dot(samples, samples)) / (len(pcm) * _FULL_SCALE_SQUARED))


def g711_dbov(payload: bytes, spec: codecs.CodecSpec) -> int:
    """The level of one G.711 payload, by table: nothing is decoded."""
    return g711_levels([payload], spec)[0][0] if payload else SILENT_DBOV


def g711_levels(payloads: list[bytes], spec: codecs.CodecSpec) -> list[tuple[int, float]]:
    """(dBov, duration in ms) of each non-empty G.711 payload, in one vectorised pass."""
    table = _POWER_TABLES[spec]
    sizes = [len(p) for p in payloads if p]
    if not sizes:
        return []
    codes = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    starts = np.cumsum([0, *sizes[:-1]])
    power = np.add.reduceat(table[codes], starts)
    per_ms = spec.sample_rate / 1000
    return [
        (dbov(float(total) / size), size / per_ms)
        for total, size in zip(power.tolist(), sizes, strict=True)
    ]


class PacketLevels:
    """The audio of one source since its levels were last read: G.711 payloads as they came
    (`add`, on the hot path: measured only when read), or levels already known (`add_level`,
    for audio that is decoded anyway). Bounded: a source nobody reads keeps `MAX_PENDING`."""

    __slots__ = ("_levels", "_payloads", "spec")

    def __init__(self, spec: codecs.CodecSpec) -> None:
        self.spec = spec
        self._payloads: deque[bytes] = deque(maxlen=MAX_PENDING)
        self._levels: deque[tuple[int, float]] = deque(maxlen=MAX_PENDING)

    def payload_queue(self) -> deque[bytes] | None:
        """Where the hot path appends G.711 payloads (`add` without the call), or None when
        this codec's payloads cannot be measured without decoding."""
        return self._payloads if self.spec in _POWER_TABLES else None

    def add(self, payload: bytes) -> None:
        """One packet's payload (G.711), measured on `read`."""
        self._payloads.append(payload)

    def add_level(self, level: int, duration_ms: float) -> None:
        """A level measured elsewhere (decoded audio), for `duration_ms` of audio."""
        self._levels.append((level, duration_ms))

    def change_codec(self, spec: codecs.CodecSpec) -> None:
        """The source's codec changed: what was kept in the old one is dropped."""
        self.spec = spec
        self._payloads.clear()

    def read(self) -> list[tuple[int, float]]:
        """(dBov, duration in ms) of what came since the last read, oldest first."""
        out = list(self._levels)
        self._levels.clear()
        if self._payloads:
            payloads = list(self._payloads)
            self._payloads.clear()
            if self.spec in _POWER_TABLES:
                out.extend(g711_levels(payloads, self.spec))
        return out
