"""Audio codecs: G.711 tables against the scalar standard, G.722 and Opus round trips, PLC,
PCMU <-> PCMA transcoding, silence frames, resampling, and "decodes or raises MediaError" fuzzing.

Round trips use synthetic signals with a known answer (a 1 kHz sine, a sum of sines under a
syllable-rate envelope) and compare after aligning for the codec's delay.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from sipbridge.media import codecs, g711
from sipbridge.media.codecs import (
    G722_SPEC,
    OPUS_SPEC,
    PCMA_SPEC,
    PCMU_SPEC,
    SPECS,
    CodecSpec,
    PolyphaseResampler,
    Resampler,
    new_decoder,
    new_encoder,
    silence_payload,
    transcode_g711,
)
from sipbridge.media.errors import MediaError

ALL_CODES = bytes(range(256))
# every int16 value, in order
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)


# --- signal helpers ----------------------------------------------------------------------------


def sine(freq: float, rate: int, seconds: float, amplitude: float = 10000.0) -> NDArray[np.int16]:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def speech_like(rate: int, seconds: float) -> NDArray[np.int16]:
    """A voiced-speech stand-in: a 220 Hz voice with partials up to 2.6 kHz, under a 4 Hz
    syllable envelope. (Opus's voip mode high-passes its input, turning the phase of partials
    near 100 Hz; a deep male voice correlates less well sample by sample, though it sounds fine.)
    """
    t = np.arange(int(rate * seconds)) / rate
    voice = (
        np.sin(2 * np.pi * 220 * t)
        + 0.7 * np.sin(2 * np.pi * 660 * t + 0.5)
        + 0.5 * np.sin(2 * np.pi * 1320 * t + 1.0)
        + 0.3 * np.sin(2 * np.pi * 2640 * t + 2.0)
    )
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    return np.rint(4000 * voice * envelope).astype(np.int16)


def frames(pcm: NDArray[np.int16], size: int) -> list[NDArray[np.int16]]:
    return [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]


def best_lag(reference: NDArray[np.int16], output: NDArray[np.int16], max_lag: int) -> int:
    """The delay d (0..max_lag) at which output[d:] lines up best with reference."""
    ref = reference.astype(np.float64)
    out = output.astype(np.float64)
    scores = [float(np.dot(ref[: len(out) - d], out[d:])) for d in range(max_lag + 1)]
    return int(np.argmax(scores))


def aligned(
    reference: NDArray[np.int16], output: NDArray[np.int16], lag: int, skip: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The two signals lined up, without the first `skip` samples (codec start-up)."""
    n = min(len(reference), len(output) - lag)
    return (
        reference[skip:n].astype(np.float64),
        output[lag + skip : lag + n].astype(np.float64),
    )


def snr_db(reference: NDArray[np.float64], output: NDArray[np.float64]) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - output) ** 2)))


# --- specs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "samples", "ticks", "samples_10ms"),
    [
        (PCMU_SPEC, 160, 160, 80),
        (PCMA_SPEC, 160, 160, 80),
        (G722_SPEC, 320, 160, 160),
        (OPUS_SPEC, 960, 960, 480),
    ],
    ids=["PCMU", "PCMA", "G722", "opus"],
)
def test_frame_sizes(spec: CodecSpec, samples: int, ticks: int, samples_10ms: int) -> None:
    assert spec.frame_samples() == samples
    assert spec.frame_ticks() == ticks
    assert spec.frame_samples(10) == samples_10ms
    assert spec.frame_ticks(60) == 3 * ticks


def test_specs_describe_the_codecs() -> None:
    assert [spec.name for spec in SPECS] == ["PCMU", "PCMA", "G722", "opus"]
    assert [(s.sample_rate, s.rtp_clock) for s in SPECS] == [
        (8000, 8000),
        (8000, 8000),
        (16000, 8000),  # RFC 3551 s4.5.2
        (48000, 48000),
    ]
    assert len({*SPECS}) == 4  # hashable, usable as keys


UNKNOWN_SPEC = CodecSpec(name="GSM", sample_rate=8000, rtp_clock=8000)


def test_factories_reject_unknown_codecs() -> None:
    with pytest.raises(ValueError, match="no encoder for GSM"):
        new_encoder(UNKNOWN_SPEC)
    with pytest.raises(ValueError, match="no decoder for GSM"):
        new_decoder(UNKNOWN_SPEC)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_factories_give_the_spec(spec: CodecSpec) -> None:
    assert new_encoder(spec).spec is spec
    assert new_decoder(spec).spec is spec


# --- G.711 numpy functions against the scalar standard ----------------------------------------


def test_g711_decode_arrays_match_the_tables_for_every_code() -> None:
    ulaw = codecs.ulaw_decode_array(ALL_CODES)
    alaw = codecs.alaw_decode_array(ALL_CODES)
    assert ulaw.dtype == alaw.dtype == np.int16
    assert ulaw.tolist() == list(g711.ULAW_DECODE)
    assert alaw.tolist() == list(g711.ALAW_DECODE)
    assert ulaw.tolist() == [g711.decode_ulaw_sample(code) for code in range(256)]
    assert alaw.tolist() == [g711.decode_alaw_sample(code) for code in range(256)]


def test_g711_encode_arrays_match_the_scalar_encoder_for_every_sample() -> None:
    samples = ALL_SAMPLES.tolist()
    assert codecs.ulaw_encode_array(ALL_SAMPLES) == bytes(map(g711.encode_ulaw_sample, samples))
    assert codecs.alaw_encode_array(ALL_SAMPLES) == bytes(map(g711.encode_alaw_sample, samples))


@pytest.mark.parametrize(
    ("encode", "codes"),
    [
        # G.711 / audioop vectors, as in test_g711: 0, +max, -max, -1
        (codecs.ulaw_encode_array, bytes([0xFF, 0x80, 0x00, 0x7E])),
        (codecs.alaw_encode_array, bytes([0xD5, 0xAA, 0x2A, 0x55])),
    ],
    ids=["ulaw", "alaw"],
)
def test_g711_encode_known_values(encode: object, codes: bytes) -> None:
    assert callable(encode)
    assert encode(np.array([0, 32767, -32768, -1], dtype=np.int16)) == codes


def test_g711_known_decoded_values() -> None:
    assert codecs.ulaw_decode_array(bytes([0xFF, 0x00, 0x80])).tolist() == [0, -32124, 32124]
    assert codecs.alaw_decode_array(bytes([0xD5, 0x55, 0xAA])).tolist() == [8, -8, 32256]


@pytest.mark.parametrize("spec", [PCMU_SPEC, PCMA_SPEC], ids=lambda s: s.name)
def test_g711_codec_round_trip(spec: CodecSpec) -> None:
    encoder, decoder = new_encoder(spec), new_decoder(spec)
    linear = decoder.decode(ALL_CODES)
    # every level encodes back to a code of that level (mu-law's two zeros become one)
    assert np.array_equal(decoder.decode(encoder.encode(linear)), linear)
    tone = sine(1000, 8000, 0.02, amplitude=16000)
    payload = encoder.encode(tone)
    assert len(payload) == spec.frame_samples() == 160
    decoded = decoder.decode(payload)
    assert decoded.dtype == np.int16
    assert decoded.shape == (160,)
    assert snr_db(tone.astype(np.float64), decoded.astype(np.float64)) > 30
    # a strided view (every other sample) encodes like its copy
    assert encoder.encode(tone[::2]) == encoder.encode(tone[::2].copy())
    assert encoder.encode(tone[:80]) == payload[:80]  # 10 ms frames too
    assert decoder.decode(b"").shape == (0,)


@pytest.mark.parametrize(
    "bad",
    [np.zeros(160, dtype=np.float32), np.zeros(160, dtype=np.int32), np.zeros((2, 80), np.int16)],
    ids=["float32", "int32", "2-d"],
)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_encoders_reject_non_int16_mono(spec: CodecSpec, bad: NDArray[np.int16]) -> None:
    with pytest.raises(ValueError, match="mono int16"):
        new_encoder(spec).encode(bad)


def test_module_encode_functions_reject_other_dtypes() -> None:
    wrong = np.zeros(4, dtype=np.int32)
    with pytest.raises(ValueError, match="mono int16"):
        codecs.ulaw_encode_array(wrong)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mono int16"):
        codecs.alaw_encode_array(wrong)  # type: ignore[arg-type]


# --- PCMU <-> PCMA -----------------------------------------------------------------------------


def test_transcode_uses_the_g711_tables() -> None:
    assert transcode_g711(ALL_CODES, PCMU_SPEC, PCMA_SPEC) == g711.ULAW_TO_ALAW
    assert transcode_g711(ALL_CODES, PCMA_SPEC, PCMU_SPEC) == g711.ALAW_TO_ULAW
    # G.711 Tables 3/4 vectors: silence and the extremes
    assert transcode_g711(b"\xff\x7f\x80\x00", PCMU_SPEC, PCMA_SPEC) == b"\xd5\x55\xaa\x2a"
    assert transcode_g711(b"\xd5\x55\xaa\x2a", PCMA_SPEC, PCMU_SPEC) == b"\xfe\x7e\x80\x00"


@pytest.mark.parametrize(
    ("source", "target", "differing"),
    [(PCMU_SPEC, PCMA_SPEC, 46), (PCMA_SPEC, PCMU_SPEC, 34)],
    ids=["u2a", "a2u"],
)
def test_transcode_agrees_with_decode_then_encode(
    source: CodecSpec, target: CodecSpec, differing: int
) -> None:
    via_linear = new_encoder(target).encode(new_decoder(source).decode(ALL_CODES))
    direct = transcode_g711(ALL_CODES, source, target)
    # The designed tables of G.711 and "decode, then re-encode" pick different neighbours for
    # the codes whose level falls between two levels of the other law - always adjacent levels.
    decode_target = new_decoder(target).decode
    levels = sorted(set(decode_target(ALL_CODES).tolist()))
    differ = [c for c in range(256) if direct[c] != via_linear[c]]
    assert len(differ) == differing
    for code in differ:
        a, b = decode_target(bytes([direct[code], via_linear[code]])).tolist()
        assert abs(levels.index(a) - levels.index(b)) == 1


def test_transcode_same_law_is_the_payload_itself() -> None:
    payload = b"\x01\x02\x03"
    assert transcode_g711(payload, PCMU_SPEC, PCMU_SPEC) is payload
    assert transcode_g711(payload, PCMA_SPEC, PCMA_SPEC) is payload
    assert transcode_g711(b"", PCMU_SPEC, PCMA_SPEC) == b""


@pytest.mark.parametrize(
    ("source", "target"),
    [(G722_SPEC, PCMU_SPEC), (PCMA_SPEC, OPUS_SPEC), (G722_SPEC, G722_SPEC)],
)
def test_transcode_rejects_other_codecs(source: CodecSpec, target: CodecSpec) -> None:
    with pytest.raises(ValueError, match="PCMU <-> PCMA"):
        transcode_g711(b"\x00", source, target)


# --- G.722 -------------------------------------------------------------------------------------


def test_g722_round_trip_of_a_1khz_sine() -> None:
    tone = sine(1000, 16000, 1.0)
    encoder, decoder = new_encoder(G722_SPEC), new_decoder(G722_SPEC)
    payloads = [encoder.encode(frame) for frame in frames(tone, 320)]
    assert {len(p) for p in payloads} == {160}  # 64 kbit/s: 8 bits per pair of samples
    out = np.concatenate([decoder.decode(p) for p in payloads])
    assert out.dtype == np.int16
    assert len(out) == len(tone)
    lag = best_lag(tone, out, 64)
    assert lag < 40  # the QMF banks' delay is 22 samples, plus the sine's ambiguity
    reference, output = aligned(tone, out, lag, skip=320)
    assert snr_db(reference, output) > 20


def test_g722_10ms_frames_and_odd_lengths() -> None:
    encoder = new_encoder(G722_SPEC)
    assert len(encoder.encode(np.zeros(160, dtype=np.int16))) == 80
    with pytest.raises(ValueError, match="pairs of samples"):
        encoder.encode(np.zeros(161, dtype=np.int16))
    assert new_decoder(G722_SPEC).decode(b"").shape == (0,)


def test_g722_instances_keep_their_own_state() -> None:
    tone = sine(700, 16000, 0.1)
    other = sine(2300, 16000, 0.1)
    alone = [new_encoder(G722_SPEC).encode(tone)]
    first, second = new_encoder(G722_SPEC), new_encoder(G722_SPEC)
    interleaved = [first.encode(tone)]
    second.encode(other)
    assert interleaved == alone
    decoders = new_decoder(G722_SPEC), new_decoder(G722_SPEC)
    assert np.array_equal(decoders[0].decode(alone[0]), decoders[1].decode(alone[0]))


# --- Opus --------------------------------------------------------------------------------------


def opus_round_trip(
    signal: NDArray[np.int16], payloads: list[bytes]
) -> tuple[NDArray[np.int16], float]:
    decoder = new_decoder(OPUS_SPEC)
    out = np.concatenate([decoder.decode(p) for p in payloads])
    lag = best_lag(signal, out, 960)
    reference, output = aligned(signal, out, lag, skip=4800)
    return out, float(np.corrcoef(reference, output)[0, 1])


def test_opus_round_trip_of_speech_like_audio() -> None:
    signal = speech_like(48000, 1.0)
    encoder = new_encoder(OPUS_SPEC)
    payloads = [encoder.encode(frame) for frame in frames(signal, 960)]
    assert len(payloads) == 50
    # RFC 6716 s3.1: 20 ms frames, one frame per packet (code 0), mono (s bit clear)
    assert {p[0] & 0x07 for p in payloads} == {0}
    assert {(p[0] >> 3) in (1, 5, 9, 13, 15, 19, 23, 27, 31) for p in payloads} == {True}
    # about 32 kbit/s: 80 bytes a packet on average
    assert 40 < sum(map(len, payloads)) / len(payloads) < 120
    out, correlation = opus_round_trip(signal, payloads)
    assert out.dtype == np.int16
    assert len(out) == len(signal)
    assert correlation > 0.9


def stereo_opus_packets(signal: NDArray[np.int16]) -> list[bytes]:
    """What a stereo sender puts on the wire (RFC 7587 allows either), made with PyAV."""
    context = av.CodecContext.create("libopus", "w")
    context.sample_rate = 48000
    context.layout = "stereo"
    context.format = "s16"
    context.bit_rate = 64000
    context.open()
    packets: list[bytes] = []
    for frame in frames(signal, 960):
        interleaved = np.repeat(frame, 2).reshape(1, -1)
        av_frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout="stereo")
        av_frame.sample_rate = 48000
        packets += [bytes(p) for p in context.encode(av_frame)]
    return packets


def test_opus_stereo_packets_decode_to_mono() -> None:
    signal = speech_like(48000, 0.5)
    packets = stereo_opus_packets(signal)
    assert {p[0] & 0x04 for p in packets} == {0x04}  # the s bit: stereo
    decoder = new_decoder(OPUS_SPEC)
    first = decoder.decode(packets[0])
    assert first.shape == (960,)
    assert first.dtype == np.int16
    out, correlation = opus_round_trip(signal, packets)
    assert len(out) == len(signal)
    assert correlation > 0.9


def test_opus_encoder_takes_20ms_frames_only() -> None:
    encoder = new_encoder(OPUS_SPEC)
    with pytest.raises(ValueError, match="frames of 960 samples"):
        encoder.encode(np.zeros(480, dtype=np.int16))
    # a strided view encodes like its copy (the encoder copies into its own frame)
    signal = speech_like(48000, 0.04)
    a, b = new_encoder(OPUS_SPEC), new_encoder(OPUS_SPEC)
    assert a.encode(signal[::2]) == b.encode(signal[::2].copy())


def test_opus_bad_payloads_raise_media_error_and_the_decoder_goes_on() -> None:
    signal = speech_like(48000, 0.1)
    encoder = new_encoder(OPUS_SPEC)
    payloads = [encoder.encode(frame) for frame in frames(signal, 960)]
    decoder = new_decoder(OPUS_SPEC)
    decoder.decode(payloads[0])
    with pytest.raises(MediaError, match="empty"):
        decoder.decode(b"")
    # TOC 0xFB: config 31, code 3 (arbitrary frame count), but no frame count byte follows
    with pytest.raises(MediaError, match="opus"):
        decoder.decode(b"\xfb")
    with pytest.raises(MediaError, match="opus"):
        decoder.decode(b"\xff\xff\xff")
    assert decoder.decode(payloads[1]).shape == (960,)


def test_opus_multi_frame_packet() -> None:
    # RFC 6716 s3.2.3, code 1: two frames of equal size; two lost (empty) 20 ms CELT frames
    assert new_decoder(OPUS_SPEC).decode(bytes([31 << 3 | 1])).shape == (1920,)


class FramesFromFFmpeg:
    """Stands in for the PyAV context, returning a chosen number of decoded frames."""

    def __init__(self, count: int) -> None:
        self.count = count

    def decode(self, packet: object) -> list[av.AudioFrame]:
        frame = av.AudioFrame(format="s16", layout="mono", samples=480)
        frame.planes[0].update(np.full(480, 7, dtype=np.int16).tobytes())
        return [frame] * self.count


@pytest.mark.parametrize("count", [0, 2])
def test_opus_decoder_joins_any_number_of_frames(count: int) -> None:
    decoder = new_decoder(OPUS_SPEC)
    decoder._context = FramesFromFFmpeg(count)  # type: ignore[attr-defined]
    pcm = decoder.decode(b"\xf8")
    assert pcm.tolist() == [7] * (480 * count)


def test_opus_conceal_uses_libopus_plc() -> None:
    signal = speech_like(48000, 0.2)
    encoder = new_encoder(OPUS_SPEC)
    payloads = [encoder.encode(frame) for frame in frames(signal, 960)]
    decoder = new_decoder(OPUS_SPEC)
    for payload in payloads[:8]:
        decoder.decode(payload)
    concealed = decoder.conceal(960)
    assert concealed.shape == (960,)
    assert concealed.dtype == np.int16
    # the loss is filled from the voice's history, not with silence ...
    assert np.abs(concealed).max() > 500
    # ... and fades as the loss goes on
    later = np.concatenate([decoder.conceal(960) for _ in range(10)])
    assert np.abs(later[-960:]).max() < np.abs(concealed).max()
    # the stream goes on
    assert decoder.decode(payloads[9]).shape == (960,)


@pytest.mark.parametrize("samples", [960, 480, 240, 120, 1920, 2000, 100, 1, 0])
def test_opus_conceal_lengths(samples: int) -> None:
    decoder = new_decoder(OPUS_SPEC)
    decoder.decode(new_encoder(OPUS_SPEC).encode(speech_like(48000, 0.02)))
    out = decoder.conceal(samples)
    assert out.shape == (samples,)
    assert out.dtype == np.int16


@pytest.mark.parametrize("frame_ms", [10, 40, 60])
def test_opus_conceal_follows_the_stream_frame_size(frame_ms: int) -> None:
    signal = speech_like(48000, 0.3)
    size = OPUS_SPEC.frame_samples(frame_ms)
    encoder = codecs._OpusEncoder(frame_ms=frame_ms)
    payloads = [encoder.encode(frame) for frame in frames(signal, size)]
    decoder = new_decoder(OPUS_SPEC)
    for payload in payloads[:-1]:
        assert decoder.decode(payload).shape == (size,)
    # one lost packet, concealed with the previous packet's TOC (RFC 7845 s4.1)
    concealed = decoder.conceal(size)
    assert concealed.shape == (size,)
    assert np.abs(concealed).max() > 500
    assert decoder.conceal(size + 120).shape == (size + 120,)  # and a CELT TOC for the rest
    assert decoder.decode(payloads[-1]).shape == (size,)


def test_opus_frame_sizes_of_every_toc() -> None:
    # RFC 6716 s3.1 Table 2, at 48 kHz
    sizes = [codecs._opus_frame_samples(config << 3) for config in range(32)]
    assert sizes == [480, 960, 1920, 2880] * 3 + [480, 960] * 2 + [120, 240, 480, 960] * 4


def test_opus_conceal_before_any_packet_is_silence() -> None:
    assert not new_decoder(OPUS_SPEC).conceal(960).any()


def test_opus_conceal_pads_if_libopus_gives_less() -> None:
    short = np.ones(100, dtype=np.int16)

    class Short(codecs._OpusDecoder):
        def _decode(self, payload: bytes) -> NDArray[np.int16]:
            return short

    decoder = Short()
    out = decoder.conceal(960)
    assert out.shape == (960,)
    # bounded: one 2.5 ms step per 120 samples asked, whatever comes back
    assert out[:800].all()
    assert not out[800:].any()


# --- concealment for the waveform codecs -------------------------------------------------------


@pytest.mark.parametrize("spec", [PCMU_SPEC, PCMA_SPEC, G722_SPEC], ids=lambda s: s.name)
def test_waveform_conceal_repeats_then_fades_to_silence(spec: CodecSpec) -> None:
    frame_samples = spec.frame_samples()
    tone = sine(400, spec.sample_rate, 0.02)
    encoder, decoder = new_encoder(spec), new_decoder(spec)
    assert not decoder.conceal(frame_samples).any()  # nothing heard yet: silence
    last = decoder.decode(encoder.encode(tone))
    first = decoder.conceal(frame_samples)
    assert first.shape == (frame_samples,)
    assert first.dtype == np.int16
    # the first concealed frame is the last frame, faded: 20 of the 60 ms fade
    gain = 1 - np.arange(frame_samples) / (3 * frame_samples)
    assert np.abs(first - np.rint(last * gain)).max() <= 1
    second, third, fourth = (decoder.conceal(frame_samples) for _ in range(3))
    assert np.abs(second).max() < np.abs(first).max()
    assert np.abs(third).max() < np.abs(second).max()
    assert not fourth.any()  # after 60 ms, silence
    # a good frame ends the concealment
    decoder.decode(encoder.encode(tone))
    assert np.abs(decoder.conceal(frame_samples)).max() > 1000


def test_waveform_conceal_continues_across_calls() -> None:
    one, two = new_decoder(PCMU_SPEC), new_decoder(PCMU_SPEC)
    payload = new_encoder(PCMU_SPEC).encode(sine(300, 8000, 0.02))
    one.decode(payload)
    two.decode(payload)
    whole = one.conceal(400)
    parts = np.concatenate([two.conceal(n) for n in (70, 130, 1, 199)])
    assert np.array_equal(whole, parts)
    assert one.conceal(0).shape == (0,)


def test_empty_payload_does_not_become_the_concealment_frame() -> None:
    decoder = new_decoder(PCMA_SPEC)
    decoder.decode(new_encoder(PCMA_SPEC).encode(sine(300, 8000, 0.02)))
    decoder.decode(b"")
    assert decoder.conceal(160).any()


# --- silence -----------------------------------------------------------------------------------


def test_g711_silence_payloads() -> None:
    assert silence_payload(PCMU_SPEC) == b"\xff" * 160
    assert silence_payload(PCMA_SPEC) == b"\xd5" * 160
    assert silence_payload(PCMU_SPEC, 10) == b"\xff" * 80
    assert silence_payload(PCMU_SPEC) is silence_payload(PCMU_SPEC)  # cached


def test_g722_silence_decodes_to_silence() -> None:
    payload = silence_payload(G722_SPEC)
    assert payload == b"\xfc" * 160
    assert silence_payload(G722_SPEC, 10) == b"\xfc" * 80
    decoder = new_decoder(G722_SPEC)
    for _ in range(5):  # from the reset state: exact zeros, however often it is sent
        assert not decoder.decode(payload).any()
    # after speech, it settles within a frame to a small offset and stays there
    encoder = new_encoder(G722_SPEC)
    for frame in frames(speech_like(16000, 0.2), 320):
        decoder.decode(encoder.encode(frame))
    decoder.decode(payload)
    for _ in range(10):
        assert np.abs(decoder.decode(payload)).max() < 100


def test_opus_silence_decodes_to_silence() -> None:
    payload = silence_payload(OPUS_SPEC)
    assert 0 < len(payload) <= 20
    assert silence_payload(OPUS_SPEC) is payload
    decoder = new_decoder(OPUS_SPEC)
    for _ in range(5):
        pcm = decoder.decode(payload)
        assert pcm.shape == (960,)
        assert np.abs(pcm).max() <= 16


def test_silence_for_unknown_codecs() -> None:
    with pytest.raises(ValueError, match="no silence for GSM"):
        silence_payload(UNKNOWN_SPEC)


def test_opus_silence_of_other_lengths() -> None:
    payload = silence_payload(OPUS_SPEC, 10)
    assert new_decoder(OPUS_SPEC).decode(payload).shape == (480,)
    with pytest.raises(ValueError, match="7 ms"):
        silence_payload(OPUS_SPEC, 7)


# --- fuzzing: decode or raise MediaError -------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SPECS), st.lists(st.binary(max_size=400), min_size=1, max_size=4))
def test_decoders_return_pcm_or_raise_media_error(spec: CodecSpec, payloads: list[bytes]) -> None:
    decoder = new_decoder(spec)
    for payload in payloads:
        try:
            pcm = decoder.decode(payload)
        except MediaError:
            continue
        assert pcm.dtype == np.int16
        assert pcm.ndim == 1
    assert decoder.conceal(spec.frame_samples()).shape == (spec.frame_samples(),)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=1275).map(lambda b: bytes([b[0] & 0xFC]) + b[1:]))
def test_opus_code0_packets_decode_or_raise_media_error(payload: bytes) -> None:
    # code 0 TOCs reach libopus's frame decoders instead of stopping at the packet parser
    try:
        pcm = new_decoder(OPUS_SPEC).decode(payload)
    except MediaError:
        return
    assert pcm.dtype == np.int16


# --- resampling --------------------------------------------------------------------------------


def stream(resampler: Resampler, pcm: NDArray[np.int16], size: int) -> NDArray[np.int16]:
    return np.concatenate([resampler.process(frame) for frame in frames(pcm, size)])


def test_resampler_identity() -> None:
    resampler = Resampler(8000, 8000)
    pcm = sine(1000, 8000, 0.02)
    assert resampler.process(pcm) is pcm
    assert resampler.delay == 0.0


def test_resampler_8k_48k_8k_keeps_a_1khz_tone() -> None:
    tone = sine(1000, 8000, 1.0)
    up, down = Resampler(8000, 48000, low_latency=False), Resampler(48000, 8000, low_latency=False)
    wide = stream(up, tone, 160)
    assert wide.dtype == np.int16
    # soxr removes its filter delay: the 48 kHz stream is the same tone, in step
    reference48 = sine(1000, 48000, 1.0)
    n = len(wide)
    assert snr_db(reference48[4800:n].astype(float), wide[4800:n].astype(float)) > 40
    back = stream(down, wide, 960)
    n = len(back)
    assert n > 6000
    assert snr_db(tone[800:n].astype(float), back[800:n].astype(float)) > 40


@pytest.mark.parametrize(
    ("in_rate", "out_rate"),
    [(8000, 48000), (48000, 8000), (8000, 16000), (16000, 8000), (16000, 48000), (48000, 16000)],
)
def test_resampler_stream_matches_one_shot(in_rate: int, out_rate: int) -> None:
    signal = speech_like(in_rate, 1.0)
    resampler = Resampler(in_rate, out_rate, low_latency=False)
    assert resampler.blocky
    streamed = stream(resampler, signal, in_rate // 50)
    one_shot = soxr.resample(signal, in_rate, out_rate, quality="LQ")
    expected_total = len(signal) * out_rate // in_rate
    # every sample in or owed: the lengths add up over the stream
    assert len(streamed) + resampler.delay == pytest.approx(expected_total, abs=1)
    assert len(one_shot) == expected_total
    # the streamed output is the one-shot output, up to rounding, where both exist
    diff = np.abs(streamed.astype(np.int32) - one_shot[: len(streamed)].astype(np.int32))
    assert diff.max() <= 2
    # and it lags by at most the documented delay (48 ms at 8k -> 48k)
    assert expected_total - len(streamed) <= 0.061 * out_rate


def test_resampler_output_lengths_add_up_over_time() -> None:
    resampler = Resampler(48000, 8000, low_latency=False)
    produced = 0
    for count in range(1, 201):
        produced += len(resampler.process(np.zeros(960, dtype=np.int16)))
        assert produced + resampler.delay == pytest.approx(count * 160, abs=1)
    assert produced >= 200 * 160 - 0.04 * 8000


def test_resampler_quick_quality_has_no_block_delay() -> None:
    resampler = Resampler(8000, 48000, quality="QQ", low_latency=False)
    lengths = [len(resampler.process(np.zeros(160, dtype=np.int16))) for _ in range(10)]
    assert sum(lengths) >= 9600 - 20
    assert lengths[1:] == [960] * 9


def test_resampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        Resampler(0, 8000)
    with pytest.raises(ValueError, match="mono int16"):
        Resampler(8000, 16000).process(np.zeros(160, dtype=np.float32))


def test_resampler_accepts_strided_input() -> None:
    signal = speech_like(16000, 0.1)
    a, b = Resampler(16000, 8000), Resampler(16000, 8000)
    strided = signal[::2]  # a view with a stride of two samples
    assert np.array_equal(stream(a, strided, 160), stream(b, strided.copy(), 160))


# -- the polyphase path (integer factors, the default for 8k/16k/48k) -------------------------


@pytest.mark.parametrize(
    ("in_rate", "out_rate"),
    [(8000, 48000), (48000, 8000), (8000, 16000), (16000, 8000), (16000, 48000), (48000, 16000)],
)
def test_polyphase_gives_every_frame_at_once_with_a_whole_sample_delay(
    in_rate: int, out_rate: int
) -> None:
    resampler = Resampler(in_rate, out_rate)
    assert not resampler.blocky
    frame_in, frame_out = in_rate // 50, out_rate // 50
    signal = sine(1000, in_rate, 0.5)
    outputs = [resampler.process(signal[i : i + frame_in]) for i in range(0, len(signal), frame_in)]
    assert {len(o) for o in outputs} == {frame_out}
    delay = resampler.delay
    assert delay == int(delay) and delay <= 0.0031 * out_rate  # at most 3.1 ms
    out = np.concatenate(outputs)
    reference = sine(1000, out_rate, 0.5)
    d = int(delay)
    # the same tone, in step once the filter delay is taken off
    expected = reference[out_rate // 10 : -d].astype(float)
    got = out[out_rate // 10 + d :].astype(float)
    error = float(np.sum((expected - got) ** 2))
    assert error <= 1e-4 * float(np.sum(expected**2))  # 40 dB or better


@pytest.mark.parametrize(("up", "down"), [(2, 1), (1, 2), (6, 1), (1, 6)])
def test_polyphase_passes_the_telephone_band_and_stops_above_nyquist(up: int, down: int) -> None:
    low = 8000
    in_rate = low if up > 1 else low * down
    out_rate = in_rate * up // down

    def gain(freq: float) -> float:
        resampler = PolyphaseResampler(up, down)
        x = sine(freq, in_rate, 1.0)
        frame = in_rate // 50
        y = np.concatenate([resampler.process(x[i : i + frame]) for i in range(0, len(x), frame)])
        tail = y[len(y) // 4 :].astype(float)
        return float(np.sqrt(2 * np.mean(tail**2)) / (np.abs(x).max()))

    for freq in (300.0, 1000.0, 3000.0, 3400.0):
        assert 0.9 < gain(freq) < 1.02, freq
    if up == 1:  # going down, what 8 kHz cannot hold must not fold back into the band
        assert gain(5000.0) < 0.01
        assert out_rate == low


def test_polyphase_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="one of up and down"):
        PolyphaseResampler(2, 2)
    with pytest.raises(ValueError, match="one of up and down"):
        PolyphaseResampler(1, 1)
    with pytest.raises(ValueError, match="multiple of 6"):
        PolyphaseResampler(1, 6).process(np.zeros(100, dtype=np.int16))
    # 44.1 kHz is no integer factor of 8 kHz: soxr's stream takes it
    assert Resampler(44100, 8000).blocky
