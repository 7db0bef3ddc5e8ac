"""Audio helpers for tests of call audio: WAV in and out, distinctive test signals, and measures.

- `write_wav` / `read_wav`: 16-bit PCM WAV files. `read_wav` also reads float WAVs and files whose
  header was never finalised (a process killed while writing: the data size is then taken from the
  file's length), and mixes channels down to mono.
- `distinct_signal`: a speech-like sequence of band-limited noise bursts and chirps with gaps,
  seeded, so two calls' directions carry signals that do not correlate with each other.
- `best_correlation`: the normalised cross-correlation peak between a reference and a recording
  (a coefficient in [-1, 1] and the lag), robust to a constant delay and to a gain.
- `resample` (soxr) and `tone_ratio` / `detect_tone` (Goertzel) for tone checks.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

Float = npt.NDArray[np.float64]

_PCM = 1
_FLOAT = 3
_EXTENSIBLE = 0xFFFE


# -- WAV files ------------------------------------------------------------------------------------


def write_wav(path: Path | str, pcm: npt.ArrayLike, rate: int, channels: int = 1) -> Path:
    """Write 16-bit PCM. `pcm` is float in [-1, 1] (clipped) or int16; shape (n,) or (n, channels).

    A mono array written with channels > 1 is duplicated into every channel."""
    data = np.asarray(pcm)
    if data.dtype != np.int16:
        data = np.round(np.clip(data.astype(np.float64), -1.0, 1.0) * 32767.0).astype(np.int16)
    if data.ndim == 1 and channels > 1:
        data = np.repeat(data[:, None], channels, axis=1)
    if data.ndim == 2 and data.shape[1] != channels:
        raise ValueError(f"pcm has {data.shape[1]} channels, not {channels}")
    payload = data.astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE"
    header += b"fmt " + struct.pack(
        "<IHHIIHH", 16, _PCM, channels, rate, rate * channels * 2, channels * 2, 16
    )
    header += b"data" + struct.pack("<I", len(payload))
    path = Path(path)
    path.write_bytes(header + payload)
    return path


def wav_info(path: Path | str) -> tuple[int, int, int, int]:
    """(rate, channels, bits, frames) of a WAV file (tolerant of unfinished headers)."""
    fmt, data = _parse_wav(Path(path).read_bytes())
    _, channels, rate, bits = fmt
    return rate, channels, bits, len(data) // (channels * bits // 8)


def _parse_wav(raw: bytes) -> tuple[tuple[int, int, int, int], bytes]:
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    while pos + 8 <= len(raw):
        cid = raw[pos : pos + 4]
        size = struct.unpack_from("<I", raw, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", raw, body)
            if tag == _EXTENSIBLE and size >= 40:
                tag = struct.unpack_from("<H", raw, body + 24)[0]
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            if fmt is None:
                raise ValueError("data chunk before fmt chunk")
            # A writer killed before closing leaves a size of 0 (or a stale one): take the rest.
            end = len(raw) if size in (0, 0xFFFFFFFF) or body + size > len(raw) else body + size
            data = raw[body:end]
            frame = fmt[1] * fmt[3] // 8
            return fmt, data[: len(data) - len(data) % frame]
        pos = body + size + (size & 1)
    raise ValueError("no data chunk")


def read_wav(path: Path | str, *, mono: bool = True) -> tuple[Float, int]:
    """(samples as float64 in [-1, 1], rate); channels averaged when `mono`, else shape (n, ch)."""
    (tag, channels, rate, bits), data = _parse_wav(Path(path).read_bytes())
    if tag == _PCM and bits == 16:
        samples = np.frombuffer(data, "<i2").astype(np.float64) / 32768.0
    elif tag == _PCM and bits == 32:
        samples = np.frombuffer(data, "<i4").astype(np.float64) / 2147483648.0
    elif tag == _PCM and bits == 8:
        samples = (np.frombuffer(data, np.uint8).astype(np.float64) - 128.0) / 128.0
    elif tag == _FLOAT and bits == 32:
        samples = np.frombuffer(data, "<f4").astype(np.float64)
    elif tag == _FLOAT and bits == 64:
        samples = np.frombuffer(data, "<f8").astype(np.float64)
    else:
        raise ValueError(f"unsupported WAV format tag={tag} bits={bits}")
    frames = samples.reshape(-1, channels)
    if mono:
        return frames.mean(axis=1), rate
    return frames, rate


# -- test signals ---------------------------------------------------------------------------------


def _band_noise(rng: np.random.Generator, n: int, rate: int, lo: float, hi: float) -> Float:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    spectrum[(freqs < lo) | (freqs > hi)] = 0
    out: Float = np.fft.irfft(spectrum, n)
    peak = np.max(np.abs(out)) or 1.0
    return out / peak


def _envelope(n: int, rate: int, ramp_s: float = 0.015) -> Float:
    env = np.ones(n)
    ramp = min(int(rate * ramp_s), n // 2)
    if ramp:
        shape = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        env[:ramp] = shape
        env[n - ramp :] = shape[::-1]
    return env


def distinct_signal(
    seed: int | str,
    rate: int,
    seconds: float = 3.0,
    *,
    pad_s: float = 0.0,
    level: float = 0.35,
    top_hz: float | None = None,
) -> Float:
    """A distinctive, speech-like mono signal: bursts of band-limited noise and chirps (120-350 ms
    each) separated by short gaps, with random levels; then `pad_s` of silence.

    Noise makes the cross-correlation peak sharp; the gaps and level changes make it unique in
    time; a different `seed` gives a signal uncorrelated with this one. The band stays inside what
    each codec carries (G.711 up to 3.4 kHz; wider at 16 and 48 kHz, still below 7 kHz), or
    below `top_hz` (e.g. 3400 for a signal that any codec, after resampling, must carry)."""
    if isinstance(seed, str):
        seed = zlib.crc32(seed.encode())
    rng = np.random.default_rng(seed)
    top = min(3400.0, 0.45 * rate) if rate <= 8000 else 6500.0
    if top_hz is not None:
        top = min(top, top_hz)
    out = np.zeros(int(rate * (seconds + pad_s)))
    total = int(rate * seconds)
    pos = int(rate * rng.uniform(0.02, 0.08))
    while pos < total:
        n = min(int(rate * rng.uniform(0.12, 0.35)), total - pos)
        if n < rate * 0.02:
            break
        if rng.random() < 0.65:
            lo = rng.uniform(200.0, 900.0)
            hi = rng.uniform(lo + 700.0, top)
            burst = _band_noise(rng, n, rate, lo, hi)
        else:
            f0, f1 = rng.uniform(250.0, top * 0.8, size=2)
            t = np.arange(n) / rate
            phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * n / rate))
            burst = np.sin(phase + rng.uniform(0, 2 * np.pi))
        out[pos : pos + n] = burst * _envelope(n, rate) * level * rng.uniform(0.5, 1.0)
        pos += n + int(rate * rng.uniform(0.03, 0.12))
    return out


# -- measures -------------------------------------------------------------------------------------


def resample(pcm: npt.ArrayLike, rate_in: int, rate_out: int) -> Float:
    """High-quality resampling (soxr) of a mono or (n, ch) float signal."""
    data = np.asarray(pcm, dtype=np.float64)
    if rate_in == rate_out:
        return data
    import soxr  # noqa: PLC0415

    out: Float = soxr.resample(data, rate_in, rate_out, quality="HQ")
    return out


def _mono_pair(
    reference: npt.ArrayLike, recorded: npt.ArrayLike, rate: int, recorded_rate: int | None
) -> tuple[Float, Float]:
    """Both signals as mono floats (channels averaged), the recording resampled to `rate` from
    its `recorded_rate` where that differs."""
    ref = np.asarray(reference, dtype=np.float64)
    rec = np.asarray(recorded, dtype=np.float64)
    if ref.ndim > 1:
        ref = ref.mean(axis=1)
    if rec.ndim > 1:
        rec = rec.mean(axis=1)
    if recorded_rate is not None and recorded_rate != rate:
        rec = resample(rec, recorded_rate, rate)
    return ref, rec


def best_correlation(
    reference: npt.ArrayLike,
    recorded: npt.ArrayLike,
    rate: int,
    max_lag_s: float = 2.0,
    *,
    min_overlap_s: float = 0.5,
    recorded_rate: int | None = None,
    inverted: bool = True,
    trim: bool = True,
) -> tuple[float, float]:
    """The best normalised cross-correlation of `recorded` against `reference`: (coef, lag_s).

    The recording is taken to be the reference delayed by a constant lag (either sign, up to
    `max_lag_s`) and scaled by a gain: for each lag the coefficient is the dot product over the
    overlapping window divided by both signals' energies over that same window, so it lies in
    [-1, 1] and equals 1 for a delayed, scaled copy whatever the lengths. The recording's leading
    and trailing silence is trimmed first (a call's recording starts and ends at arbitrary points)
    and windows shorter than `min_overlap_s` are not considered. `lag_s` is the delay of the
    recording: its sample at time t matches the reference's at t - lag_s (negative when the
    recording starts part-way into the reference). `recorded_rate` (default `rate`): the
    recording's rate, resampled to `rate` when it differs. `inverted`: a copy with its polarity
    flipped counts too (the coefficient is then negative); without it, only positive matches.
    `trim=False` keeps the recording's silences: a short reference that must overlap it whole
    (`windows_heard`) could otherwise start before a trimmed recording does.
    """
    ref, rec = _mono_pair(reference, recorded, rate, recorded_rate)
    rec, trimmed = _trim(rec, rate) if trim else (rec, 0)
    ref = ref - ref.mean() if len(ref) else ref
    rec = rec - rec.mean() if len(rec) else rec
    n_ref, n_rec = len(ref), len(rec)
    min_overlap = max(1, int(min_overlap_s * rate))
    if n_ref < min_overlap or n_rec < min_overlap:
        return 0.0, 0.0
    # c[L] = sum_n rec[n] * ref[n + L], for L in (-n_rec, n_ref): rec[n] lines up with ref[n + L].
    size = 1 << int(np.ceil(np.log2(n_ref + n_rec)))
    spec = np.fft.rfft(ref, size) * np.conj(np.fft.rfft(rec, size))
    full = np.fft.irfft(spec, size)
    lags = np.arange(-(n_rec - 1), n_ref)
    corr = np.concatenate([full[size - (n_rec - 1) :], full[:n_ref]])
    # Energies over each lag's overlap: rec[a:b] with ref[a+L:b+L], a = max(0,-L), b = min(n_rec,
    # n_ref-L).
    cum_ref = np.concatenate([[0.0], np.cumsum(ref * ref)])
    cum_rec = np.concatenate([[0.0], np.cumsum(rec * rec)])
    a = np.maximum(0, -lags)
    b = np.minimum(n_rec, n_ref - lags)
    e_rec = cum_rec[b] - cum_rec[a]
    e_ref = cum_ref[b + lags] - cum_ref[a + lags]
    # rec[n] ~ ref[n + L]: a delay of -L samples, plus the trimmed lead.
    lag_s = (trimmed - lags) / rate
    max_lag = int(max_lag_s * rate)
    ok = (b - a >= min_overlap) & (np.abs(trimmed - lags) <= max_lag)
    floor = 1e-9 * max(cum_ref[-1], cum_rec[-1], 1e-30)
    ok &= (e_rec > floor) & (e_ref > floor)
    if not ok.any():
        return 0.0, 0.0
    coef = np.zeros_like(corr)
    coef[ok] = corr[ok] / np.sqrt(e_rec[ok] * e_ref[ok])
    best = int(np.argmax(np.where(ok, np.abs(coef) if inverted else coef, -2.0)))
    return float(np.clip(coef[best], -1.0, 1.0)), float(lag_s[best])


def windows_heard(
    reference: npt.ArrayLike,
    recorded: npt.ArrayLike,
    rate: int,
    *,
    window_s: float = 0.25,
    threshold: float = 0.8,
    recorded_rate: int | None = None,
) -> float:
    """The share of the reference's audible `window_s` windows that the recording carries, each
    found on its own (`best_correlation` > `threshold`, the whole window overlapping).

    A receiver with an adaptive jitter buffer (libwebrtc's NetEq in the SDKs) stretches or
    shortens time where packets come late, so past such a point the recording is the reference
    at another delay and one constant-lag coefficient falls to about the share before it. Each
    window keeps its own lag here: a glitch costs the windows it touches, silence or noise costs
    them all."""
    ref, rec = _mono_pair(reference, recorded, rate, recorded_rate)
    ref, _ = _trim(ref, rate)  # windows from the first audible block, as the recording's trim
    size = int(window_s * rate)
    span_s = (len(ref) + len(rec)) / rate
    found = []
    for start in range(0, len(ref) - size + 1, size):
        window = ref[start : start + size]
        if rms(window) < 1e-3:
            continue
        # positive matches only: a narrow-band window half a period off looks inverted. The
        # recording untrimmed: played softer than sent, its onset can fall under the silence
        # threshold where the reference's did not, and a recording trimmed to its first loud
        # block would start after the first window does, which then could never overlap whole.
        coef, _ = best_correlation(
            window,
            rec,
            rate,
            max_lag_s=span_s,
            min_overlap_s=window_s,
            inverted=False,
            trim=False,
        )
        found.append(coef > threshold)
    return sum(found) / len(found) if found else 0.0


def level_difference_db(
    reference: npt.ArrayLike, recorded: npt.ArrayLike, rate: int, *, recorded_rate: int
) -> float:
    """How much louder (dB) the recording's audible part is than the reference's."""
    ref = np.asarray(reference, dtype=np.float64)
    rec = resample(np.asarray(recorded, dtype=np.float64), recorded_rate, rate)
    heard, _ = _trim(rec, rate)
    sent, _ = _trim(ref, rate)
    return float(20 * np.log10(rms(heard) / rms(sent)))


def _trim(pcm: Float, rate: int, threshold: float = 1e-3) -> tuple[Float, int]:
    """Drop leading and trailing stretches (10 ms blocks) quieter than `threshold` RMS."""
    block = max(1, rate // 100)
    n = len(pcm) // block
    if n == 0:
        return pcm, 0
    rms = np.sqrt(np.mean(pcm[: n * block].reshape(n, block) ** 2, axis=1))
    loud = np.nonzero(rms > threshold)[0]
    if len(loud) == 0:
        return pcm, 0
    start, end = int(loud[0]) * block, min(len(pcm), (int(loud[-1]) + 1) * block)
    return pcm[start:end], start


def rms(pcm: npt.ArrayLike) -> float:
    data = np.asarray(pcm, dtype=np.float64)
    return float(np.sqrt(np.mean(data * data))) if data.size else 0.0


def tone_ratio(pcm: npt.ArrayLike, rate: int, freq: float) -> float:
    """Share of the signal's power at `freq` (Goertzel over the whole signal, Hann window): about
    1.0 for a pure tone at that frequency, near 0 for noise or another tone."""
    data = np.asarray(pcm, dtype=np.float64)
    if data.ndim > 1:
        data = data.mean(axis=1)
    n = len(data)
    if n == 0:
        return 0.0
    window = np.hanning(n)
    x = (data - data.mean()) * window
    t = np.arange(n) / rate
    amplitude = np.abs(np.dot(x, np.exp(-2j * np.pi * freq * t)))
    power = np.sum(x * x)
    if power <= 0:
        return 0.0
    # A pure tone of amplitude A: |X| = A * sum(w) / 2 and power = A^2 * sum(w^2) / 2.
    return float(min(1.0, 2 * amplitude**2 / (power * np.sum(window) ** 2 / np.sum(window**2))))


def detect_tone(pcm: npt.ArrayLike, rate: int, freq: float, min_ratio: float = 0.5) -> bool:
    """Whether most of the signal's power is a tone at `freq`."""
    return tone_ratio(pcm, rate, freq) >= min_ratio
