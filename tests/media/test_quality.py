"""Call quality of a leg (media/quality.py): the E-model against ITU-T G.107's own numbers, and
the snapshot of a leg fed packets with known loss, jitter and reports, in memory."""

from __future__ import annotations

import json
import math

import pytest

from sipbridge.media import codecs
from sipbridge.media.leg import RtpLeg
from sipbridge.media.quality import (
    CODEC_IMPAIRMENT,
    delay_impairment,
    e_model,
    effective_equipment_impairment,
    leg_quality,
    mos_from_r,
)
from sipbridge.media.rtp import ReceiverReport, ReportBlock, serialize_rtcp
from sipbridge.media.srtp import SrtpContext
from tests.media.test_leg import FRAME, PHONE, Phone, keys, leg, pcmu

# -- the E-model --------------------------------------------------------------------------------


def test_all_defaults_rate_93_2_and_mos_4_41() -> None:
    # G.107 s7.7 (and Table 3): with every parameter at its default, R = 93.2.
    clean = e_model(codec="PCMU", loss_percent=0.0, delay_ms=0.0)
    assert clean.r == pytest.approx(93.2, abs=0.05)
    assert clean.mos == pytest.approx(4.41, abs=0.005)
    assert clean.ie_eff == 0.0


@pytest.mark.parametrize(
    ("r", "mos"),
    # G.107 Annex B (and G.109 Table 1): the bounds of the user satisfaction categories
    [(90, 4.34), (80, 4.03), (70, 3.60), (60, 3.10), (50, 2.58)],
)
def test_r_to_mos_matches_g107_annex_b(r: float, mos: float) -> None:
    # published to two places; G.109 gives 4.03 at R = 80 where B-4 yields 4.024
    assert mos_from_r(r) == pytest.approx(mos, abs=0.01)


def test_mos_is_bounded() -> None:
    assert mos_from_r(-5) == 1.0
    assert mos_from_r(0) == 1.0
    assert mos_from_r(100) == 4.5
    assert mos_from_r(120) == 4.5


def test_ie_eff_follows_g107_7_29() -> None:
    # no loss: the codec's own Ie; all loss: 95; G.711 with PLC at 2 %: 95 * 2 / 27.1
    assert effective_equipment_impairment(11, 19, 0) == 11
    assert effective_equipment_impairment(0, 25.1, 2) == pytest.approx(95 * 2 / 27.1)
    assert effective_equipment_impairment(0, 25.1, 100) == pytest.approx(95 * 100 / 125.1)
    # bursty loss (BurstR > 1) hurts more than random loss of the same rate
    assert effective_equipment_impairment(0, 25.1, 5, 2.0) > effective_equipment_impairment(
        0, 25.1, 5
    )
    assert effective_equipment_impairment(0, 25.1, -1) == 0


def test_the_g711_planning_values_are_g113s() -> None:
    assert CODEC_IMPAIRMENT["PCMU"].ie == 0 and CODEC_IMPAIRMENT["PCMU"].bpl == 25.1
    assert "assumed" in CODEC_IMPAIRMENT["G722"].source
    assert e_model(codec="unknown", loss_percent=0, delay_ms=0).codec_source.startswith("assumed")


def test_delay_impairment() -> None:
    # Idd is 0 up to 100 ms; at 200 ms X = 1: 25 ((2)^(1/6) - 3 (1 + 1/729)^(1/6) + 2)
    idd_200 = 25 * (2 ** (1 / 6) - 3 * (1 + 1 / 729) ** (1 / 6) + 2)
    low = delay_impairment(100)
    assert delay_impairment(200) - low > idd_200 * 0.9
    # with default echo loss the echo terms stay small below 100 ms, then delay dominates
    assert delay_impairment(0) < 0.2
    assert delay_impairment(50) < 2.0
    values = [delay_impairment(t) for t in (0, 100, 150, 200, 300, 400)]
    assert values == sorted(values)
    assert delay_impairment(-10) == delay_impairment(0)
    # G.107 Figure: R falls below 70 (MOS 3.6) for G.711 only far beyond 250 ms one way
    assert e_model(codec="PCMA", loss_percent=0, delay_ms=250).r > 70
    assert e_model(codec="PCMA", loss_percent=0, delay_ms=500).r < 70


def test_loss_costs_what_g107_says() -> None:
    clean = e_model(codec="PCMU", loss_percent=0, delay_ms=40)
    lossy = e_model(codec="PCMU", loss_percent=5, delay_ms=40)
    assert lossy.ie_eff == pytest.approx(95 * 5 / 30.1)
    assert clean.r - lossy.r == pytest.approx(lossy.ie_eff)
    assert lossy.mos < clean.mos


# -- a leg's snapshot --------------------------------------------------------------------------


def feed(
    rtp_leg: RtpLeg, phone: Phone, count: int, *, lose_every: int = 0, wobble: float = 0.0
) -> float:
    """`count` 20 ms packets from `phone`; every `lose_every`-th lost; odd packets `wobble` s
    late (RFC 3550 J of a delay alternating 0, d converges on d). Returns the time after."""
    now = 0.0
    for i in range(count):
        now = i * 0.02
        packet = phone.rtp(pcmu(440, i))
        if lose_every and i % lose_every == lose_every // 2:
            continue
        rtp_leg.receive(packet, PHONE, now + (wobble if i % 2 else 0.0))
    return now + 0.02


def test_a_fresh_leg_knows_nothing_yet() -> None:
    q = leg_quality(leg(), 1.0)
    assert q.received.loss is None and q.received.quality is None
    assert q.sent.loss is None and q.sent.quality is None
    assert q.mos is None and q.rtt is None
    d = q.as_dict()
    assert d["mos"] is None and d["encryption"] == "none" and d["codec"] == "PCMU"
    json.dumps(d)


def test_loss_and_jitter_of_what_we_receive() -> None:
    clean_leg, lossy_leg = leg(), leg()
    feed(clean_leg, Phone(), 500)
    end = feed(lossy_leg, Phone(), 500, lose_every=20, wobble=0.015)
    clean, lossy = leg_quality(clean_leg, end), leg_quality(lossy_leg, end)
    assert clean.received.loss == 0 and clean.received.jitter == pytest.approx(0, abs=1e-9)
    assert lossy.received.lost == 25
    assert lossy.received.loss == pytest.approx(25 / 499)
    # alternating 0 / 15 ms, with a loss now and then making two in a row: J near 15 ms
    assert lossy.received.jitter == pytest.approx(0.015, rel=0.1)
    assert lossy.received.jitter_mean == pytest.approx(0.015, rel=0.1)
    assert clean.received.jitter_mean == pytest.approx(0, abs=1e-9)
    assert lossy.received.packets == 474 and lossy.received.bytes == 474 * FRAME
    assert clean.received.quality is not None and lossy.received.quality is not None
    assert lossy.received.quality.loss_percent == pytest.approx(100 * 25 / 499)
    # the receiver's buffer, unbuffered here, is estimated as 2 J
    assert lossy.received.jitter_buffer_delay == pytest.approx(2 * 0.015, rel=0.1)
    assert clean.received.jitter_buffer_delay == 0.02
    assert lossy.mos is not None and clean.mos is not None and lossy.mos < clean.mos - 0.5
    d = lossy.as_dict()
    assert d["received"]["loss"] == 0.0501 and d["received"]["lost"] == 25
    assert d["received"]["e_model"]["loss_percent"] == pytest.approx(5, abs=0.01)
    json.dumps(d)


def test_the_jitter_buffer_delay_and_its_late_packets_count() -> None:
    rtp_leg = leg()
    rtp_leg.buffered = True  # decoding for a mix: packets go through our jitter buffer
    rtp_leg.jitter.stats.received = 1  # (as it would once a packet is pushed)
    rtp_leg.jitter.stats.late = 5
    rtp_leg.jitter.stats.duplicates = 2
    rtp_leg.jitter.stats.skipped = 1
    feed(rtp_leg, Phone(), 100)
    q = leg_quality(rtp_leg, 2.0)
    assert q.received.late == 5 and q.received.discarded == 3
    assert q.received.jitter_buffer_delay == rtp_leg.jitter.delay
    assert q.received.quality is not None
    # late packets are lost to the listener: G.107 counts them in Ppl
    expected = q.received.packets + (q.received.lost or 0)
    assert q.received.quality.loss_percent == pytest.approx(100 * 5 / expected)


def test_the_peers_report_of_our_stream_and_the_rtt() -> None:
    rtp_leg = leg()
    feed(rtp_leg, Phone(), 10)
    for i in range(200):
        rtp_leg.send_pcm(None, i * 0.02)
    rtp_leg.datagrams_to_send(4.0)
    rtp_leg.next_report_at = 0.0
    rtp_leg.report(4.0, 1_700_000_000.0)  # the first report only schedules
    rtp_leg.next_report_at = 4.5
    rtp_leg.report(5.0, 1_700_000_001.0)  # an SR, remembered for its LSR
    ((_sr, _, _),) = rtp_leg.datagrams_to_send(5.0)
    lsr = next(iter(rtp_leg._sr_sent))
    block = ReportBlock(
        ssrc=rtp_leg.sender.ssrc,
        fraction_lost=26,
        cumulative_lost=10,
        highest_sequence=0,
        jitter=160,  # 20 ms at 8 kHz
        last_sr=lsr,
        delay_since_last_sr=65536 // 10,  # 100 ms held by the peer
    )
    rr = serialize_rtcp([ReceiverReport(ssrc=0x1234, reports=(block,))])
    rtp_leg.receive_rtcp(rr, PHONE, 5.3)
    q = leg_quality(rtp_leg, 5.3)
    assert q.rtt == pytest.approx(0.2, abs=0.001)
    assert q.sent.packets == 200 and q.sent.bytes == 200 * FRAME
    assert q.sent.lost == 10 and q.sent.loss == pytest.approx(10 / 200)
    assert q.sent.jitter == pytest.approx(0.02)
    assert q.sent.quality is not None and q.received.quality is not None
    # delay: RTT / 2 + buffer (2 J, 40 ms) + a 20 ms packet
    assert q.sent.quality.delay_ms == pytest.approx(100 + 40 + 20, abs=0.5)
    assert q.mos == min(q.sent.quality.mos, q.received.quality.mos)
    assert q.as_dict()["rtt_ms"] == pytest.approx(200, abs=1)


def test_a_report_before_we_sent_anything_uses_its_fraction() -> None:
    rtp_leg = leg()
    block = ReportBlock(
        ssrc=rtp_leg.sender.ssrc,
        fraction_lost=64,
        cumulative_lost=0,
        highest_sequence=0,
        jitter=0,
        last_sr=0,
        delay_since_last_sr=0,
    )
    rtp_leg.receive_rtcp(serialize_rtcp([ReceiverReport(ssrc=1, reports=(block,))]), PHONE, 1.0)
    q = leg_quality(rtp_leg, 1.0)
    assert q.sent.loss == 0.25 and q.rtt is None
    assert q.sent.quality is not None and q.sent.quality.delay_ms == pytest.approx(40)


def test_srtp_and_the_codec_are_stated() -> None:
    ours, theirs = keys(), keys()
    q = leg_quality(leg(codecs.G722_SPEC, srtp=SrtpContext(local=ours, remote=theirs)), 0.0)
    assert q.encrypted and q.codec == "G722"
    assert q.as_dict()["encryption"] == "srtp"
    assert math.isclose(q.at, 0.0)
