"""Call progress tones and the shipped spoken prompts.

Tones: the frequencies and levels of RFC 4733 s4.2 Table 4 (Precise Tone Plan levels), measured
with an FFT over whole seconds (1 Hz bins, so every tone falls on a bin); the cadence checked
sample by sample against the continuous tone; frames of any sizes joining without a seam.
Prompts: the raw files made by scripts/make_prompts.py load as 8 kHz speech-length audio.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from sipbridge.media.dtmf import detect_digits
from sipbridge.media.prompts import PROMPT_RATE, PROMPTS, load_prompt
from sipbridge.media.tones import (
    BUSY_ETSI,
    BUSY_US,
    DIAL_ETSI,
    DIAL_US,
    RINGBACK_ETSI,
    RINGBACK_US,
    ToneGenerator,
    ToneSpec,
    dbm0_to_amplitude,
    sine_sum,
)

RATES = [8000, 16000, 48000]
ALL_SPECS = [DIAL_US, RINGBACK_US, BUSY_US, DIAL_ETSI, RINGBACK_ETSI, BUSY_ETSI]

# RFC 4733 s4.2 Table 4: frequencies (Hz), on and off times (ms); levels (dBm0 per frequency)
# from the Precise Tone Plan for the U.S. rows
EXPECTED = {
    "dial-us": ((350, 440), (), -13.0),
    "ringback-us": ((440, 480), (2000, 4000), -19.0),
    "busy-us": ((480, 620), (500, 500), -24.0),
    "dial-etsi": ((425,), (), -13.0),
    "ringback-etsi": ((425,), (1000, 4000), -13.0),
    "busy-etsi": ((425,), (500, 500), -13.0),
}


def without_cadence(spec: ToneSpec) -> ToneSpec:
    return ToneSpec(name=spec.name, frequencies=spec.frequencies, level_dbm0=spec.level_dbm0)


def pull(generator: ToneGenerator, total: int, frame: int) -> NDArray[np.int16]:
    """`total` samples pulled as a media clock would: `frame` samples at a time."""
    parts = [generator.frame(min(frame, total - done)) for done in range(0, total, frame)]
    return np.concatenate(parts)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda spec: spec.name)
def test_specs(spec: ToneSpec) -> None:
    assert (spec.frequencies, spec.cadence_ms, spec.level_dbm0) == EXPECTED[spec.name]


def test_dbm0_reference() -> None:
    # G.711: a full-scale sine is +3.14 dBm0 (A-law)
    assert dbm0_to_amplitude(3.14) == pytest.approx(32767)
    assert dbm0_to_amplitude(0.0) == pytest.approx(22826, abs=1)
    assert dbm0_to_amplitude(-20.0) == pytest.approx(dbm0_to_amplitude(0.0) / 10)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda spec: spec.name)
def test_frequencies_and_level(spec: ToneSpec, rate: int) -> None:
    # one second of the tone as it sounds while "on" (test_cadence_exact_to_the_sample shows
    # the "on" parts are exactly this), for 1 Hz FFT bins
    on = ToneGenerator(without_cadence(spec), rate).frame(rate)
    spectrum = np.abs(np.fft.rfft(on.astype(np.float64))) * 2 / rate  # peak amplitude per bin
    strongest = sorted(int(f) for f in np.argsort(spectrum)[-len(spec.frequencies) :])
    assert tuple(strongest) == spec.frequencies
    amplitude = dbm0_to_amplitude(spec.level_dbm0)
    assert spectrum[strongest] == pytest.approx(amplitude, rel=1e-3)
    others = np.delete(spectrum, strongest)
    assert others.max() < amplitude / 1000  # nothing else above -60 dB: a clean tone
    # summed at their peaks the tones stay far from clipping
    assert np.abs(on).max() <= round(amplitude * len(spec.frequencies))


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if s.cadence_ms], ids=lambda s: s.name)
def test_cadence_exact_to_the_sample(spec: ToneSpec, rate: int) -> None:
    on_ms, off_ms = spec.cadence_ms
    on, off = on_ms * rate // 1000, off_ms * rate // 1000
    cycles = 2
    total = cycles * (on + off) + on // 2
    played = pull(ToneGenerator(spec, rate), total, rate // 50)  # 20 ms frames
    continuous = ToneGenerator(without_cadence(spec), rate).frame(total)
    position = np.arange(total) % (on + off)
    assert np.array_equal(played[position < on], continuous[position < on])
    assert not played[position >= on].any()
    # the edges themselves: the last "on" sample sounds, the first "off" one is silent
    for cycle in range(cycles):
        start = cycle * (on + off)
        assert played[start + on - 1] != 0
        assert played[start + on] == 0
        assert played[start + on + off - 1] == 0
        assert played[start + on + off + 1] != 0


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda spec: spec.name)
def test_frames_join_without_a_seam(spec: ToneSpec, rate: int) -> None:
    total = 7 * rate  # past the end of the longest cadence cycle (6 s)
    whole = ToneGenerator(spec, rate).frame(total)
    generator = ToneGenerator(spec, rate)
    sizes = [rate // 50, 1, 0, 333, rate // 100, 7, rate // 50 + 1]
    parts = []
    done = 0
    index = 0
    while done < total:
        size = min(sizes[index % len(sizes)], total - done)
        parts.append(generator.frame(size))
        done += size
        index += 1
    assert generator.position == total
    assert np.array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("spec", [DIAL_US, DIAL_ETSI], ids=lambda spec: spec.name)
def test_phase_is_continuous_for_an_hour(spec: ToneSpec, rate: int) -> None:
    # no step larger than the steepest slope of the summed sines, at frame boundaries or after
    # an hour of frames (the waveform table is indexed modulo its period, so it cannot drift)
    generator = ToneGenerator(spec, rate)
    frame = rate // 50
    first = pull(generator, rate, frame).astype(np.int64)
    generator.position += 3600 * rate - rate  # as if an hour of frames had been pulled
    later = pull(generator, rate, frame).astype(np.int64)
    amplitude = dbm0_to_amplitude(spec.level_dbm0)
    slope = sum(2 * np.pi * f * amplitude / rate for f in spec.frequencies) + 1
    for signal in (first, later):
        assert np.abs(np.diff(signal)).max() <= slope
    # an hour is a whole number of every tone's periods: the same samples come back
    assert np.array_equal(first, later)


def test_zero_sized_frame() -> None:
    generator = ToneGenerator(BUSY_US, 8000)
    assert generator.frame(0).shape == (0,)
    assert generator.frame(0).dtype == np.int16
    assert generator.position == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frequencies": ()}, "at least one frequency"),
        ({"frequencies": (425,), "cadence_ms": (500,)}, "pairs"),
        ({"frequencies": (425,), "cadence_ms": (500, 0)}, "pairs"),
        ({"frequencies": (425,), "cadence_ms": (-1, 500)}, "pairs"),
    ],
)
def test_spec_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ToneSpec(name="bad", level_dbm0=-13.0, **kwargs)  # type: ignore[arg-type]


def test_generator_rejects() -> None:
    with pytest.raises(ValueError, match="cannot be sampled"):
        ToneGenerator(ToneSpec(name="high", frequencies=(4000,), level_dbm0=-13.0), 8000)
    with pytest.raises(ValueError, match="sample rate"):
        ToneGenerator(DIAL_US, 0)
    with pytest.raises(ValueError, match="whole number of samples"):
        ToneGenerator(BUSY_ETSI, 11025)  # 500 ms is 5512.5 samples
    with pytest.raises(ValueError, match="negative"):
        ToneGenerator(DIAL_US, 8000).frame(-1)


def test_sine_sum() -> None:
    wave = sine_sum((1000,), amplitude=1000.0, sample_rate=8000, samples=8)
    # 1 kHz at 8 kHz: eight samples per cycle, starting at phase 0
    assert wave.tolist() == [0, 707, 1000, 707, 0, -707, -1000, -707]
    with pytest.raises(ValueError, match="clip"):
        sine_sum((400, 500), amplitude=20000.0, sample_rate=8000, samples=8)
    with pytest.raises(ValueError, match="clip"):
        sine_sum((400,), amplitude=-1.0, sample_rate=8000, samples=8)
    with pytest.raises(ValueError, match="negative"):
        sine_sum((400,), amplitude=1.0, sample_rate=8000, samples=-1)


# --- prompts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_prompt_loads_as_8khz_speech(name: str) -> None:
    assert PROMPT_RATE == 8000
    samples = load_prompt(name)
    assert samples.dtype == np.int16
    assert samples.ndim == 1
    assert 1.0 <= len(samples) / PROMPT_RATE <= 6.0
    assert len(samples) * 2 < 80_000
    # normalised speech: a peak near -3 dBFS and an RMS well above silence
    assert 0.6 * 32767 <= np.abs(samples).max() <= 32767
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    assert rms > 1000
    # trimmed: it starts and ends near silence, within a short margin
    edge = PROMPT_RATE // 10
    assert np.abs(samples[:10]).max() < 1000
    assert np.abs(samples[-10:]).max() < 1000
    assert np.abs(samples[:edge]).max() > 300 or np.abs(samples[edge : 2 * edge]).max() > 300
    # speech is not mistaken for DTMF
    assert detect_digits(samples, PROMPT_RATE) == ""


def test_prompt_is_shared_and_read_only() -> None:
    samples = load_prompt("enter_pin")
    assert load_prompt("enter_pin") is samples
    assert not samples.flags.writeable
    assert len(load_prompt("wrong_pin")) < len(samples)  # the shorter sentence


def test_unknown_prompt() -> None:
    with pytest.raises(KeyError, match="no prompt named"):
        load_prompt("../../etc/passwd")
