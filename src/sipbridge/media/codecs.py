"""Audio codecs for RTP: G.711 (PCMU/PCMA), G.722 and Opus, plus transcoding and resampling.

Linear audio is mono 16-bit PCM in a numpy ``int16`` array at the codec's `CodecSpec.sample_rate`;
encoded audio is one RTP payload (``bytes``). Every encoder and decoder instance keeps its own
state (ADPCM predictors, Opus history), so use one per stream and direction.

The hot path is built for 50 frames/s per direction and hundreds of calls on a few cores:

- G.711 decodes by indexing a 256-entry ``int16`` table with the payload bytes and encodes by
  indexing a 65536-entry ``uint8`` table with the samples read as ``uint16``: one numpy gather per
  frame. The tables are built from the scalar G.711 algorithm in `sipbridge.media.g711`.
- PCMU <-> PCMA goes code to code with ``bytes.translate`` (G.711 Tables 3 and 4), never through
  linear audio (`transcode_g711`).
- G.722 runs at 64 kbit/s through the ``G722`` C extension; Opus through PyAV's libopus, reusing
  one ``AudioFrame`` per encoder instead of allocating one per packet.

Packet loss concealment (`Decoder.conceal`): G.711 and G.722 repeat the last decoded frame with
a linear fade that reaches silence after `PLC_FADE_MS`, then give silence (simpler than the
pitch-period repetition of G.711 Appendix I, which also gives up after 60 ms). Opus uses
libopus's own PLC. PyAV cannot make libopus's "no packet" call: an empty ``av.Packet`` means end
of stream to FFmpeg and leaves the decoder drained for good (every later packet fails with
EOFError). A packet that is only a TOC byte works instead: it holds one frame of length zero,
which RFC 6716 s3.2.1 makes a lost frame, and libopus conceals it from its history.

Bad payloads raise `MediaError` and nothing else, so the transport edge can count and drop them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeVar, cast

import av
import G722
import numpy as np
import soxr
from av.audio.codeccontext import AudioCodecContext
from mypy_extensions import mypyc_attr
from numpy.typing import NDArray

from sipbridge.media import g711
from sipbridge.media.errors import MediaError

__all__ = [
    "G722_SPEC",
    "OPUS_SPEC",
    "PCMA_SPEC",
    "PCMU_SPEC",
    "PLC_FADE_MS",
    "SPECS",
    "CodecSpec",
    "Decoder",
    "Encoder",
    "Resampler",
    "alaw_decode_array",
    "alaw_encode_array",
    "new_decoder",
    "new_encoder",
    "silence_payload",
    "transcode_g711",
    "ulaw_decode_array",
    "ulaw_encode_array",
]


# --- codec descriptions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """One audio codec as the media path sees it: its name, PCM rate and RTP clock.

    How SDP names it (the rtpmap form offered and answered) is `telephony/media.py`'s business:
    `media/` knows no SDP.
    """

    name: str
    """"PCMU", "PCMA", "G722" or "opus"."""
    sample_rate: int
    """Rate of the decoded PCM (what `Decoder.decode` returns and `Encoder.encode` takes)."""
    rtp_clock: int
    """Rate of the RTP timestamp; 8000 for G.722 although it samples at 16 kHz (RFC 3551 s4.5.2)."""

    def frame_samples(self, ms: int = 20) -> int:
        """PCM samples in `ms` milliseconds at `sample_rate`."""
        return self.sample_rate * ms // 1000

    def frame_ticks(self, ms: int = 20) -> int:
        """RTP timestamp increment for `ms` milliseconds of audio."""
        return self.rtp_clock * ms // 1000


PCMU_SPEC: Final[CodecSpec] = CodecSpec(name="PCMU", sample_rate=8000, rtp_clock=8000)
PCMA_SPEC: Final[CodecSpec] = CodecSpec(name="PCMA", sample_rate=8000, rtp_clock=8000)
G722_SPEC: Final[CodecSpec] = CodecSpec(name="G722", sample_rate=16000, rtp_clock=8000)
# RFC 7587 s4.1: the RTP clock is always 48 kHz, whatever rate the encoder ran at; we decode to
# 48 kHz too, so the two agree.
OPUS_SPEC: Final[CodecSpec] = CodecSpec(name="opus", sample_rate=48000, rtp_clock=48000)
SPECS: Final[tuple[CodecSpec, ...]] = (PCMU_SPEC, PCMA_SPEC, G722_SPEC, OPUS_SPEC)


class Encoder(Protocol):
    """Turns one frame of mono PCM at `spec.sample_rate` into one RTP payload."""

    spec: CodecSpec

    def encode(self, pcm: NDArray[np.int16]) -> bytes:
        """Encode one frame: a multiple of 10 ms for G.711 and G.722, exactly 20 ms for Opus.

        Raises ValueError for a frame of the wrong type or length (a bug in the caller)."""
        ...


class Decoder(Protocol):
    """Turns RTP payloads into mono PCM at `spec.sample_rate`."""

    spec: CodecSpec

    def decode(self, payload: bytes) -> NDArray[np.int16]:
        """The PCM in one payload. Raises MediaError for a payload the codec cannot decode.

        G.711 and G.722 decoders keep the returned array for concealment: do not modify it."""
        ...

    def conceal(self, samples: int) -> NDArray[np.int16]:
        """Exactly `samples` samples standing in for lost packets, continuing the stream."""
        ...


# --- G.711 with numpy tables -------------------------------------------------------------------

_T = TypeVar("_T", bound=np.generic)


def _read_only(array: NDArray[_T]) -> NDArray[_T]:
    array.flags.writeable = False
    return array


_ULAW_DECODE_TABLE: Final = _read_only(np.array(g711.ULAW_DECODE, dtype=np.int16))
_ALAW_DECODE_TABLE: Final = _read_only(np.array(g711.ALAW_DECODE, dtype=np.int16))
# Every int16 value, ordered by its bits read as uint16 (0, 1, ... 32767, -32768, ... -1) and
# written little-endian for g711: the encode tables are then indexed by `pcm.view(np.uint16)`.
_EVERY_SAMPLE_BY_BITS: Final = (
    np.arange(0x10000, dtype=np.uint16).view(np.int16).astype("<i2").tobytes()
)
_ULAW_ENCODE_TABLE: Final = np.frombuffer(g711.ulaw_encode(_EVERY_SAMPLE_BY_BITS), np.uint8)
_ALAW_ENCODE_TABLE: Final = np.frombuffer(g711.alaw_encode(_EVERY_SAMPLE_BY_BITS), np.uint8)
del _EVERY_SAMPLE_BY_BITS

_INT16: Final = np.dtype(np.int16)


def _check_pcm(pcm: NDArray[np.int16]) -> None:
    if pcm.dtype != _INT16 or pcm.ndim != 1:
        raise ValueError(f"expected mono int16 PCM, got {pcm.dtype} with shape {pcm.shape}")


def ulaw_decode_array(payload: bytes) -> NDArray[np.int16]:
    """mu-law codes -> linear PCM (a new array, one sample per byte)."""
    return _ULAW_DECODE_TABLE.take(np.frombuffer(payload, dtype=np.uint8))


def alaw_decode_array(payload: bytes) -> NDArray[np.int16]:
    """A-law codes -> linear PCM (a new array, one sample per byte)."""
    return _ALAW_DECODE_TABLE.take(np.frombuffer(payload, dtype=np.uint8))


def ulaw_encode_array(pcm: NDArray[np.int16]) -> bytes:
    """Linear PCM -> mu-law codes. Raises ValueError unless `pcm` is a 1-D int16 array."""
    _check_pcm(pcm)
    return _ULAW_ENCODE_TABLE.take(pcm.view(np.uint16)).tobytes()


def alaw_encode_array(pcm: NDArray[np.int16]) -> bytes:
    """Linear PCM -> A-law codes. Raises ValueError unless `pcm` is a 1-D int16 array."""
    _check_pcm(pcm)
    return _ALAW_ENCODE_TABLE.take(pcm.view(np.uint16)).tobytes()


# Code-to-code tables, G.711 Tables 3 and 4. They differ from "decode, then encode" for 46 mu-law
# and 34 A-law codes (by one step, where a level of one law falls between two of the other): the
# standard's tables are chosen so that converting there and back restores nearly every code.
_TRANSCODE_TABLES: Final[dict[tuple[str, str], bytes]] = {
    ("PCMU", "PCMA"): g711.ULAW_TO_ALAW,
    ("PCMA", "PCMU"): g711.ALAW_TO_ULAW,
}


def transcode_g711(payload: bytes, source: CodecSpec, target: CodecSpec) -> bytes:
    """A PCMU payload as PCMA or the reverse, code by code (no linear audio, no state).

    Returns `payload` itself when the two are the same law. Raises ValueError for non-G.711 specs.
    """
    if source.name == target.name and source.name in ("PCMU", "PCMA"):
        return payload
    table = _TRANSCODE_TABLES.get((source.name, target.name))
    if table is None:
        raise ValueError(
            f"transcode_g711 converts PCMU <-> PCMA, not {source.name} -> {target.name}"
        )
    return payload.translate(table)


# --- packet loss concealment for the waveform codecs -------------------------------------------

PLC_FADE_MS: Final = 60
"""How long concealment of G.711 and G.722 lasts before it gives silence."""


class _RepeatConcealer:
    """Conceals by repeating the last good frame with a linear fade to silence."""

    __slots__ = ("_fade", "_last", "_lost")

    def __init__(self, sample_rate: int) -> None:
        self._fade = sample_rate * PLC_FADE_MS // 1000
        self._last: NDArray[np.int16] | None = None
        self._lost = 0  # samples concealed since the last good frame

    def good(self, pcm: NDArray[np.int16]) -> None:
        if len(pcm):
            self._last = pcm
            self._lost = 0

    def conceal(self, samples: int) -> NDArray[np.int16]:
        start = self._lost
        self._lost += samples
        last = self._last
        if last is None or start >= self._fade:
            return np.zeros(samples, dtype=np.int16)
        position = np.arange(start, start + samples)
        gain = np.clip(1.0 - position / self._fade, 0.0, 1.0)
        # the repetition continues across calls: the pattern has the period of the last frame
        return np.rint(last[position % len(last)] * gain).astype(np.int16)


# --- G.711 -------------------------------------------------------------------------------------


class _G711Encoder:
    __slots__ = ("_table", "spec")

    def __init__(self, spec: CodecSpec, table: NDArray[np.uint8]) -> None:
        self.spec = spec
        self._table = table

    def encode(self, pcm: NDArray[np.int16]) -> bytes:
        _check_pcm(pcm)
        return self._table.take(pcm.view(np.uint16)).tobytes()


class _G711Decoder:
    __slots__ = ("_plc", "_table", "spec")

    def __init__(self, spec: CodecSpec, table: NDArray[np.int16]) -> None:
        self.spec = spec
        self._table = table
        self._plc = _RepeatConcealer(spec.sample_rate)

    def decode(self, payload: bytes) -> NDArray[np.int16]:
        # every byte is a valid code: G.711 cannot fail
        pcm = self._table.take(np.frombuffer(payload, dtype=np.uint8))
        self._plc.good(pcm)
        return pcm

    def conceal(self, samples: int) -> NDArray[np.int16]:
        return self._plc.conceal(samples)


# --- G.722 -------------------------------------------------------------------------------------

_G722_BITRATE: Final = 64000  # mode 1, the only one RTP uses (RFC 3551 s4.5.2)
# A code word that decodes to exact zeros from the reset state and holds any state near zero
# (a DC offset under 60) when repeated. The encoder's own output for zeros is not constant (its
# predictors hunt around zero), so one encoded frame sent over and over drifts.
_G722_SILENCE: Final = 0xFC


class _G722Encoder:
    __slots__ = ("_codec", "spec")

    def __init__(self) -> None:
        self.spec = G722_SPEC
        self._codec = G722.G722(G722_SPEC.sample_rate, _G722_BITRATE)

    def encode(self, pcm: NDArray[np.int16]) -> bytes:
        _check_pcm(pcm)
        if len(pcm) % 2:  # one 8-bit code word per two 16 kHz samples
            raise ValueError(f"G.722 encodes pairs of samples, got {len(pcm)}")
        return cast(bytes, self._codec.encode(pcm))


class _G722Decoder:
    __slots__ = ("_codec", "_plc", "spec")

    def __init__(self) -> None:
        self.spec = G722_SPEC
        self._codec = G722.G722(G722_SPEC.sample_rate, _G722_BITRATE)
        self._plc = _RepeatConcealer(G722_SPEC.sample_rate)

    def decode(self, payload: bytes) -> NDArray[np.int16]:
        # every byte is a valid code word; the extension returns an array('h') we wrap, not copy
        pcm: NDArray[np.int16] = np.frombuffer(self._codec.decode(payload), dtype=np.int16)
        self._plc.good(pcm)
        return pcm

    def conceal(self, samples: int) -> NDArray[np.int16]:
        return self._plc.conceal(samples)


# --- Opus --------------------------------------------------------------------------------------

OPUS_FRAME_MS: Final = 20
OPUS_BITRATE: Final = 32000
OPUS_COMPLEXITY: Final = 5
"""libopus complexity 0-10: 5 costs about 70 % of 10 per frame, at nearly the same quality."""
OPUS_APPLICATION: Final = "lowdelay"
"""CELT only (restricted low delay): 2.5 ms of codec delay instead of 6.5, about half the CPU of
`voip` per frame, and it keeps the waveform (a bridged noise-like signal correlates 0.999 at
32 kbit/s against 0.84 through `voip`'s SILK/hybrid modes). The cost: no in-band FEC, which
only SILK frames carry."""
OPUS_EXPECTED_LOSS: Final = 10
"""Percent loss the encoder plans for; in-band FEC (LBRR) is only sent when this is above 0."""

# Concealment packets: a TOC byte alone (RFC 6716 s3.1, code 0: one frame) announces one frame of
# length zero, which is a lost frame to the decoder (s3.2.1). RFC 7845 s4.1 advises the TOC of the
# previous packet (same mode, bandwidth, channels, frame size) and we use it when its frame fits
# the gap; the rest is filled with CELT-only TOCs of 20, 10, 5 and 2.5 ms. libopus conceals in
# the mode of the last real packet, so their configuration only sets the duration.
_PLC_PACKETS: Final = (
    (960, bytes([31 << 3])),
    (480, bytes([30 << 3])),
    (240, bytes([29 << 3])),
    (120, bytes([28 << 3])),
)
_PLC_STEP: Final = _PLC_PACKETS[-1][0]


def _opus_frame_samples(toc: int) -> int:
    """Samples at 48 kHz in one frame of a packet with this TOC byte (RFC 6716 s3.1, Table 2)."""
    config = toc >> 3
    if config < 12:  # SILK-only: 10, 20, 40, 60 ms
        return (480, 960, 1920, 2880)[config & 3]
    if config < 16:  # hybrid: 10, 20 ms
        return (480, 960)[config & 1]
    return (120, 240, 480, 960)[config & 3]  # CELT-only: 2.5, 5, 10, 20 ms


def _opus_context(mode: Literal["r", "w"]) -> AudioCodecContext:
    context = av.CodecContext.create("libopus", mode)
    context.sample_rate = OPUS_SPEC.sample_rate
    # mono both ways: a mono decoder downmixes stereo packets inside libopus
    context.layout = "mono"
    context.format = "s16"
    return context


class _OpusEncoder:
    __slots__ = ("_context", "_frame", "_frame_pcm", "spec")

    def __init__(self, frame_ms: int = OPUS_FRAME_MS) -> None:
        self.spec = OPUS_SPEC
        context = _opus_context("w")
        context.bit_rate = OPUS_BITRATE
        context.options = {
            "application": OPUS_APPLICATION,
            "frame_duration": str(frame_ms),
            "fec": "1",
            "packet_loss": str(OPUS_EXPECTED_LOSS),
            "compression_level": str(OPUS_COMPLEXITY),
        }
        try:
            context.open()
        except av.FFmpegError as exc:
            raise ValueError(f"opus cannot use {frame_ms} ms frames") from exc
        self._context = context
        samples = OPUS_SPEC.frame_samples(frame_ms)
        # One frame, refilled in place for every packet through a numpy view of its buffer:
        # encode() has copied the samples out (into FFmpeg's frame-size queue) when it returns.
        self._frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        self._frame.sample_rate = OPUS_SPEC.sample_rate
        self._frame_pcm = np.frombuffer(
            memoryview(self._frame.planes[0]), dtype=np.int16, count=samples
        )

    def encode(self, pcm: NDArray[np.int16]) -> bytes:
        _check_pcm(pcm)
        if len(pcm) != len(self._frame_pcm):
            raise ValueError(
                f"opus encodes frames of {len(self._frame_pcm)} samples, got {len(pcm)}"
            )
        self._frame_pcm[:] = pcm
        # libopus turns each frame into exactly one packet, at once
        (packet,) = self._context.encode(self._frame)
        return bytes(packet)


@mypyc_attr(allow_interpreted_subclasses=True)  # tests stand in for a short libopus
class _OpusDecoder:
    __slots__ = ("_context", "_last_toc", "spec")

    def __init__(self) -> None:
        self.spec = OPUS_SPEC
        context = _opus_context("r")
        context.open()
        self._context = context
        self._last_toc: int | None = None  # of the last good packet, for concealment

    def _decode(self, payload: bytes) -> NDArray[np.int16]:
        try:
            frames = self._context.decode(av.Packet(payload))
        except av.FFmpegError as exc:
            raise MediaError(f"opus: {exc}") from exc
        pcm = [
            np.frombuffer(memoryview(frame.planes[0]), dtype=np.int16, count=frame.samples)
            for frame in frames
        ]
        # one frame per packet is the rule; the copy frees FFmpeg's buffer for reuse
        return pcm[0].copy() if len(pcm) == 1 else np.concatenate((_NO_SAMPLES, *pcm))

    def decode(self, payload: bytes) -> NDArray[np.int16]:
        if not payload:
            # RFC 6716 s3.1: a packet has at least the TOC byte. (An empty av.Packet would also
            # put the FFmpeg decoder into end-of-stream for good.)
            raise MediaError("opus: empty payload")
        pcm = self._decode(payload)
        self._last_toc = payload[0]
        return pcm

    def conceal(self, samples: int) -> NDArray[np.int16]:
        parts: list[NDArray[np.int16]] = []
        produced = 0
        last = self._last_toc
        same: tuple[int, bytes] | None = (
            None if last is None else (_opus_frame_samples(last), bytes([last & 0xFC]))
        )
        # bounded: each concealed frame is at least 2.5 ms (and libopus never returns less)
        for _ in range(math.ceil(samples / _PLC_STEP)):
            if produced >= samples:
                break
            remaining = samples - produced
            if same is not None and same[0] <= remaining:
                packet = same[1]
            else:
                packet = next((p for n, p in _PLC_PACKETS if n <= remaining), _PLC_PACKETS[-1][1])
            part = self._decode(packet)
            parts.append(part)
            produced += len(part)
        return _fit(np.concatenate((_NO_SAMPLES, *parts)), samples)


_NO_SAMPLES: Final = np.zeros(0, dtype=np.int16)


def _fit(pcm: NDArray[np.int16], samples: int) -> NDArray[np.int16]:
    """`pcm` cut or padded with silence to exactly `samples`."""
    if len(pcm) >= samples:
        return pcm[:samples]
    return np.concatenate((pcm, np.zeros(samples - len(pcm), dtype=np.int16)))


# --- factories ---------------------------------------------------------------------------------


def new_encoder(spec: CodecSpec) -> Encoder:
    """A fresh encoder (its own state) for one of `SPECS`. Raises ValueError for another spec."""
    if spec == PCMU_SPEC:
        return _G711Encoder(spec, _ULAW_ENCODE_TABLE)
    if spec == PCMA_SPEC:
        return _G711Encoder(spec, _ALAW_ENCODE_TABLE)
    if spec == G722_SPEC:
        return _G722Encoder()
    if spec == OPUS_SPEC:
        return _OpusEncoder()
    raise ValueError(f"no encoder for {spec.name}")


def new_decoder(spec: CodecSpec) -> Decoder:
    """A fresh decoder (its own state) for one of `SPECS`. Raises ValueError for another spec."""
    if spec == PCMU_SPEC:
        return _G711Decoder(spec, _ULAW_DECODE_TABLE)
    if spec == PCMA_SPEC:
        return _G711Decoder(spec, _ALAW_DECODE_TABLE)
    if spec == G722_SPEC:
        return _G722Decoder()
    if spec == OPUS_SPEC:
        return _OpusDecoder()
    raise ValueError(f"no decoder for {spec.name}")


@functools.cache
def silence_payload(spec: CodecSpec, ms: int = 20) -> bytes:
    """One encoded frame of `ms` milliseconds of silence (computed once per codec and length).

    For Opus, `ms` must be a frame length libopus supports (5, 10, 20, 40 or 60)."""
    if spec == PCMU_SPEC:
        return bytes([g711.ULAW_SILENCE]) * spec.frame_samples(ms)
    if spec == PCMA_SPEC:
        return bytes([g711.ALAW_SILENCE]) * spec.frame_samples(ms)
    if spec == G722_SPEC:
        return bytes([_G722_SILENCE]) * (spec.frame_samples(ms) // 2)
    if spec == OPUS_SPEC:
        return _OpusEncoder(frame_ms=ms).encode(np.zeros(spec.frame_samples(ms), dtype=np.int16))
    raise ValueError(f"no silence for {spec.name}")


# --- resampling --------------------------------------------------------------------------------

ResampleQuality = Literal["QQ", "LQ", "MQ", "HQ", "VHQ"]


class PolyphaseResampler:
    """Streaming conversion by an integer factor (up or down), for the telephony rates.

    soxr releases output in blocks (8k <-> 16k about every 60 ms, see `Resampler`): between a
    20 ms decoder and a 20 ms mixer that is up to 60 ms of added delay on every transcoded call.
    This is a windowed-sinc FIR (Kaiser, beta 8, `taps_per_phase` taps per output phase) run as a
    polyphase filter with numpy: every call returns exactly ``len(pcm) * up / down`` samples (the
    input length must be a multiple of `down`), and the only delay is the filter's own, half its
    length at the higher rate (about 1 ms at 8k <-> 16k, 2 ms at 8k <-> 48k). Its cutoff sits at
    0.93 of the lower rate's Nyquist frequency: flat to about 3.1 kHz for 8 kHz, which carries
    G.711's 300-3400 Hz band, at about 20 us per 20 ms frame.
    """

    __slots__ = ("_history", "_kernel", "down", "up")

    def __init__(self, up: int, down: int, *, taps_per_phase: int = 32) -> None:
        if min(up, down) != 1 or max(up, down) < 2:
            raise ValueError("one of up and down must be 1, the other at least 2")
        self.up, self.down = up, down
        factor = max(up, down)
        # At least 96 taps: a factor of 2 with 32 per phase would leave a 2.5 kHz transition.
        taps_per_phase = max(taps_per_phase, -(-96 // factor))
        # An odd, symmetric filter whose delay is a whole number of samples at both rates (a
        # fractional one shifts the stream by part of a sample, which is harmless to the ear but
        # not to a comparison at the lower rate): 2k*factor + 1 taps, delay k*factor samples at
        # the higher rate, padded with zeros to whole phases when going up.
        half = taps_per_phase // 2
        length = 2 * half * factor + 1
        cutoff = 0.93 * 0.5 / factor  # cycles per sample at the higher rate
        centre = np.arange(length) - (length - 1) / 2
        kernel = 2 * cutoff * np.sinc(2 * cutoff * centre) * np.kaiser(length, 8.0)
        kernel *= up / kernel.sum()  # unity gain at DC, and the zero-stuffing made up for
        if up > 1:
            kernel = np.append(kernel, np.zeros(up - 1))
            # y[n*up + p] = sum_k h[p + k*up] * x[n - k]; window rows hold x oldest first.
            phases = kernel.reshape(2 * half + 1, up)  # [k, p] = h[k*up + p]
            self._kernel = np.ascontiguousarray(phases[::-1], dtype=np.float32)
            self._history = np.zeros(2 * half, np.float32)
        else:
            self._kernel = np.ascontiguousarray(kernel[::-1], dtype=np.float32)
            self._history = np.zeros(length - 1, np.float32)

    @property
    def delay(self) -> float:
        """The filter's group delay in output samples (a whole number)."""
        if self.up > 1:
            return (len(self._kernel) - 1) / 2 * self.up
        return (len(self._kernel) - 1) / 2 / self.down

    def process(self, pcm: NDArray[np.int16]) -> NDArray[np.int16]:
        if len(pcm) % self.down:
            raise ValueError(f"input length must be a multiple of {self.down}")
        samples = np.concatenate((self._history, pcm.astype(np.float32)))
        width = len(self._kernel)
        windows = np.lib.stride_tricks.sliding_window_view(samples, width)
        if self.up > 1:
            out = (windows @ self._kernel).reshape(-1)
        else:
            out = windows[:: self.down] @ self._kernel
        self._history = samples[len(samples) - len(self._history) :]
        result: NDArray[np.int16] = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
        return result


class Resampler:
    """Streaming sample-rate conversion of mono int16 PCM (libsoxr), one instance per stream.

    soxr removes its filter delay from the output (the first output sample is the first input
    sample), but it releases output in blocks, so `process` may return fewer samples than
    ``len(pcm) * out_rate / in_rate`` - even none - and catch up later; over a stream the lengths
    add up to the input length converted, less the samples still inside (`delay`). Callers that
    need fixed 20 ms frames keep a FIFO. With the default "LQ" recipe (alias and image rejection
    about 80 dB, right for telephony) the shortfall between calls of 20 ms input stays below:

    ==============  =====================  ====================
    conversion      delay, output samples  as time
    ==============  =====================  ====================
    8k -> 48k       2304                   48 ms
    48k -> 8k       320                    40 ms
    8k <-> 16k      980 / 490              61 ms
    16k <-> 48k     960 / 320              20 ms
    ==============  =====================  ====================

    "QQ" (cubic interpolation) releases every sample at once (delay under 0.3 ms) but does not
    filter: on downsampling, content above the new Nyquist frequency aliases at full level; on
    upsampling, images are only 12 dB down at 3 kHz. Use it only where latency beats fidelity.

    Equal rates make `process` the identity (the input array is returned).
    """

    __slots__ = ("_polyphase", "_stream", "in_rate", "out_rate")

    def __init__(
        self,
        in_rate: int,
        out_rate: int,
        *,
        quality: ResampleQuality = "LQ",
        low_latency: bool = True,
    ) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None
        self._polyphase = None
        if in_rate == out_rate:
            return
        high, low = max(in_rate, out_rate), min(in_rate, out_rate)
        if low_latency and high % low == 0:
            # 8k, 16k, 48k: integer factors, for which `PolyphaseResampler` gives every sample
            # at once instead of soxr's 20-60 ms blocks.
            factor = high // low
            self._polyphase = (
                PolyphaseResampler(factor, 1)
                if out_rate > in_rate
                else PolyphaseResampler(1, factor)
            )
        else:
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

    @property
    def blocky(self) -> bool:
        """Whether output comes in blocks (soxr) rather than with every input."""
        return self._stream is not None

    @property
    def delay(self) -> float:
        """Output samples owed for input already given (soxr's pending output), or the
        polyphase filter's constant group delay."""
        if self._polyphase is not None:
            return self._polyphase.delay
        return 0.0 if self._stream is None else float(self._stream.delay())

    def process(self, pcm: NDArray[np.int16]) -> NDArray[np.int16]:
        """The next converted samples of the stream; raises ValueError unless 1-D int16 (and, for
        an integer factor down, a multiple of it long)."""
        _check_pcm(pcm)
        if self._polyphase is not None:
            return self._polyphase.process(pcm)
        if self._stream is None:
            return pcm
        return cast(NDArray[np.int16], self._stream.resample_chunk(np.ascontiguousarray(pcm)))
