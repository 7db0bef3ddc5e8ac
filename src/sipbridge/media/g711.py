"""ITU-T G.711 mu-law and A-law, by precomputed lookup tables (standard library only).

Linear audio is 16-bit signed little-endian PCM (``bytes``); G.711 audio is one 8-bit code per
sample (``bytes``, as carried in RTP payloads PT 0 / PT 8).

The codec tables are generated at import time from the segment algorithm of G.711 (as in the
ITU-T G.191 reference implementation and the classic Sun ``g711.c``): no external data.

- Decoding maps a code to its reconstruction value through two 256-byte tables (low and high byte
  of the 16-bit sample) applied with ``bytes.translate`` and interleaved by slice assignment, so
  the per-sample work runs in C.
- Encoding looks each 16-bit sample up in a 65536-entry table (indexed by the sample as an
  unsigned 16-bit number); mu-law uses only the top 14 bits and A-law the top 13, as the
  standard does, so the table is exactly the standard's encoder.
- ``ulaw_to_alaw`` / ``alaw_to_ulaw`` transcode code-to-code with 256-byte tables expanded from
  G.711 Tables 3 and 4 (128 magnitudes each, the one piece of the standard that is a designed
  table rather than an algorithm; it is written out below).

numpy is not a dependency of this project, so the tables are plain ``bytes``: ``translate`` for
decoding and transcoding and ``map`` over a ``memoryview`` for encoding.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable

__all__ = [
    "ALAW_DECODE",
    "ALAW_SILENCE",
    "ALAW_TO_ULAW",
    "ULAW_DECODE",
    "ULAW_SILENCE",
    "ULAW_TO_ALAW",
    "alaw_decode",
    "alaw_encode",
    "alaw_to_ulaw",
    "decode_alaw_sample",
    "decode_ulaw_sample",
    "encode_alaw_sample",
    "encode_ulaw_sample",
    "ulaw_decode",
    "ulaw_encode",
    "ulaw_to_alaw",
]

ULAW_SILENCE = 0xFF
"""The mu-law code of a zero sample."""
ALAW_SILENCE = 0xD5
"""The A-law code nearest a zero sample (+8)."""

_ULAW_BIAS = 0x84  # 33 in 14-bit units, scaled to 16 bits
_ULAW_CLIP = 8159  # largest 14-bit magnitude mu-law encodes


def decode_ulaw_sample(code: int) -> int:
    """The 16-bit linear value of one mu-law code (0..255)."""
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return _ULAW_BIAS - t if u & 0x80 else t - _ULAW_BIAS


def decode_alaw_sample(code: int) -> int:
    """The 16-bit linear value of one A-law code (0..255)."""
    a = (code & 0xFF) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = t + 8 if seg == 0 else (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def encode_ulaw_sample(sample: int) -> int:
    """The mu-law code of one 16-bit linear sample (-32768..32767), from its top 14 bits."""
    v = sample >> 2
    if v < 0:
        v = -v
        mask = 0x7F
    else:
        mask = 0xFF
    v = min(v, _ULAW_CLIP) + 33
    seg = max(v.bit_length() - 6, 0)
    if seg >= 8:  # beyond the last segment: the largest code
        return 0x7F ^ mask
    return ((seg << 4) | ((v >> (seg + 1)) & 0x0F)) ^ mask


def encode_alaw_sample(sample: int) -> int:
    """The A-law code of one 16-bit linear sample (-32768..32767), from its top 13 bits."""
    v = sample >> 3
    if v >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        v = ~v
    if v < 32:
        return (v >> 1) ^ mask
    seg = v.bit_length() - 5
    return ((seg << 4) | ((v >> seg) & 0x0F)) ^ mask


def _signed16(u: int) -> int:
    return u - 0x10000 if u & 0x8000 else u


ULAW_DECODE: tuple[int, ...] = tuple(decode_ulaw_sample(c) for c in range(256))
"""Linear value of each mu-law code."""
ALAW_DECODE: tuple[int, ...] = tuple(decode_alaw_sample(c) for c in range(256))
"""Linear value of each A-law code."""

_ULAW_LO = bytes(v & 0xFF for v in ULAW_DECODE)
_ULAW_HI = bytes((v >> 8) & 0xFF for v in ULAW_DECODE)
_ALAW_LO = bytes(v & 0xFF for v in ALAW_DECODE)
_ALAW_HI = bytes((v >> 8) & 0xFF for v in ALAW_DECODE)


def _encode_table(encode: Callable[[int], int], drop: int) -> bytes:
    """`encode` of every sample, indexed by the sample read as an unsigned 16-bit number. The
    law reads only the top 16 - `drop` bits, so each code is computed once per run of 2**drop
    samples and the runs are laid out by slice assignment (in C: a fast import)."""
    step = 1 << drop
    codes = bytes(encode(_signed16(top << drop)) for top in range(0x10000 >> drop))
    table = bytearray(0x10000)
    for low in range(step):
        table[low::step] = codes
    return bytes(table)


_ULAW_ENCODE = _encode_table(encode_ulaw_sample, 2)  # mu-law: the top 14 bits
_ALAW_ENCODE = _encode_table(encode_alaw_sample, 3)  # A-law: the top 13 bits


# G.711 Tables 3 and 4 are designed tables, not a formula over the reconstruction values (in the
# top three segments a code maps to the same segment and step of the other law, although the two
# laws' 16-bit scales differ by 1.6 %). They are kept here as in the standard, on magnitude codes
# (sign bit clear, before the even-bit / all-bit inversion of the line code), 1-based for A-law
# as printed in the standard and in the Sun reference g711.c.
_U2A_MAGNITUDE = (
    1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8,
    9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
    25, 27, 29, 31, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62,
    64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79,
    81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96,
    97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112,
    113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128,
)  # fmt: skip
_A2U_MAGNITUDE = (
    1, 3, 5, 7, 9, 11, 13, 15, 16, 17, 18, 19, 20, 21, 22, 23,
    24, 25, 26, 27, 28, 29, 30, 31, 32, 32, 33, 33, 34, 34, 35, 35,
    36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 48, 49, 49,
    50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 64,
    65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 79,
    80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95,
    96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111,
    112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127,
)  # fmt: skip


def _ulaw_to_alaw_code(u: int) -> int:
    if u & 0x80:
        return 0xD5 ^ (_U2A_MAGNITUDE[0xFF ^ u] - 1)
    return 0x55 ^ (_U2A_MAGNITUDE[0x7F ^ u] - 1)


def _alaw_to_ulaw_code(a: int) -> int:
    if a & 0x80:
        return 0xFF ^ _A2U_MAGNITUDE[a ^ 0xD5]
    return 0x7F ^ _A2U_MAGNITUDE[a ^ 0x55]


_ULAW_TO_ALAW = bytes(_ulaw_to_alaw_code(c) for c in range(256))
_ALAW_TO_ULAW = bytes(_alaw_to_ulaw_code(c) for c in range(256))
ULAW_TO_ALAW: bytes = _ULAW_TO_ALAW
"""256-byte translation table: mu-law code -> A-law code (``data.translate(ULAW_TO_ALAW)``)."""
ALAW_TO_ULAW: bytes = _ALAW_TO_ULAW
"""256-byte translation table: A-law code -> mu-law code (``data.translate(ALAW_TO_ULAW)``)."""

_BIG_ENDIAN = sys.byteorder == "big"


def _decode(data: bytes, lo: bytes, hi: bytes) -> bytes:
    out = bytearray(2 * len(data))
    out[0::2] = data.translate(lo)
    out[1::2] = data.translate(hi)
    return bytes(out)


def _samples(pcm: bytes) -> memoryview | array[int]:
    if len(pcm) % 2:
        raise ValueError(f"16-bit PCM needs an even number of bytes, got {len(pcm)}")
    if _BIG_ENDIAN:  # pragma: no cover - little-endian hosts only in CI
        samples = array("H", pcm)
        samples.byteswap()
        return samples
    return memoryview(pcm).cast("B").cast("H")


def ulaw_decode(data: bytes) -> bytes:
    """mu-law codes -> 16-bit signed little-endian PCM (two bytes per code)."""
    return _decode(data, _ULAW_LO, _ULAW_HI)


def alaw_decode(data: bytes) -> bytes:
    """A-law codes -> 16-bit signed little-endian PCM (two bytes per code)."""
    return _decode(data, _ALAW_LO, _ALAW_HI)


def ulaw_encode(pcm: bytes) -> bytes:
    """16-bit signed little-endian PCM -> mu-law codes. Raises ValueError on an odd length."""
    return bytes(map(_ULAW_ENCODE.__getitem__, _samples(pcm)))


def alaw_encode(pcm: bytes) -> bytes:
    """16-bit signed little-endian PCM -> A-law codes. Raises ValueError on an odd length."""
    return bytes(map(_ALAW_ENCODE.__getitem__, _samples(pcm)))


def ulaw_to_alaw(data: bytes) -> bytes:
    """mu-law codes -> A-law codes, code by code (G.711 Table 3)."""
    return data.translate(_ULAW_TO_ALAW)


def alaw_to_ulaw(data: bytes) -> bytes:
    """A-law codes -> mu-law codes, code by code (G.711 Table 4)."""
    return data.translate(_ALAW_TO_ULAW)
