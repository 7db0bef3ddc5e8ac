"""DTMF: RFC 4733 telephone-event packets (parse, send, receive) and in-band tones; no I/O.

- `parse_event` / `DtmfEvent.serialize` read and write the 4-octet payload of RFC 4733 s2.3.
- `DtmfReceiver` turns a stream of RTP packets into one `DigitReceived` per key press, however
  many reports, retransmissions and segments the sender produced and whichever of them were lost.
- `DtmfSender` lays out the packets for a key press (or a string of them) with the time each is
  due, for the caller's 20 ms clock to send.
- `dtmf_tone` and `detect_digits` generate and recognise in-band DTMF (ITU-T Q.23 frequency
  pairs, Goertzel detector), for peers that do not negotiate telephone-event and for tests that
  check a tone reached the far end.

Time is an argument (`now` in seconds, or millisecond offsets the caller schedules), never read
from a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from sipbridge.media.errors import MediaError
from sipbridge.media.rtp import RtpPacket
from sipbridge.media.tones import dbm0_to_amplitude, sine_sum

__all__ = [
    "DIGITS",
    "DigitReceived",
    "DtmfEvent",
    "DtmfPacket",
    "DtmfReceiver",
    "DtmfSender",
    "detect_digits",
    "digit_code",
    "dtmf_tone",
    "parse_event",
]

DIGITS = "0123456789*#ABCD"
"""The DTMF event codes 0-15 in order (RFC 4733 s3.2 Table 3); code 16 (flash) and above are not
digits and are ignored."""

_EVENT_SIZE = 4
_MAX_DURATION = 0xFFFF  # RFC 4733 s2.3.5: 16-bit duration; longer events are segmented
_MAX_VOLUME = 63  # RFC 4733 s2.3.4: 6 bits, 0 to -63 dBm0
_TIMESTAMP_MASK = 0xFFFFFFFF


def digit_code(digit: str) -> int:
    """The RFC 4733 s3.2 event code of a DTMF digit (``"0"``-``"9"``, ``"*"``, ``"#"``, A-D).

    Letters may be lower case. Raises ValueError for anything else.
    """
    code = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"{digit!r} is not a DTMF digit (one of {DIGITS})")
    return code


# --- payload format (RFC 4733 s2.3) ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DtmfEvent:
    """One named-event report (RFC 4733 s2.3, Figure 1).

    `event` is the code (0-255; 0-15 are DTMF, s3.2), `end` the E bit (s2.3.2), `reserved` the R
    bit (s2.3.3: sent as zero, ignored on receipt, kept here so a parse round-trips), `volume` the
    level in -dBm0 (0-63, s2.3.4) and `duration` the length so far in timestamp units (s2.3.5).
    """

    event: int
    end: bool = False
    reserved: bool = False
    volume: int = 0
    duration: int = 0

    @property
    def digit(self) -> str | None:
        """The DTMF digit this event reports, or None for flash and non-DTMF events."""
        return DIGITS[self.event] if 0 <= self.event < len(DIGITS) else None

    def serialize(self) -> bytes:
        """The 4-octet payload; raises `MediaError` if a field does not fit its width."""
        if not 0 <= self.event <= 0xFF:
            raise MediaError(f"event code {self.event} does not fit 8 bits")
        if not 0 <= self.volume <= _MAX_VOLUME:
            raise MediaError(f"volume {self.volume} does not fit 6 bits")
        if not 0 <= self.duration <= _MAX_DURATION:
            raise MediaError(f"duration {self.duration} does not fit 16 bits")
        flags = (0x80 if self.end else 0) | (0x40 if self.reserved else 0) | self.volume
        return bytes((self.event, flags)) + self.duration.to_bytes(2, "big")


def parse_event(payload: bytes) -> DtmfEvent:
    """Parse a telephone-event payload (RFC 4733 s2.3); raises `MediaError` when malformed.

    A payload may pack several contiguous 4-octet events (s2.5.1.5); the first is returned.
    DTMF never needs the others: s3.1 requires a pause of at least 40 ms between digits, and
    packed events must follow each other without a pause.
    """
    length = len(payload)
    if length < _EVENT_SIZE or length % _EVENT_SIZE:
        raise MediaError(f"telephone-event payload of {length} octets is not 4 octets per event")
    flags = payload[1]
    return DtmfEvent(
        event=payload[0],
        end=bool(flags & 0x80),
        reserved=bool(flags & 0x40),
        volume=flags & 0x3F,
        duration=int.from_bytes(payload[2:4], "big"),
    )


# --- receiving (RFC 4733 s2.5.2) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DigitReceived:
    """A key press, reported once, as soon as its first packet arrives.

    `duration_ms` is the duration that first packet reported, so the key was held at least that
    long (the final duration is not known yet; RFC 4733 s2.5.1.2).
    """

    digit: str
    code: int
    duration_ms: int


@dataclass(slots=True, kw_only=True)
class _Segment:
    """What the receiver remembers about one reported event or segment."""

    ssrc: int
    start: int  # RTP timestamp where it began (RFC 4733 s2.2.1)
    code: int
    duration: int  # the longest duration reported for it
    ended: bool  # a report with the E bit arrived
    last_seen: float


class DtmfReceiver:
    """Turns telephone-event RTP packets into `DigitReceived`, exactly once per key press.

    Feed it packets with `receive(packet, now)`: with `payload_type` set, every packet of the
    stream (audio and events share one stream, RFC 4733 s2.1; other payload types are ignored);
    without it, only the telephone-event packets. A key press is reported when its first packet
    arrives, whichever that is:

    - Reports of one event share its RTP timestamp (s2.2.1), so duplicates, the growing interim
      reports and the three retransmitted end packets (s2.5.1.4) of a known timestamp are
      ignored, and a lost start packet only delays the report to the next packet (s2.5.2.2).
    - A lost end needs no timer: the digit was already reported, and the next key press carries
      a new timestamp.
    - A key held longer than the 16-bit duration is sent as segments with new timestamps
      (s2.5.1.3); a report for the same code that begins where an unended segment of it ends
      (its start plus 0xFFFF, or plus its last reported duration for the shorter segments of
      s2.5.2.3.1) continues that key press (s2.5.2.3).
    - A press whose first surviving packet arrives after the next press began (its start reports
      lost, its end retransmissions sent after the next press started) is still reported, late:
      it has not been "played out" (s2.5.2.2) and dropping it would lose a digit.
    - Zero-duration reports are ignored (s2.3.5: DTMF events are not states).

    The receiver forgets an event `memory_s` seconds after its last packet and keeps at most
    `max_events` of them, so its state stays bounded whatever arrives. (A packet delayed by more
    than `memory_s` after the rest of its press would be taken for a new press.)
    """

    def __init__(
        self,
        *,
        payload_type: int | None = None,
        clock_rate: int = 8000,
        memory_s: float = 5.0,
        max_events: int = 64,
    ) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock rate {clock_rate} must be positive")
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.memory_s = memory_s
        self.max_events = max_events
        self._segments: dict[tuple[int, int], _Segment] = {}

    @property
    def remembered(self) -> int:
        """How many events and segments the receiver currently remembers."""
        return len(self._segments)

    def receive(self, packet: RtpPacket, now: float) -> DigitReceived | None:
        """Take one RTP packet received at `now` (seconds); return the key press it reveals.

        Raises `MediaError` for a telephone-event payload that is malformed.
        """
        if self.payload_type is not None and packet.payload_type != self.payload_type:
            return None
        event = parse_event(packet.payload)
        self._forget(now)
        digit = event.digit
        if digit is None or event.duration == 0:
            return None
        ssrc, start = packet.ssrc, packet.timestamp
        known = self._segments.get((ssrc, start))
        if known is not None:
            # a duplicate, interim or end report of a key press already reported
            if known.code == event.event:
                known.duration = max(known.duration, event.duration)
                known.ended = known.ended or event.end
            known.last_seen = now
            return None
        continues = any(
            s.ssrc == ssrc
            and s.code == event.event
            and not s.ended
            and start
            in {
                (s.start + _MAX_DURATION) & _TIMESTAMP_MASK,
                (s.start + s.duration) & _TIMESTAMP_MASK,
            }
            for s in self._segments.values()
        )
        self._remember(
            _Segment(
                ssrc=ssrc,
                start=start,
                code=event.event,
                duration=event.duration,
                ended=event.end,
                last_seen=now,
            )
        )
        if continues:
            return None
        return DigitReceived(
            digit=digit,
            code=event.event,
            duration_ms=event.duration * 1000 // self.clock_rate,
        )

    def _remember(self, segment: _Segment) -> None:
        self._segments[(segment.ssrc, segment.start)] = segment
        while len(self._segments) > self.max_events:
            del self._segments[next(iter(self._segments))]  # the oldest first seen

    def _forget(self, now: float) -> None:
        expired = [
            key
            for key, segment in self._segments.items()
            if now - segment.last_seen > self.memory_s
        ]
        for key in expired:
            del self._segments[key]


# --- sending (RFC 4733 s2.5.1) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DtmfPacket:
    """One telephone-event packet to send.

    Send it `send_at_ms` after the key press starts, with RTP timestamp = the timestamp of that
    start + `timestamp_offset` (non-zero only for later segments of a long press, RFC 4733
    s2.5.1.3, and for later digits of a `DtmfSender.sequence`), the marker bit `marker`, the next
    sequence number (s2.5.1.6) and `event.serialize()` as the payload.
    """

    send_at_ms: int
    timestamp_offset: int
    marker: bool
    event: DtmfEvent


class DtmfSender:
    """Lays out the RFC 4733 packets for DTMF key presses at `clock_rate` (the rtpmap rate).

    Sans-IO: it returns every packet of a key press with its due time, and the caller's clock
    sends them. Reports follow RFC 4733 s5 Table 5: the first report goes out one packet time
    after the key press starts (the duration must be non-zero and only covers time that has
    passed, s2.3.5), with the marker bit (s2.2.2); each later one reports the cumulative duration
    under the same timestamp (s2.5.1.2); the last has the E bit and is sent three times
    (s2.5.1.4). Presses longer than 0xFFFF timestamp units are split into segments (s2.5.1.3).
    """

    def __init__(self, *, clock_rate: int = 8000) -> None:
        if clock_rate <= 0 or clock_rate % 1000:
            raise ValueError(f"clock rate {clock_rate} must be a positive multiple of 1000 Hz")
        self.clock_rate = clock_rate

    def packets(
        self, digit: str, *, duration_ms: int = 250, volume: int = 10, ptime_ms: int = 20
    ) -> list[DtmfPacket]:
        """The packets for one key press of `duration_ms`, one report every `ptime_ms`.

        `volume` is the tone level in -dBm0 (RFC 4733 s2.3.4). Sorted by `send_at_ms`.
        """
        code = digit_code(digit)
        if duration_ms <= 0 or ptime_ms <= 0:
            raise ValueError("duration and packet time must be positive")
        if not 0 <= volume <= _MAX_VOLUME:
            raise ValueError(f"volume {volume} is not 0-63 (-dBm0)")
        per_ms = self.clock_rate // 1000
        step = ptime_ms * per_ms
        total = duration_ms * per_ms
        out: list[tuple[int, int, DtmfPacket]] = []
        segment_start = 0
        while segment_start < total:
            segment_end = min(segment_start + _MAX_DURATION, total)
            last = segment_end == total
            # reports are due on the packet clock: the first tick after the segment starts,
            # until the first tick that reaches its end
            first_tick = segment_start // step + 1
            final_tick = -(-segment_end // step)
            for tick in range(first_tick, final_tick + 1):
                final = tick == final_tick
                event = DtmfEvent(
                    event=code,
                    end=last and final,
                    volume=volume,
                    duration=min(tick * step, segment_end) - segment_start,
                )
                marker = segment_start == 0 and tick == first_tick
                # s2.5.1.4: the final report of each segment goes out three times
                for due in range(tick, tick + 3 if final else tick + 1):
                    packet = DtmfPacket(
                        send_at_ms=due * ptime_ms,
                        timestamp_offset=segment_start,
                        marker=marker and due == tick,
                        event=event,
                    )
                    out.append((due, segment_start, packet))
            segment_start = segment_end
        out.sort(key=lambda item: (item[0], item[1]))
        return [packet for _, _, packet in out]

    def sequence(
        self,
        digits: str,
        *,
        duration_ms: int = 250,
        gap_ms: int = 250,
        volume: int = 10,
        ptime_ms: int = 20,
    ) -> list[DtmfPacket]:
        """The packets for a string of key presses, each `duration_ms` long, `gap_ms` apart.

        Times and timestamp offsets are from the start of the first key press; sorted by
        `send_at_ms`. An empty string gives no packets.
        """
        if gap_ms < 0:
            raise ValueError(f"negative gap {gap_ms} ms")
        per_ms = self.clock_rate // 1000
        out: list[DtmfPacket] = []
        for index, digit in enumerate(digits):
            start_ms = index * (duration_ms + gap_ms)
            for packet in self.packets(
                digit, duration_ms=duration_ms, volume=volume, ptime_ms=ptime_ms
            ):
                out.append(
                    DtmfPacket(
                        send_at_ms=start_ms + packet.send_at_ms,
                        timestamp_offset=start_ms * per_ms + packet.timestamp_offset,
                        marker=packet.marker,
                        event=packet.event,
                    )
                )
        out.sort(key=lambda packet: packet.send_at_ms)
        return out


# --- in-band DTMF (ITU-T Q.23, Q.24) -----------------------------------------------------------

# ITU-T Q.23: the row (low group) and column (high group) frequency of each key
_LOW_GROUP = (697, 770, 852, 941)
_HIGH_GROUP = (1209, 1336, 1477, 1633)
_KEYPAD = ("123A", "456B", "789C", "*0#D")
_PAIRS = {
    key: (_LOW_GROUP[row], _HIGH_GROUP[column])
    for row, keys in enumerate(_KEYPAD)
    for column, key in enumerate(keys)
}


def dtmf_tone(
    digit: str, *, sample_rate: int, duration_ms: int, level_dbm0: float = -10.0
) -> NDArray[np.int16]:
    """In-band DTMF: the ITU-T Q.23 frequency pair of `digit` for `duration_ms`.

    Each of the two frequencies is at `level_dbm0` (the default -10 dBm0 matches a telephone-event
    volume of 10). Raises ValueError for a non-digit or a level whose sum would clip.
    """
    low, high = _PAIRS[DIGITS[digit_code(digit)]]
    return sine_sum(
        (low, high),
        amplitude=dbm0_to_amplitude(level_dbm0),
        sample_rate=sample_rate,
        samples=duration_ms * sample_rate // 1000,
    )


_FREQUENCIES = np.array(_LOW_GROUP + _HIGH_GROUP, dtype=np.float64)
_BLOCK_S = 0.0256  # 205 samples at 8 kHz: ~39 Hz bins resolve the 73 Hz row spacing
_MIN_LEVEL_DBM0 = -36.0  # each tone must be at least this loud
_GROUP_DOMINANCE = 4.0  # the chosen tone has 6 dB more power than any other of its group
_MAX_FORWARD_TWIST = 10.0 ** (4 / 10)  # high group at most 4 dB above low
_MAX_REVERSE_TWIST = 10.0 ** (8 / 10)  # low group at most 8 dB above high
_MIN_TONE_SHARE = 0.6  # the pair carries at least 60 % of the block's energy
_MIN_BLOCKS = 2  # a digit must hold for two consecutive blocks


def _goertzel_power(blocks: NDArray[np.float64], sample_rate: int) -> NDArray[np.float64]:
    """|X(f)|**2 of each block at each DTMF frequency, by the Goertzel recurrence."""
    coefficients = 2.0 * np.cos(2.0 * np.pi * _FREQUENCIES / sample_rate)
    s1 = np.zeros((blocks.shape[0], len(_FREQUENCIES)))
    s2 = np.zeros_like(s1)
    for column in blocks.T:
        s1, s2 = column[:, None] + coefficients * s1 - s2, s1
    power: NDArray[np.float64] = s1 * s1 + s2 * s2 - coefficients * s1 * s2
    return power


def _block_digit(power: NDArray[np.float64], energy: float, size: int) -> str | None:
    """The digit a block holds, or None when it does not look like exactly one valid pair."""
    low = power[:4]
    high = power[4:]
    row = int(np.argmax(low))
    column = int(np.argmax(high))
    low_power = float(low[row])
    high_power = float(high[column])
    # a sine of amplitude A over `size` samples has |X|**2 = (A * size / 2)**2
    min_power = (dbm0_to_amplitude(_MIN_LEVEL_DBM0) * size / 2) ** 2
    if low_power < min_power or high_power < min_power:
        return None
    if np.any(np.delete(low, row) * _GROUP_DOMINANCE > low_power):
        return None
    if np.any(np.delete(high, column) * _GROUP_DOMINANCE > high_power):
        return None
    if high_power > low_power * _MAX_FORWARD_TWIST or low_power > high_power * _MAX_REVERSE_TWIST:
        return None
    # each sine's share of the energy sum(x**2) is 2 |X|**2 / size
    if 2.0 * (low_power + high_power) / size < _MIN_TONE_SHARE * energy:
        return None
    return _KEYPAD[row][column]


def detect_digits(pcm: NDArray[np.int16], sample_rate: int) -> str:
    """The DTMF digits heard in `pcm` (16-bit samples at `sample_rate`), in order.

    Goertzel power at the eight Q.23 frequencies over 25.6 ms blocks taken every 12.8 ms. A block
    holds a digit when exactly one tone of each group stands out, both are loud enough, the
    twist between them is within +4/-8 dB and together they carry most of the block's energy,
    which rejects single tones, speech and noise. A digit counts once it holds for two
    consecutive blocks (about 40 ms, the Q.24 minimum) and again only after a block without it.
    """
    size = max(round(_BLOCK_S * sample_rate), 1)
    hop = max(size // 2, 1)
    samples = np.asarray(pcm, dtype=np.float64)
    if len(samples) < size:
        return ""
    blocks = np.lib.stride_tricks.sliding_window_view(samples, size)[::hop]
    powers = _goertzel_power(blocks, sample_rate)
    energies = np.einsum("ij,ij->i", blocks, blocks)
    digits: list[str] = []
    previous: str | None = None
    run = 0
    for power, energy in zip(powers, energies, strict=True):
        current = _block_digit(power, float(energy), size)
        run = run + 1 if current is not None and current == previous else 1
        if current is not None and run == _MIN_BLOCKS:
            digits.append(current)
        previous = current
    return "".join(digits)
