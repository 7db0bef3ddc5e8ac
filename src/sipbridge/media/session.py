"""Per-call RTP stream state, sans-IO: what we receive, what we send, and where to send it.

- `RtpReceiver` follows one remote source: sequence validation and extension (RFC 3550 A.1),
  loss (A.3), interarrival jitter (A.8), and the reception report block for our RTCP (s6.4.1).
- `RtpSender` numbers and stamps our outgoing packets (s5.1) and fills the SR sender info.
- `Latch` picks the address to send to: symmetric RTP (RFC 4961) latched to where the peer's
  packets really come from, since carriers and phones behind NAT put unreachable addresses in SDP.

Time is an argument (`now`, seconds, monotonic); wall-clock time only enters as the NTP timestamp
the caller passes to `sender_info`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from sipbridge.media.errors import MediaError
from sipbridge.media.rtp import ReportBlock, RtpPacket, SenderInfo, SenderReport

__all__ = [
    "MAX_DROPOUT",
    "MAX_MISORDER",
    "MIN_SEQUENTIAL",
    "Latch",
    "ReceiverStats",
    "RtpReceiver",
    "RtpSender",
    "ntp_timestamp",
    "rtcp_interval",
]

# RFC 3550 A.1
MIN_SEQUENTIAL = 2  # packets in sequence before a source is valid
MAX_DROPOUT = 3000  # a forward jump up to this is loss, not a restart
MAX_MISORDER = 100  # a backward step up to this is reordering
RTP_SEQ_MOD = 1 << 16

_TS_MOD = 1 << 32
_U32 = 0xFFFFFFFF
# RFC 5905 s6: NTP counts from 1900-01-01, Unix from 1970-01-01, 70 years (17 leap days) apart
_NTP_UNIX_OFFSET = 2_208_988_800
# RFC 3550 s6.2: the minimum RTCP interval, halved before the first report
RTCP_MIN_INTERVAL = 5.0


def _signed32(delta: int) -> int:
    """A timestamp difference modulo 2^32 as a signed value (timestamps wrap, s5.1)."""
    return (delta + (_TS_MOD >> 1)) % _TS_MOD - (_TS_MOD >> 1)


def ntp_timestamp(wallclock: float) -> int:
    """The 64-bit NTP timestamp (RFC 5905 s6, 32.32 fixed point) for Unix time `wallclock`.

    Wraps into NTP era 1 in February 2036 as the 64-bit field does (RFC 3550 s4).
    """
    seconds = math.floor(wallclock)
    fraction = int((wallclock - seconds) * (1 << 32))
    return (((seconds + _NTP_UNIX_OFFSET) << 32) | fraction) & 0xFFFF_FFFF_FFFF_FFFF


def rtcp_interval(random_fraction: float, *, initial: bool = False) -> float:
    """Seconds until our next RTCP report (RFC 3550 s6.2, A.7, simplified for a two-party call).

    With two members and the usual 5% RTCP bandwidth the bandwidth-based interval is far below
    the 5 s minimum, so the minimum rules (halved before the first report, s6.2); it is spread
    over [0.5, 1.5] times itself by `random_fraction` in [0, 1] (s6.3.1) so reports do not
    synchronise. No timer reconsideration is done, so no e-3/2 compensation is applied.
    """
    if not 0.0 <= random_fraction <= 1.0:
        raise ValueError(f"random fraction {random_fraction} is not in [0, 1]")
    interval = RTCP_MIN_INTERVAL / 2 if initial else RTCP_MIN_INTERVAL
    return interval * (random_fraction + 0.5)


# --- receiving ---------------------------------------------------------------------------------


_HEADER = struct.Struct("!BBHII")  # RFC 3550 s5.1 fixed header


# Dataclasses made for every call write their own `__init__` (`init=False`): mypyc compiles
# it, where the one the dataclasses module generates stays interpreted (issue 18).
@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class ReceiverStats:
    """What `RtpReceiver` knows about the current source.

    `packets` and `octets` (payload) count packets accepted since the source was validated;
    `lost` is RFC 3550 A.3 cumulative loss (negative when duplicates outnumber losses);
    `jitter_seconds` the A.8 estimate; `last_packet_at` when the last packet was accepted;
    `dropped` the packets refused since the receiver was made (probation, bad jumps);
    `jitter_mean_seconds` the mean of |D| over the source's packets: what J estimates (A.8 is
    an exponential average of |D| over about the last 16 packets), steadier over a call.
    """

    packets: int
    octets: int
    lost: int
    jitter_seconds: float
    last_packet_at: float | None
    dropped: int
    jitter_mean_seconds: float = 0.0

    def __init__(
        self,
        *,
        packets: int,
        octets: int,
        lost: int,
        jitter_seconds: float,
        last_packet_at: float | None,
        dropped: int,
        jitter_mean_seconds: float = 0.0,
    ) -> None:
        object.__setattr__(self, "packets", packets)
        object.__setattr__(self, "octets", octets)
        object.__setattr__(self, "lost", lost)
        object.__setattr__(self, "jitter_seconds", jitter_seconds)
        object.__setattr__(self, "last_packet_at", last_packet_at)
        object.__setattr__(self, "dropped", dropped)
        object.__setattr__(self, "jitter_mean_seconds", jitter_mean_seconds)


class RtpReceiver:
    """The state of one remote RTP source (RFC 3550 A.1, A.3, A.8).

    A source is valid after `MIN_SEQUENTIAL` packets in sequence from one SSRC; until then its
    packets are refused. A new SSRC goes through the same probation while the current source
    keeps its state, so one stray packet cannot reset the call's statistics; once validated it
    replaces the current source and the statistics start again (s6.4.1 reports are per SSRC).
    """

    __slots__ = (
        "_bad_seq",
        "_base_seq",
        "_candidate_seq",
        "_candidate_ssrc",
        "_cycles",
        "_d_count",
        "_d_sum",
        "_dropped",
        "_expected_prior",
        "_jitter",
        "_last_arrival",
        "_last_packet_at",
        "_last_sr",
        "_last_sr_at",
        "_last_sr_ssrc",
        "_last_timestamp",
        "_max_seq",
        "_octets",
        "_packets",
        "_probation",
        "_received",
        "_received_prior",
        "clock_rate",
        "ssrc",
    )

    def __init__(self, clock_rate: int) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock rate {clock_rate} must be positive")
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self._candidate_ssrc: int | None = None
        self._candidate_seq = 0
        self._probation = 0
        self._dropped = 0
        self._last_sr_ssrc: int | None = None
        self._last_sr = 0
        self._last_sr_at = 0.0
        self._start_source(None, 0)
        self._last_packet_at: float | None = None

    def _start_source(self, ssrc: int | None, seq: int) -> None:
        self.ssrc = ssrc
        self._init_seq(seq)
        self._jitter = 0.0
        self._d_sum = 0.0
        self._d_count = 0
        self._packets = 0
        self._octets = 0

    def _init_seq(self, seq: int) -> None:
        # RFC 3550 A.1 init_seq(). The jitter's reference packet goes too: a sender that restarts
        # its sequence numbers usually restarts its timestamps, which is no jitter.
        self._base_seq = seq
        self._max_seq = seq
        self._bad_seq = RTP_SEQ_MOD + 1  # so seq == bad_seq is false
        self._cycles = 0
        self._received = 0
        self._received_prior = 0
        self._expected_prior = 0
        self._last_arrival: float | None = None
        self._last_timestamp = 0

    def receive(self, packet: RtpPacket, now: float) -> bool:
        """Account for a packet that arrived at `now`; False if it should be dropped.

        Refused: packets of a source still on probation, and the first packet after a jump of
        more than `MAX_DROPOUT` (RFC 3550 A.1; a second one in sequence restarts the count).
        Duplicates and reordered packets are accepted and counted as received, as A.1 does.
        """
        seq = packet.sequence_number
        if packet.ssrc != self.ssrc:
            if not self._probe(packet.ssrc, seq):
                self._dropped += 1
                return False
            self._start_source(packet.ssrc, seq)
            self._received = 1  # A.1: a source leaving probation counts its packet
        elif not self._update_seq(seq):
            self._dropped += 1
            return False
        self._packets += 1
        self._octets += len(packet.payload)
        self._last_packet_at = now
        self._update_jitter(packet.timestamp, now)
        return True

    def _probe(self, ssrc: int, seq: int) -> bool:
        """RFC 3550 A.1 probation of a new source: True once it is valid."""
        if ssrc == self._candidate_ssrc and seq == (self._candidate_seq + 1) % RTP_SEQ_MOD:
            self._probation -= 1
        else:
            self._candidate_ssrc = ssrc
            self._probation = MIN_SEQUENTIAL - 1
        self._candidate_seq = seq
        if self._probation > 0:
            return False
        self._candidate_ssrc = None
        return True

    def _update_seq(self, seq: int) -> bool:
        """RFC 3550 A.1 update_seq() for a valid source."""
        udelta = (seq - self._max_seq) % RTP_SEQ_MOD
        if udelta < MAX_DROPOUT:
            # in order, with a permissible gap
            if seq < self._max_seq:
                self._cycles += RTP_SEQ_MOD  # the sequence number wrapped
            self._max_seq = seq
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            # the sequence number made a very large jump
            if seq != self._bad_seq:
                self._bad_seq = (seq + 1) % RTP_SEQ_MOD
                return False
            # two sequential packets: assume the other side restarted without telling us
            self._init_seq(seq)
        # else a duplicate or reordered packet
        self._received += 1
        return True

    def _update_jitter(self, timestamp: int, now: float) -> None:
        # RFC 3550 A.8: D(i,j) = (Rj - Ri) - (Sj - Si) in timestamp units, J += (|D| - J) / 16
        if self._last_arrival is not None:
            d = (now - self._last_arrival) * self.clock_rate - _signed32(
                timestamp - self._last_timestamp
            )
            d = abs(d)
            self._jitter += (d - self._jitter) / 16
            self._d_sum += d
            self._d_count += 1
        self._last_arrival = now
        self._last_timestamp = timestamp

    @property
    def _expected(self) -> int:
        # RFC 3550 A.3
        return self._cycles + self._max_seq - self._base_seq + 1

    @property
    def stats(self) -> ReceiverStats:
        return ReceiverStats(
            packets=self._packets,
            octets=self._octets,
            lost=self._expected - self._received if self.ssrc is not None else 0,
            jitter_seconds=self._jitter / self.clock_rate,
            last_packet_at=self._last_packet_at,
            dropped=self._dropped,
            jitter_mean_seconds=self._d_sum / self._d_count / self.clock_rate
            if self._d_count
            else 0.0,
        )

    def sender_report_received(self, sr: SenderReport, now: float) -> None:
        """Remember the last SR (RFC 3550 s6.4.1) for the LSR and DLSR of our next report."""
        self._last_sr_ssrc = sr.ssrc
        self._last_sr = sr.sender_info.ntp_middle
        self._last_sr_at = now

    def report_block(self, now: float) -> ReportBlock | None:
        """The reception report about the current source (RFC 3550 s6.4.1), or None before one
        is valid. Each call ends a reporting interval: `fraction_lost` covers the time since the
        previous call (A.3)."""
        if self.ssrc is None:
            return None
        expected = self._expected
        lost = expected - self._received
        expected_interval = expected - self._expected_prior
        self._expected_prior = expected
        received_interval = self._received - self._received_prior
        self._received_prior = self._received
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            fraction = 0
        else:
            # below 256: a packet received is what moved the expected count
            fraction = (lost_interval << 8) // expected_interval
        last_sr = delay = 0
        if self._last_sr_ssrc == self.ssrc:
            # s6.4.1: LSR is the middle 32 bits of the SR's NTP timestamp, DLSR the time since
            # it arrived in units of 1/65536 s; both zero before any SR
            last_sr = self._last_sr
            delay = min(_U32, max(0, int((now - self._last_sr_at) * 65536)))
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            # A.3: clamped to the 24-bit signed field
            cumulative_lost=min(0x7FFFFF, max(-0x800000, lost)),
            highest_sequence=(self._cycles + self._max_seq) & _U32,
            jitter=min(_U32, int(self._jitter)),
            last_sr=last_sr,
            delay_since_last_sr=delay,
        )


# --- sending -----------------------------------------------------------------------------------


class RtpSender:
    """Our outgoing RTP stream: one SSRC, sequence numbers and timestamps (RFC 3550 s5.1).

    The sequence number goes up by one per packet and the timestamp by the samples each packet
    carries, both wrapping. The first packet after `skip` (silence not sent) carries the marker
    bit (RFC 3551 s4.1: first packet of a talkspurt).
    """

    __slots__ = (
        "_marker_pending",
        "_octets",
        "_packets",
        "_sequence",
        "_timestamp",
        "clock_rate",
        "payload_type",
        "ssrc",
    )

    def __init__(
        self,
        *,
        ssrc: int,
        clock_rate: int,
        payload_type: int,
        initial_sequence: int,
        initial_timestamp: int,
    ) -> None:
        if not 0 <= ssrc <= _U32:
            raise ValueError(f"SSRC {ssrc} does not fit 32 bits")
        if clock_rate <= 0:
            raise ValueError(f"clock rate {clock_rate} must be positive")
        if not 0 <= payload_type <= 127:
            raise ValueError(f"payload type {payload_type} out of range")
        if not 0 <= initial_sequence < RTP_SEQ_MOD:
            raise ValueError(f"sequence number {initial_sequence} does not fit 16 bits")
        if not 0 <= initial_timestamp <= _U32:
            raise ValueError(f"timestamp {initial_timestamp} does not fit 32 bits")
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.payload_type = payload_type
        self._sequence = initial_sequence
        self._timestamp = initial_timestamp
        self._marker_pending = False
        self._packets = 0
        self._octets = 0

    @property
    def sequence_number(self) -> int:
        """The sequence number the next packet will carry."""
        return self._sequence

    @property
    def timestamp(self) -> int:
        """The timestamp the next packet will carry (unless given one)."""
        return self._timestamp

    @property
    def packets_sent(self) -> int:
        return self._packets

    @property
    def octets_sent(self) -> int:
        """Payload octets sent (RFC 3550 s6.4.1: no headers or padding)."""
        return self._octets

    def packet(
        self,
        payload: bytes,
        *,
        samples: int,
        payload_type: int | None = None,
        marker: bool = False,
        timestamp: int | None = None,
    ) -> bytes:
        """The next packet's wire bytes, carrying `samples` samples of media.

        `timestamp` overrides this packet's timestamp (RFC 4733 s2.3.1: an event keeps its start
        timestamp in every packet); the next packet's timestamp is this one's plus `samples`.
        `payload_type` overrides the stream's (DTMF, comfort noise). Raises `MediaError` for
        fields that do not fit, before any state changes.
        """
        if samples < 0:
            raise ValueError(f"samples {samples} must not be negative")
        return self.frame(
            payload,
            samples,
            self.payload_type if payload_type is None else payload_type,
            marker,
            self._timestamp if timestamp is None else timestamp,
        )

    def frame(self, payload: bytes, samples: int, kind: int, marker: bool, stamp: int) -> bytes:
        """`packet` with every field given, positionally (`samples` not negative): the leg's
        per-frame path, 50 times a second per leg (no keyword arguments to bind)."""
        if not 0 <= kind <= 127 or not 0 <= stamp < _TS_MOD:
            raise MediaError(f"payload type {kind} or timestamp {stamp} does not fit RTP")
        # The header packed directly (version 2, no padding, extension or CSRC): this runs for
        # every packet sent, 50 times a second per call.
        second = kind | 0x80 if marker or self._marker_pending else kind
        data = _HEADER.pack(0x80, second, self._sequence, stamp, self.ssrc) + payload
        self._sequence = (self._sequence + 1) % RTP_SEQ_MOD
        self._timestamp = (stamp + samples) % _TS_MOD
        self._marker_pending = False
        self._packets += 1
        self._octets += len(payload)
        return data

    def skip(self, samples: int) -> None:
        """Move the timestamp over `samples` of silence not sent (DTX, hold); the next packet
        starts a talkspurt and gets the marker bit (RFC 3551 s4.1)."""
        if samples < 0:
            raise ValueError(f"samples {samples} must not be negative")
        self._timestamp = (self._timestamp + samples) % _TS_MOD
        self._marker_pending = True

    def sender_info(self, now_ntp: int) -> SenderInfo:
        """The SR sender info (RFC 3550 s6.4.1) at NTP time `now_ntp` (see `ntp_timestamp`).

        The RTP timestamp is the next packet's: for a stream paced by the playout clock that is
        the media time of `now_ntp` to within one packet. The counts wrap at 32 bits.
        """
        return SenderInfo(
            ntp_timestamp=now_ntp,
            rtp_timestamp=self._timestamp,
            packet_count=self._packets & _U32,
            octet_count=self._octets & _U32,
        )


# --- where to send -----------------------------------------------------------------------------


class Latch:
    """Symmetric RTP (RFC 4961) with NAT latching: send to where the peer's packets come from.

    `expected` is the address from the SDP, which may be missing or unreachable (a private
    address behind NAT). The first packet latches its source address, whatever SDP said. Packets
    from any other address are then refused (counted in `refused`) so a stray or hostile sender
    cannot steal the stream - unless the latched source has been silent for `relatch_after`
    seconds, when the new one takes over (the peer's NAT binding or media server changed).
    """

    __slots__ = ("_last_seen", "_latched", "expected", "refused", "relatch_after", "relatches")

    def __init__(self, expected: tuple[str, int] | None, *, relatch_after: float = 2.0) -> None:
        self.expected = expected
        self.relatch_after = relatch_after
        self.refused = 0
        self.relatches = 0
        self._latched: tuple[str, int] | None = None
        self._last_seen = 0.0

    @property
    def latched(self) -> tuple[str, int] | None:
        """The source address latched on, if any."""
        return self._latched

    @property
    def destination(self) -> tuple[str, int] | None:
        """Where to send: the latched source, else the SDP address."""
        return self._latched if self._latched is not None else self.expected

    def check(self, source: tuple[str, int], now: float) -> bool:
        """Whether to accept a packet from `source` arriving at `now`; latches as described."""
        if self._latched is None or source == self._latched:
            self._latched = source
            self._last_seen = now
            return True
        if now - self._last_seen >= self.relatch_after:
            self._latched = source
            self._last_seen = now
            self.relatches += 1
            return True
        self.refused += 1
        return False

    def reset(self, expected: tuple[str, int] | None) -> None:
        """A new SDP from the peer (re-INVITE, UPDATE). A new address undoes the latch; the same
        address keeps it, so a hold or session refresh from a peer behind NAT (whose SDP repeats
        its private address) does not send our audio there until its next packet."""
        if expected != self.expected:
            self._latched = None
        self.expected = expected
