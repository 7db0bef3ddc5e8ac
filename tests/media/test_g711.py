"""G.711 mu-law / A-law tables: known values, audioop cross-check, round trips, transcoding."""

from __future__ import annotations

import ast
import math
import struct
import warnings
from pathlib import Path
from types import ModuleType

import pytest

from sipbridge.media import g711


def _audioop() -> ModuleType | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop  # noqa: PLC0415
        except ImportError:  # pragma: no cover - Python 3.13+
            return None
    return audioop


AUDIOOP = _audioop()
needs_audioop = pytest.mark.skipif(AUDIOOP is None, reason="audioop not available")

ALL_CODES = bytes(range(256))
ALL_SAMPLES = struct.pack("<65536h", *range(-32768, 32768))


def pcm(*samples: int) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def unpcm(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 2}h", data))


@pytest.mark.parametrize(
    ("code", "value"), [(0xFF, 0), (0x7F, 0), (0x00, -32124), (0x80, 32124), (0xFE, 8)]
)
def test_ulaw_known_values(code: int, value: int) -> None:
    assert g711.ULAW_DECODE[code] == value
    assert unpcm(g711.ulaw_decode(bytes([code]))) == [value]


@pytest.mark.parametrize(
    ("code", "value"), [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24)]
)
def test_alaw_known_values(code: int, value: int) -> None:
    assert g711.ALAW_DECODE[code] == value
    assert unpcm(g711.alaw_decode(bytes([code]))) == [value]


def test_encode_known_values() -> None:
    assert g711.ulaw_encode(pcm(0, 32767, -32768)) == bytes([0xFF, 0x80, 0x00])
    assert g711.alaw_encode(pcm(0, -1, 32767, -32768)) == bytes([0xD5, 0x55, 0xAA, 0x2A])
    assert g711.ulaw_encode(pcm(0))[0] == g711.ULAW_SILENCE
    assert g711.alaw_encode(pcm(0))[0] == g711.ALAW_SILENCE


def test_decode_tables_are_odd_symmetric() -> None:
    for code in range(128):
        assert g711.ULAW_DECODE[code] == -g711.ULAW_DECODE[code | 0x80]
        assert g711.ALAW_DECODE[code] == -g711.ALAW_DECODE[code | 0x80]


@pytest.mark.parametrize(
    ("decode", "encode"),
    [(g711.ulaw_decode, g711.ulaw_encode), (g711.alaw_decode, g711.alaw_encode)],
    ids=["ulaw", "alaw"],
)
def test_round_trip_every_code(decode: object, encode: object) -> None:
    assert callable(decode)
    assert callable(encode)
    linear = decode(ALL_CODES)
    assert decode(encode(linear)) == linear


def test_encode_is_monotonic_in_the_linear_value() -> None:
    for decode, encode in (
        (g711.ulaw_decode, g711.ulaw_encode),
        (g711.alaw_decode, g711.alaw_encode),
    ):
        values = unpcm(decode(encode(ALL_SAMPLES)))
        assert values == sorted(values)


@pytest.mark.parametrize("func", [g711.ulaw_encode, g711.alaw_encode], ids=["ulaw", "alaw"])
def test_odd_length_pcm_is_rejected(func: object) -> None:
    assert callable(func)
    with pytest.raises(ValueError, match="even number of bytes"):
        func(b"\x00\x01\x02")


def test_empty_input() -> None:
    assert g711.ulaw_encode(b"") == g711.alaw_encode(b"") == b""
    assert g711.ulaw_decode(b"") == g711.alaw_decode(b"") == b""
    assert g711.ulaw_to_alaw(b"") == g711.alaw_to_ulaw(b"") == b""


@pytest.mark.parametrize(
    ("decode", "encode", "step"),
    [(g711.ulaw_decode, g711.ulaw_encode, 1024), (g711.alaw_decode, g711.alaw_encode, 1024)],
    ids=["ulaw", "alaw"],
)
def test_one_second_of_8khz_audio(decode: object, encode: object, step: int) -> None:
    assert callable(decode)
    assert callable(encode)
    n = 8000
    samples = [round(16000 * math.sin(2 * math.pi * 440 * i / 8000)) for i in range(n)]
    codes = encode(pcm(*samples))
    assert len(codes) == n
    out = unpcm(decode(codes))
    assert len(out) == n
    # |x| <= 16000 stays below the top segment of either law, whose step is 1024 in 16-bit units,
    # so the error is at most half a step
    assert max(abs(a - b) for a, b in zip(samples, out, strict=True)) <= step // 2
    # and the signal is preserved: SNR of G.711 on a loud sine is ~38 dB
    signal = sum(s * s for s in samples)
    noise = sum((a - b) ** 2 for a, b in zip(samples, out, strict=True))
    assert 10 * math.log10(signal / noise) > 30


def test_transcoding_known_values() -> None:
    assert g711.ulaw_to_alaw(bytes([0xFF, 0x7F, 0x80, 0x00])) == bytes([0xD5, 0x55, 0xAA, 0x2A])
    assert g711.alaw_to_ulaw(bytes([0xD5, 0x55, 0xAA, 0x2A])) == bytes([0xFE, 0x7E, 0x80, 0x00])
    assert len(g711.ULAW_TO_ALAW) == len(g711.ALAW_TO_ULAW) == 256


def test_transcoding_keeps_sign_order_and_level() -> None:
    for src, dst, table in (
        (g711.ULAW_DECODE, g711.ALAW_DECODE, g711.ULAW_TO_ALAW),
        (g711.ALAW_DECODE, g711.ULAW_DECODE, g711.ALAW_TO_ULAW),
    ):
        by_value = sorted(range(256), key=lambda c: src[c])
        mapped = [dst[table[c]] for c in by_value]
        assert mapped == sorted(mapped)
        for code in range(256):
            x, y = src[code], dst[table[code]]
            assert (x < 0) == (y < 0) or x == 0
            # within one quantisation step of the larger law's step at that level (max 1024)
            assert abs(x - y) <= max(16, abs(x) // 16)


def test_transcoding_round_trip_is_nearly_transparent() -> None:
    # G.711 Tables 3/4: converting there and back returns the same code for most codes
    ua = g711.alaw_to_ulaw(g711.ulaw_to_alaw(ALL_CODES))
    au = g711.ulaw_to_alaw(g711.alaw_to_ulaw(ALL_CODES))
    assert sum(a != b for a, b in zip(ua, ALL_CODES, strict=True)) <= 16
    assert sum(a != b for a, b in zip(au, ALL_CODES, strict=True)) <= 16
    # and a second round trip changes nothing
    assert g711.alaw_to_ulaw(g711.ulaw_to_alaw(ua)) == ua
    assert g711.ulaw_to_alaw(g711.alaw_to_ulaw(au)) == au


@needs_audioop
def test_decode_matches_audioop_for_every_code() -> None:
    assert AUDIOOP is not None
    assert g711.ulaw_decode(ALL_CODES) == AUDIOOP.ulaw2lin(ALL_CODES, 2)
    assert g711.alaw_decode(ALL_CODES) == AUDIOOP.alaw2lin(ALL_CODES, 2)


@needs_audioop
def test_encode_matches_audioop_for_every_sample() -> None:
    assert AUDIOOP is not None
    assert g711.ulaw_encode(ALL_SAMPLES) == AUDIOOP.lin2ulaw(ALL_SAMPLES, 2)
    assert g711.alaw_encode(ALL_SAMPLES) == AUDIOOP.lin2alaw(ALL_SAMPLES, 2)


def test_media_imports_no_io() -> None:
    tree = ast.parse((Path(g711.__file__).parent / "g711.py").read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "time", "threading", "numpy"}
