"""Audio levels (RFC 6464 dBov) of G.711 payloads by table and of decoded PCM (RFC 6465 App. A)."""

from __future__ import annotations

import numpy as np
import pytest

from sipbridge.media import codecs
from sipbridge.media.g711 import alaw_encode, ulaw_encode
from sipbridge.media.levels import (
    MAX_PENDING,
    SILENT_DBOV,
    PacketLevels,
    dbov,
    g711_dbov,
    g711_levels,
    pcm_dbov,
)


def sine(amplitude: float, rate: int = 8000, ms: int = 20, hz: float = 1000.0) -> np.ndarray:
    t = np.arange(rate * ms // 1000) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def test_full_scale_sine_is_minus_3_dbov_and_silence_is_127() -> None:
    # RFC 6465 Appendix A: a full-scale sine has an RMS 3 dB below the overload point.
    assert pcm_dbov(sine(1.0)) == 3
    assert pcm_dbov(sine(0.1)) == 23
    assert pcm_dbov(np.zeros(160, np.int16)) == SILENT_DBOV
    assert pcm_dbov(np.zeros(0, np.int16)) == SILENT_DBOV
    assert dbov(0.0) == SILENT_DBOV
    assert dbov(1.0) == 0
    assert dbov(10.0) == 0  # louder than full scale is clamped
    assert dbov(1e-20) == SILENT_DBOV


@pytest.mark.parametrize(
    ("spec", "encode"), [(codecs.PCMU_SPEC, ulaw_encode), (codecs.PCMA_SPEC, alaw_encode)]
)
@pytest.mark.parametrize("amplitude", [0.9, 0.3, 0.05, 0.01, 0.002])
def test_g711_by_table_matches_the_decoded_level_within_1_db(
    spec: codecs.CodecSpec, encode: object, amplitude: float
) -> None:
    pcm = sine(amplitude)
    payload = encode(pcm.tobytes())  # type: ignore[operator]
    decoded = np.frombuffer(codecs.new_decoder(spec).decode(payload), np.int16)
    assert abs(g711_dbov(payload, spec) - pcm_dbov(decoded)) <= 1
    assert abs(g711_dbov(payload, spec) - pcm_dbov(pcm)) <= 1


def test_g711_silence_and_empty_payloads() -> None:
    assert g711_dbov(b"\xff" * 160, codecs.PCMU_SPEC) == SILENT_DBOV
    assert g711_dbov(b"\xd5" * 160, codecs.PCMA_SPEC) >= 70  # A-law has no exact zero
    assert g711_dbov(b"", codecs.PCMU_SPEC) == SILENT_DBOV
    assert g711_levels([], codecs.PCMU_SPEC) == []
    assert g711_levels([b""], codecs.PCMU_SPEC) == []


def test_g711_levels_of_packets_of_several_lengths_in_one_pass() -> None:
    loud = ulaw_encode(sine(0.5).tobytes())
    quiet = ulaw_encode(sine(0.01, ms=30).tobytes())
    levels = g711_levels([loud, b"", quiet, b"\xff" * 80], codecs.PCMU_SPEC)
    assert [ms for _, ms in levels] == [20.0, 30.0, 10.0]
    assert levels[0][0] == g711_dbov(loud, codecs.PCMU_SPEC) == 9
    assert levels[1][0] == g711_dbov(quiet, codecs.PCMU_SPEC)
    assert levels[2][0] == SILENT_DBOV


def test_packet_levels_keep_payloads_until_read_and_are_bounded() -> None:
    levels = PacketLevels(codecs.PCMU_SPEC)
    queue = levels.payload_queue()
    assert queue is not None
    loud = ulaw_encode(sine(0.5).tobytes())
    for _ in range(MAX_PENDING + 10):
        queue.append(loud)
    levels.add(b"\xff" * 160)
    read = levels.read()
    assert len(read) == MAX_PENDING  # the oldest went
    assert read[-1] == (SILENT_DBOV, 20.0) and read[0] == (9, 20.0)
    assert levels.read() == []


def test_packet_levels_of_decoded_audio_and_a_codec_change() -> None:
    levels = PacketLevels(codecs.OPUS_SPEC)
    assert levels.payload_queue() is None
    levels.add_level(20, 20.0)
    levels.add(b"opus bytes")  # not measurable: dropped at read
    assert levels.read() == [(20, 20.0)]
    levels.change_codec(codecs.PCMA_SPEC)
    assert levels.payload_queue() is not None
    levels.add(alaw_encode(sine(0.5).tobytes()))
    ((level, ms),) = levels.read()
    assert level == 9 and ms == 20.0
