"""The baresip test harness (tests/baresip.py) proved baresip to baresip, without sipbridge.

Two headless baresip 1.0 phones on loopback call each other directly: for each codec both send a
distinctive signal and record what they hear, and what each heard must correlate (> 0.9) with
what the other sent, and not with its own; DTMF (RFC 4733) goes both ways; SDES-SRTP mandatory
works and is refused by a peer without it; hold and resume renegotiate the direction.

baresip 1.0.0 facts found on the way (Debian 12, baresip-core 1.0.0-4):
- Account spellings: `audio_codecs=PCMU`, `PCMA`, `G722/16000/1`, `opus/48000/2`.
- `mediaenc=srtp` (optional, RTP/AVP + a=crypto), `srtp-mand` (RTP/SAVP), `srtp-mandf` (SAVPF);
  suite AES_CM_128_HMAC_SHA1_80; a CALL_MENC event "0,audio,<suite>" when SRTP is up; a
  srtp-mand offer to a plain peer is refused with 488.
- DTMF: only RFC 4733 is sent (`sndcode`), telephone-event/8000 even with Opus; there is no
  dtmfmode account parameter in 1.0; SIP INFO (application/dtmf-relay) is only received.
  Receivers get CALL_DTMF_START (param = the digit) and CALL_DTMF_END.
- Call commands (`hold`, `resume`, `mute`, `sndcode`, `transfer`, `reinvite`, `audio_debug`,
  `aubitrate`, `line`, `callfind`, `prevhold`, `prevresume`, `statmode`, `video_dir`) exist only
  while a call is up (they answer ok=false, "Invalid argument", otherwise).
- Hold sends a=sendonly (answered recvonly), and baresip then stops sending in both directions;
  after the renegotiation the sndfile filter is gone from the receive path (1.0.0 bug in
  audio_decoder_set/aufilt_setup), so recordings of what was heard end at the first re-INVITE.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.audio import read_wav, wav_info
from tests.baresip import CODECS, Phone, available, phone
from tests.harness import eventually

pytestmark = pytest.mark.skipif(
    not available(), reason="baresip comes with `make test` (Debian baresip-core)"
)

CALL_S = 2.5  # of the 3 s signal, heard before DTMF and hangup
MIN_CORRELATION = 0.9
MAX_CROSS = 0.3  # what a phone heard against what it sent itself


@dataclass
class CallResult:
    label: str
    a_to_b: tuple[float, float] = (0.0, 0.0)  # (coefficient, lag_s): B heard vs A sent
    b_to_a: tuple[float, float] = (0.0, 0.0)
    cross: tuple[float, float] = (0.0, 0.0)  # B heard vs B sent
    heard_s: tuple[float, float] = (0.0, 0.0)  # lengths of B's and A's recordings
    codec: tuple[str, str] = ("", "")  # encoder of A and of B, from audio_debug
    dtmf: tuple[str, str] = ("", "")  # digits B and A received
    notes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.label}: a->b {self.a_to_b[0]:.4f} (lag {self.a_to_b[1] * 1000:.1f} ms), "
            f"b->a {self.b_to_a[0]:.4f} (lag {self.b_to_a[1] * 1000:.1f} ms), "
            f"cross {self.cross[0]:.3f}, heard {self.heard_s[0]:.2f}/{self.heard_s[1]:.2f} s, "
            f"codec {self.codec}, dtmf {self.dtmf}"
        )


def heard_seconds(peer: Phone) -> float:
    pcm, rate = read_wav(peer.recorded())
    return len(pcm) / rate


async def established(a: Phone, b: Phone) -> None:
    await a.dial(b.uri, established=True)
    await b.wait_event("CALL_ESTABLISHED", fail_on=("CALL_CLOSED",))


async def hang_up(a: Phone, b: Phone) -> None:
    await a.hangup()
    await a.wait_event("CALL_CLOSED")
    await b.wait_event("CALL_CLOSED")


async def codec_call(directory: Path, label: str, **a_options: Any) -> CallResult:
    """A calls B (auto answer); CALL_S of audio both ways; DTMF both ways; A hangs up."""
    codec = label.split("-", maxsplit=1)[0]
    result = CallResult(label)
    options = {"codecs": codec, **a_options}
    async with phone(directory / "a", **options) as a, phone(directory / "b", codecs=codec) as b:
        await established(a, b)
        result.codec = ((await a.audio_stats()).codec, (await b.audio_stats()).codec)
        await asyncio.sleep(CALL_S)  # the conversation itself: CALL_S of audio both ways
        await asyncio.gather(a.send_dtmf("123#"), b.send_dtmf("*0"))
        got_b, got_a = await asyncio.gather(b.wait_dtmf("123#"), a.wait_dtmf("*0"))
        result.dtmf = (got_b, got_a)
        await hang_up(a, b)
    # The phones have quit: the recordings are complete.
    result.a_to_b = b.heard_from(a)
    result.b_to_a = a.heard_from(b)
    result.cross = b.heard_from(b)
    result.heard_s = (heard_seconds(b), heard_seconds(a))
    result.notes["heard_format"] = wav_info(b.recorded())[:2]
    return result


async def test_audio_and_dtmf_per_codec(tmp_path: Path) -> None:
    """Every codec at once (separate pairs of phones), plus a caller offering three codecs from
    one 48 kHz mono WAV that baresip resamples to the G.722 its peer insists on."""
    cases: dict[str, dict[str, Any]] = {name: {} for name in CODECS}
    cases["G722-from-multicodec-caller"] = {
        "codecs": ["opus", "G722", "PCMU"],
        "source_rate": 48000,
    }
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(codec_call(tmp_path / label, label, **options) for label, options in cases.items()),
        return_exceptions=True,
    )
    elapsed = time.monotonic() - started
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        raise failures[0]
    results = [o for o in outcomes if isinstance(o, CallResult)]
    report = "\n".join(r.summary() for r in results) + f"\n{elapsed:.1f} s"
    print(report)
    expected_codec = {"PCMU": "PCMU", "PCMA": "PCMA", "G722": "G722", "opus": "opus"}
    for r in results:
        codec = expected_codec[r.label.split("-")[0]]
        assert r.codec == (codec, codec), report
        assert r.a_to_b[0] > MIN_CORRELATION, report
        assert r.b_to_a[0] > MIN_CORRELATION, report
        assert abs(r.cross[0]) < MAX_CROSS, report
        assert abs(r.a_to_b[1]) < 0.2 and abs(r.b_to_a[1]) < 0.2, report  # lags
        assert min(r.heard_s) > CALL_S - 0.5, report
        assert r.dtmf == ("123#", "*0"), report
        assert r.notes["heard_format"] == (CODECS[codec].rate, CODECS[codec].channels), report


async def test_srtp_mandatory_and_manual_answer(tmp_path: Path) -> None:
    async with (
        phone(tmp_path / "a", codecs="G722", mediaenc="srtp-mand") as a,
        phone(tmp_path / "b", codecs="G722", mediaenc="srtp-mand", answermode="manual") as b,
    ):
        await a.dial(b.uri)
        incoming = await b.wait_event("CALL_INCOMING")
        assert incoming["peeruri"].startswith(f"sip:{a.user}@"), incoming
        await b.answer()
        await a.wait_event("CALL_ESTABLISHED", fail_on=("CALL_CLOSED",))
        await b.wait_event("CALL_ESTABLISHED")
        for peer in (a, b):
            menc = await peer.wait_event("CALL_MENC")
            assert menc["param"] == "0,audio,AES_CM_128_HMAC_SHA1_80", menc
            assert "m=audio" in peer.output(100000) and "RTP/SAVP" in peer.output(100000)
        await asyncio.sleep(1.5)  # the conversation itself: 1.5 s of encrypted audio
        await hang_up(a, b)
    coefficient_ab, _ = b.heard_from(a)
    coefficient_ba, _ = a.heard_from(b)
    assert coefficient_ab > MIN_CORRELATION and coefficient_ba > MIN_CORRELATION, (
        coefficient_ab,
        coefficient_ba,
    )


async def test_srtp_mandatory_offer_refused_by_plain_peer(tmp_path: Path) -> None:
    async with (
        phone(tmp_path / "a", mediaenc="srtp-mand") as a,
        phone(tmp_path / "b") as b,
    ):
        await a.dial(b.uri)
        closed = await a.wait_event("CALL_CLOSED", fail_on=("CALL_ESTABLISHED",))
        assert closed["param"].startswith("488"), closed
        assert "CALL_ESTABLISHED" not in b.event_types()


async def packets_flowing(peer: Phone, seconds: float = 0.4) -> bool:
    before = (await peer.audio_stats()).rx_packets
    await asyncio.sleep(seconds)  # the window measured: packets in it, or none
    return (await peer.audio_stats()).rx_packets > before


async def test_hold_and_resume(tmp_path: Path) -> None:
    async with phone(tmp_path / "a") as a, phone(tmp_path / "b") as b:
        reply = await a.command("hold")  # no call: the in-call commands do not exist
        assert not reply["ok"], reply
        await established(a, b)
        assert (await a.command("resume"))["ok"]  # not on hold: nothing happens
        assert await packets_flowing(b) and await packets_flowing(a)

        await a.hold()

        async def directions(want_a: str, want_b: str) -> bool:  # after the re-INVITE
            return (await a.audio_stats()).direction == want_a and (
                await b.audio_stats()
            ).direction == want_b

        await eventually(
            lambda: directions("sendonly", "recvonly"), "the hold re-INVITE", timeout=5
        )
        assert "(on hold)" in await a.listcalls()
        assert not await packets_flowing(a)  # baresip 1.0 also stops sending on hold

        await a.resume()
        await eventually(
            lambda: directions("sendrecv", "sendrecv"), "the resume re-INVITE", timeout=5
        )
        assert "(on hold)" not in await a.listcalls()
        assert await packets_flowing(b) and await packets_flowing(a)
        await hang_up(a, b)
