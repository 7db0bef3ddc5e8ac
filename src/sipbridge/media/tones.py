"""Call progress tones (dial, ringback, busy) as 16-bit PCM, pulled frame by frame; no I/O.

A `ToneGenerator` is driven by the caller's media clock: every 20 ms it asks for the next
`frame(samples)` and gets exactly that many samples, continuing where the previous frame ended.
Nothing here reads a clock, so the cadence is exact to the sample and tests need no sleeping.

Frequencies and cadences are those listed in RFC 4733 s4.2 Table 4: the North American Precise
Tone Plan (dial 350+440 Hz continuous, ringing 440+480 Hz 2 s on / 4 s off, busy 480+620 Hz 0.5 s on
/ 0.5 s off, at -13, -19 and -24 dBm0 per frequency) and the 425 Hz tones harmonised for Europe in
ETSI TR 101 041 (dial continuous, ringing 1 s on / 4 s off, busy 0.5 s on / 0.5 s off).

Each generator holds one period of its waveform as an int16 table (the shortest run of samples
after which every frequency has completed a whole number of cycles) and indexes it with the
running sample position, so the phase is continuous across frames and never drifts, however
long the call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BUSY_ETSI",
    "BUSY_US",
    "DIAL_ETSI",
    "DIAL_US",
    "RINGBACK_ETSI",
    "RINGBACK_US",
    "ToneGenerator",
    "ToneSpec",
    "dbm0_to_amplitude",
    "sine_sum",
]

# ITU-T G.711: a full-scale sine (peak 32767 in 16-bit linear) is +3.14 dBm0 for A-law (+3.17 for
# mu-law), so 0 dBm0 is a sine of peak 32767 / 10**(3.14 / 20), about 22,770.
_FULL_SCALE_DBM0 = 3.14
_INT16_MAX = 32767


def dbm0_to_amplitude(level_dbm0: float) -> float:
    """Peak amplitude, in 16-bit linear units, of a sine at `level_dbm0` (G.711 reference)."""
    return _INT16_MAX * math.pow(10.0, (level_dbm0 - _FULL_SCALE_DBM0) / 20.0)


def sine_sum(
    frequencies: tuple[int, ...], *, amplitude: float, sample_rate: int, samples: int
) -> NDArray[np.int16]:
    """`samples` samples of equal-amplitude sines, all starting at phase 0, summed and rounded.

    Raises ValueError when the sum could clip (`amplitude * len(frequencies)` above 32767) or a
    frequency is not below the Nyquist frequency.
    """
    _check_frequencies(frequencies, sample_rate)
    if amplitude < 0 or amplitude * len(frequencies) > _INT16_MAX:
        raise ValueError(f"amplitude {amplitude} x {len(frequencies)} tones would clip")
    if samples < 0:
        raise ValueError(f"negative sample count {samples}")
    n = np.arange(samples, dtype=np.int64)
    wave = np.zeros(samples, dtype=np.float64)
    for frequency in frequencies:
        # (frequency * n) % sample_rate keeps the argument exact in integers before scaling
        wave += np.sin((2.0 * np.pi / sample_rate) * ((frequency * n) % sample_rate))
    return np.rint(wave * amplitude).astype(np.int16)


def _check_frequencies(frequencies: tuple[int, ...], sample_rate: int) -> None:
    if sample_rate <= 0:
        raise ValueError(f"sample rate {sample_rate} must be positive")
    for frequency in frequencies:
        if not 0 < frequency < sample_rate / 2:
            raise ValueError(f"{frequency} Hz cannot be sampled at {sample_rate} Hz")


@dataclass(frozen=True, slots=True, kw_only=True)
class ToneSpec:
    """A call progress tone: summed sines of whole-Hz `frequencies`, each at `level_dbm0`.

    `cadence_ms` alternates on and off times in milliseconds, starting with on, and repeats;
    empty means a continuous tone.
    """

    name: str
    frequencies: tuple[int, ...]
    level_dbm0: float
    cadence_ms: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.frequencies:
            raise ValueError("a tone needs at least one frequency")
        if len(self.cadence_ms) % 2 or any(ms <= 0 for ms in self.cadence_ms):
            raise ValueError(f"cadence {self.cadence_ms} is not pairs of positive on/off times")


# RFC 4733 s4.2 Table 4 and the Precise Tone Plan levels (per frequency)
DIAL_US = ToneSpec(name="dial-us", frequencies=(350, 440), level_dbm0=-13.0)
RINGBACK_US = ToneSpec(
    name="ringback-us", frequencies=(440, 480), level_dbm0=-19.0, cadence_ms=(2000, 4000)
)
BUSY_US = ToneSpec(name="busy-us", frequencies=(480, 620), level_dbm0=-24.0, cadence_ms=(500, 500))
# RFC 4733 s4.2 Table 4 "ITU" rows with the values ETSI TR 101 041 harmonised for Europe
DIAL_ETSI = ToneSpec(name="dial-etsi", frequencies=(425,), level_dbm0=-13.0)
RINGBACK_ETSI = ToneSpec(
    name="ringback-etsi", frequencies=(425,), level_dbm0=-13.0, cadence_ms=(1000, 4000)
)
BUSY_ETSI = ToneSpec(name="busy-etsi", frequencies=(425,), level_dbm0=-13.0, cadence_ms=(500, 500))


class ToneGenerator:
    """Plays a `ToneSpec` at `sample_rate`, one frame at a time, from the start of its cadence.

    `frame(n)` returns the next `n` samples; frames of any sizes concatenate to exactly the signal
    one large frame would have given (continuous phase, cadence exact to the sample).
    """

    def __init__(self, spec: ToneSpec, sample_rate: int) -> None:
        _check_frequencies(spec.frequencies, sample_rate)
        self.spec = spec
        self.sample_rate = sample_rate
        self.position = 0
        """Samples produced so far."""
        # every frequency completes a whole number of cycles in sample_rate / gcd(...) samples
        period = sample_rate // reduce(math.gcd, spec.frequencies, sample_rate)
        self._wave = sine_sum(
            spec.frequencies,
            amplitude=dbm0_to_amplitude(spec.level_dbm0),
            sample_rate=sample_rate,
            samples=period,
        )
        bounds = []
        total = 0
        for ms in spec.cadence_ms:
            if ms * sample_rate % 1000:
                raise ValueError(f"{ms} ms is not a whole number of samples at {sample_rate} Hz")
            total += ms * sample_rate // 1000
            bounds.append(total)
        # sample offsets within one cadence cycle where the tone switches off, on, off, ...
        self._bounds = np.array(bounds, dtype=np.int64)
        self._cycle = total

    def frame(self, samples: int) -> NDArray[np.int16]:
        """The next `samples` samples of the tone (silence during the cadence's off times)."""
        if samples < 0:
            raise ValueError(f"negative sample count {samples}")
        positions = self.position + np.arange(samples, dtype=np.int64)
        self.position += samples
        out = self._wave[positions % len(self._wave)]
        if self._cycle:
            # even intervals of the cadence are "on", odd ones "off"
            interval = np.searchsorted(self._bounds, positions % self._cycle, side="right")
            out[interval % 2 == 1] = 0
        return out
