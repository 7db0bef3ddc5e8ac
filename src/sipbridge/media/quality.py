"""Call quality of one RTP leg, sans-IO: counters and reports in, a snapshot with a MOS out.

What a snapshot holds (`leg_quality`), for each direction of the leg:

- received (the peer's stream, measured by us, RFC 3550 A.1/A.3/A.8): audio packets and payload
  bytes, cumulative loss (lost / expected), interarrival jitter J (now, and its mean over the
  call: `ReceiverStats.jitter_mean_seconds`), and what the jitter buffer
  threw away (late, and duplicates + overflow + skipped);
- sent (our stream): packets and payload bytes, and the peer's last reception report about it
  (RFC 3550 s6.4.1): its fraction lost, cumulative loss and jitter; the round-trip time from
  LSR/DLSR (`RtpLeg._remote_report`);
- the codec, whether SRTP protects the leg, and a MOS per direction by the E-model.

The E-model (ITU-T G.107, 06/2015), with its default values for everything but delay and loss:

    R = Ro - Is - Id - Ie,eff + A        Ro = 94.77, Is = 1.41, A = 0 (G.107 Table 3 defaults)

- Id = Idte + Idle + Idd (G.107 s7.3) at one-way delay T = Ta (mouth to ear) and Tr = 2T, with
  the default TELR (65 dB), WEPL (110 dB) and RLR (2 dB): talker echo, listener echo, and the
  pure delay impairment Idd (0 up to 100 ms).
- Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl) (G.107 s7.4) with Ppl the loss in percent
  (packets lost in the network plus those the jitter buffer discarded as late, as G.107 counts
  them) and BurstR = 1 (random loss, what we can assume without a loss-run model).
- Ie and Bpl per codec (`CODEC_IMPAIRMENT`): G.711 Ie = 0, Bpl = 25.1 (G.113 Appendix I, G.711
  with packet loss concealment; we and the phones conceal). G.113 rates G.722 and Opus only on
  the wideband (129-point) scale, so on this narrowband scale they are *assumed* no worse than
  G.711: Ie = 0, Bpl = 25.1 - stated as assumed in every snapshot's inputs.
- Ta = RTT/2 (0 before the peer echoes an SR) + the jitter buffer's delay + the packet time.
  When our jitter buffer plays the stream its current target delay is used; when packets are
  forwarded unbuffered, the receiver's buffer is estimated as 2J (at least one packet time).
- MOS from R by G.107 Annex B (B-4): 1 below R = 0, 4.5 above 100, else
  1 + 0.035R + R(R - 60)(100 - R) 7e-6.

With all defaults (no delay, no loss) R is 93.2 and the MOS 4.41, as G.107 says.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from sipbridge.media.leg import RtpLeg
from sipbridge.media.players import FRAME_MS

__all__ = [
    "CODEC_IMPAIRMENT",
    "CodecImpairment",
    "DirectionQuality",
    "EModel",
    "LegQuality",
    "delay_impairment",
    "e_model",
    "effective_equipment_impairment",
    "leg_quality",
    "mos_from_r",
]

# G.107 Table 3 defaults and what follows from them
RO = 94.77  # basic signal-to-noise ratio: 15 - 1.5 (SLR + No), No = -61.18 dBm0p
IS = 1.41  # simultaneous impairments (Iolr + Ist + Iq) at the default loudness ratings
A = 0.0  # advantage factor: a fixed-line phone
RLR = 2.0
NO = -61.18
TELR = 65.0
WEPL = 110.0
DELAY_KNEE_MS = 100.0  # mT: Idd is 0 up to this one-way delay


@dataclass(frozen=True, kw_only=True, slots=True)
class CodecImpairment:
    """A codec's equipment impairment factor and packet-loss robustness (G.113)."""

    ie: float
    bpl: float
    source: str


_G711 = CodecImpairment(ie=0.0, bpl=25.1, source="G.113 Appendix I (G.711 with PLC)")
_ASSUMED = CodecImpairment(
    ie=0.0, bpl=25.1, source="assumed as G.711 with PLC (G.113 rates it only on the WB scale)"
)
CODEC_IMPAIRMENT: dict[str, CodecImpairment] = {
    "PCMU": _G711,
    "PCMA": _G711,
    "G722": _ASSUMED,
    "opus": _ASSUMED,
}


def mos_from_r(r: float) -> float:
    """The estimated mean opinion score for rating `r` (G.107 Annex B, B-4)."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


def effective_equipment_impairment(
    ie: float, bpl: float, loss_percent: float, burst_r: float = 1.0
) -> float:
    """Ie,eff (G.107 s7.4, 7-29): the codec's impairment grown by `loss_percent` of packets."""
    ppl = max(0.0, loss_percent)
    return ie + (95 - ie) * ppl / (ppl / burst_r + bpl)


def delay_impairment(ta_ms: float) -> float:
    """Id = Idte + Idle + Idd (G.107 s7.3) at one-way delay `ta_ms`, T = Ta, Tr = 2T, defaults."""
    t = max(0.0, ta_ms)
    tr = 2 * t
    # talker echo (7-21..7-23), STMR default 15 dB: no low-sidetone adjustment
    roe = -1.5 * (NO - RLR)
    terv = TELR - 40 * math.log10((1 + t / 10) / (1 + t / 150)) + 6 * math.exp(-0.3 * t * t)
    re = 80 + 2.5 * (terv - 14)
    idte = ((roe - re) / 2 + math.sqrt((roe - re) ** 2 / 4 + 100) - 1) * (1 - math.exp(-t))
    # listener echo (7-25, 7-26)
    rle = 10.5 * (WEPL + 7) / float((tr + 1) ** 0.25)
    idle = (RO - rle) / 2 + math.sqrt((RO - rle) ** 2 / 4 + 169)
    # pure delay (7-27, 7-28 with sT = 1, mT = 100 ms)
    idd = 0.0
    if t > DELAY_KNEE_MS:
        x = math.log10(t / DELAY_KNEE_MS) / math.log10(2)
        idd = 25 * ((1 + x**6) ** (1 / 6) - 3 * (1 + (x / 3) ** 6) ** (1 / 6) + 2)
    return idte + idle + idd


@dataclass(frozen=True, kw_only=True, slots=True)
class EModel:
    """An E-model rating and the inputs it came from."""

    r: float
    mos: float
    id: float
    ie_eff: float
    ie: float
    bpl: float
    loss_percent: float
    delay_ms: float
    codec_source: str


def e_model(*, codec: str, loss_percent: float, delay_ms: float) -> EModel:
    """Rate a stream of `codec` losing `loss_percent` of its packets, `delay_ms` mouth to ear."""
    impairment = CODEC_IMPAIRMENT.get(codec, _ASSUMED)
    id_ = delay_impairment(delay_ms)
    ie_eff = effective_equipment_impairment(impairment.ie, impairment.bpl, loss_percent)
    r = RO - IS - id_ - ie_eff + A
    return EModel(
        r=r,
        mos=mos_from_r(r),
        id=id_,
        ie_eff=ie_eff,
        ie=impairment.ie,
        bpl=impairment.bpl,
        loss_percent=loss_percent,
        delay_ms=delay_ms,
        codec_source=impairment.source,
    )


# Dataclasses made for every call write their own `__init__` (`init=False`): mypyc compiles
# it, where the one the dataclasses module generates stays interpreted (issue 18).
@dataclass(init=False, frozen=True, kw_only=True, slots=True)
class DirectionQuality:
    """One direction of a leg. `loss` is a fraction (0..1) of the packets expected; `jitter`
    and `rtt` in seconds; `quality` None when nothing is known of the direction yet."""

    packets: int
    bytes: int
    lost: int | None
    loss: float | None
    jitter: float | None
    jitter_mean: float | None = None
    late: int = 0
    discarded: int = 0
    jitter_buffer_delay: float | None = None
    quality: EModel | None = None

    def __init__(
        self,
        *,
        packets: int,
        bytes: int,
        lost: int | None,
        loss: float | None,
        jitter: float | None,
        jitter_mean: float | None = None,
        late: int = 0,
        discarded: int = 0,
        jitter_buffer_delay: float | None = None,
        quality: EModel | None = None,
    ) -> None:
        object.__setattr__(self, "packets", packets)
        object.__setattr__(self, "bytes", bytes)
        object.__setattr__(self, "lost", lost)
        object.__setattr__(self, "loss", loss)
        object.__setattr__(self, "jitter", jitter)
        object.__setattr__(self, "jitter_mean", jitter_mean)
        object.__setattr__(self, "late", late)
        object.__setattr__(self, "discarded", discarded)
        object.__setattr__(self, "jitter_buffer_delay", jitter_buffer_delay)
        object.__setattr__(self, "quality", quality)


@dataclass(init=False, frozen=True, kw_only=True, slots=True)
class LegQuality:
    """A snapshot of one leg's quality at `at` (the driver's clock)."""

    at: float
    codec: str
    encrypted: bool
    rtt: float | None
    received: DirectionQuality
    sent: DirectionQuality

    def __init__(
        self,
        *,
        at: float,
        codec: str,
        encrypted: bool,
        rtt: float | None,
        received: DirectionQuality,
        sent: DirectionQuality,
    ) -> None:
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "encrypted", encrypted)
        object.__setattr__(self, "rtt", rtt)
        object.__setattr__(self, "received", received)
        object.__setattr__(self, "sent", sent)

    @property
    def mos(self) -> float | None:
        """The worse direction's MOS: the call is as good as its worse half."""
        scores = [d.quality.mos for d in (self.received, self.sent) if d.quality is not None]
        return min(scores) if scores else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: seconds become rounded milliseconds, fractions rounded."""
        return {
            "codec": self.codec,
            "encryption": "srtp" if self.encrypted else "none",
            "rtt_ms": _ms(self.rtt),
            "mos": None if self.mos is None else round(self.mos, 2),
            "received": _direction_dict(self.received),
            "sent": _direction_dict(self.sent),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _direction_dict(d: DirectionQuality) -> dict[str, Any]:
    out: dict[str, Any] = {
        "packets": d.packets,
        "bytes": d.bytes,
        "lost": d.lost,
        "loss": None if d.loss is None else round(d.loss, 4),
        "jitter_ms": _ms(d.jitter),
        "jitter_mean_ms": _ms(d.jitter_mean),
        "late": d.late,
        "discarded": d.discarded,
    }
    if d.jitter_buffer_delay is not None:
        out["jitter_buffer_ms"] = _ms(d.jitter_buffer_delay)
    if d.quality is not None:
        q = asdict(d.quality)
        out["e_model"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in q.items()}
    return out


def _delay(rtt: float | None, buffer_delay: float) -> float:
    """One-way mouth-to-ear delay in ms: half the RTT, the playout buffer and one packet."""
    return ((rtt or 0.0) / 2 + buffer_delay) * 1000 + FRAME_MS


def leg_quality(leg: RtpLeg, now: float) -> LegQuality:
    """The quality of `leg` now (reads its counters; changes nothing)."""
    codec = leg.spec.name
    stats = leg.receiver.stats
    jitter_stats = leg.jitter.stats
    report = leg.remote_report
    rtt = report.rtt if report is not None else None
    frame = FRAME_MS / 1000
    # received: what we measured of the peer's stream
    received: DirectionQuality
    if leg.receiver.ssrc is None:
        received = DirectionQuality(packets=0, bytes=0, lost=None, loss=None, jitter=None)
    else:
        lost = max(0, stats.lost)
        expected = stats.packets + lost
        discarded = jitter_stats.duplicates + jitter_stats.overflow + jitter_stats.skipped
        buffered = jitter_stats.received > 0
        buffer_delay = leg.jitter.delay if buffered else max(frame, 2 * stats.jitter_seconds)
        impaired = lost + jitter_stats.late
        loss_percent = 100 * impaired / expected if expected else 0.0
        received = DirectionQuality(
            packets=stats.packets,
            bytes=stats.octets,
            lost=lost,
            loss=lost / expected if expected else 0.0,
            jitter=stats.jitter_seconds,
            jitter_mean=stats.jitter_mean_seconds,
            late=jitter_stats.late,
            discarded=discarded,
            jitter_buffer_delay=buffer_delay,
            quality=e_model(
                codec=codec, loss_percent=loss_percent, delay_ms=_delay(rtt, buffer_delay)
            ),
        )
    # sent: our stream, as the peer reported it
    sender = leg.sender
    if report is None:
        sent = DirectionQuality(
            packets=sender.packets_sent, bytes=sender.octets_sent, lost=None, loss=None, jitter=None
        )
    else:
        sent_expected = sender.packets_sent
        peer_lost = max(0, report.cumulative_lost)
        loss = peer_lost / sent_expected if sent_expected else report.fraction_lost
        loss = min(1.0, loss)
        buffer_delay = max(frame, 2 * report.jitter)
        sent = DirectionQuality(
            packets=sender.packets_sent,
            bytes=sender.octets_sent,
            lost=peer_lost,
            loss=loss,
            jitter=report.jitter,
            quality=e_model(
                codec=codec, loss_percent=100 * loss, delay_ms=_delay(rtt, buffer_delay)
            ),
        )
    return LegQuality(
        at=now,
        codec=codec,
        encrypted=leg.srtp is not None,
        rtt=rtt,
        received=received,
        sent=sent,
    )
