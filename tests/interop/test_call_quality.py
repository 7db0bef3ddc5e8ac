"""Call quality in the call log (issue 14, Done when): a baresip call whose packets to us lose 5 %
and jitter by 40 ms is logged with that loss and jitter, and a MOS below a clean call's.

Two phones (headless baresip) in a network namespace of this test (tests/netns.py) call a
`sipbridge serve` on the host end of its veth pair, into one room (a call is answered once
someone in the room hears it: here, the other phone). What the
impaired phone sends from its RTP ports goes through netem's model (tests/impair.py): `tc netem
delay 60ms 40ms loss 5%` where the kernel has sch_netem, the same model in user space where it
has not. The other phone's packets are untouched.

What netem's jitter means for RFC 3550's J: netem delays each packet by an independent uniform
draw from [20, 100] ms and lets it leave at its own time, so packets 20 ms apart reorder. J is an
exponential average (gain 1/16) of |D|, the change in transit time between consecutive arrivals
(RFC 3550 A.8), so what it estimates is E|D| over arrival order. Without reordering that is the
mean distance of two uniform draws, 2/3 x 40 = 26.7 ms; with it, arrival order pairs packets whose
delays are closer and farther in a way with no short closed form, so `expected_jitter` computes
it by running A.8 over the model itself (seeded, 200,000 packets sent every 20 ms, 5 % lost):
28.9 ms. The log's `jitter_mean_ms` (the mean |D| over the call) is compared with that; J at the
last packet is one sample of a noisy average and is only checked to be of the same order.

Loss is compared with what the impairment actually dropped (netem's `tc -s` counters, or the
emulator's), which over a 10 s call is 5 % +- 1 %, and loosely with 5 % itself.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit.protocol import sip

from tests import baresip
from tests.harness import call_log, client, eventually, run
from tests.helpers import ServerProcess, free_sip_port
from tests.impair import Applied, impair
from tests.netns import VethNamespace, available

pytestmark = [
    pytest.mark.skipif(not shutil.which("baresip"), reason="baresip comes with `make test`"),
    pytest.mark.skipif(available() is not None, reason=available() or ""),
]

DELAY_S, JITTER_S, LOSS = 0.060, 0.040, 0.05
PTIME_S = 0.020
LOSSY_PORTS, CLEAN_PORTS = (30000, 30015), (30100, 30115)  # 16-port blocks: one u32 mask
PACKETS = 450  # received before hanging up: ~10 s of G.711 each


def expected_jitter(n: int = 200_000, seed: int = 1) -> float:
    """E|D| (RFC 3550 A.8) in seconds for packets every PTIME_S through netem's model."""
    rng = np.random.default_rng(seed)
    sent = np.arange(n) * PTIME_S
    delay = rng.uniform(DELAY_S - JITTER_S, DELAY_S + JITTER_S, n)
    kept = rng.random(n) >= LOSS
    sent, delay = sent[kept], delay[kept]
    transit = delay[np.argsort(sent + delay, kind="stable")]  # in arrival order
    return float(np.abs(np.diff(transit)).mean())


def ns_phone(ns: VethNamespace, directory: Path, ports: tuple[int, int]) -> baresip.Phone:
    return baresip.Phone(
        directory,
        codecs="PCMU",
        host=ns.ns_ip,
        exec_prefix=ns.exec_args(),
        config={"rtp_ports": f"{ports[0]}-{ports[1]}"},
        lifetime_s=40,
    )


async def show(server: ServerProcess, call_id: str) -> dict[str, Any]:
    """`sipbridge call show ID --json`, as an operator reads it."""
    args = ["-m", "sipbridge", "call", "show", call_id, "--db", str(server.db), "--json"]
    code, out = await run(sys.executable, *args, timeout=20)
    assert code == 0, out
    shown: dict[str, Any] = json.loads(out)
    return shown


async def call_id_of(server: ServerProcess, caller: str) -> str:
    async def found() -> str | None:
        for entry in await call_log(server):
            if entry.get("from") == caller:
                return str(entry["call_id"])
        return None

    return await eventually(found, f"the call from {caller} in the call log", timeout=8)


async def test_loss_and_jitter_are_logged_and_lower_the_mos(
    namespace: VethNamespace, tmp_path: Path
) -> None:
    began = time.monotonic()
    ns = namespace
    port = free_sip_port()
    server = ServerProcess(
        tmp_path, "--sip", f"{ns.host_ip}:{port}", "--media-ip", ns.host_ip, "--rtp-ports",
        "15000-15999",
    )  # fmt: skip
    await asyncio.to_thread(server.start)
    try:
        async with client(server) as lk:  # both in one room: each is answered once heard
            await lk.sip.create_dispatch_rule(
                sip.CreateSIPDispatchRuleRequest(
                    dispatch_rule=sip.SIPDispatchRuleInfo(
                        rule=sip.SIPDispatchRule(
                            dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name="quality")
                        ),
                        name="quality",
                    )
                )
            )
        lossy_phone = ns_phone(ns, tmp_path / "lossy", LOSSY_PORTS)
        clean_phone = ns_phone(ns, tmp_path / "clean", CLEAN_PORTS)
        with impair(
            ns, sport=LOSSY_PORTS[0], mask=0xFFF0, delay=DELAY_S, jitter=JITTER_S, loss=LOSS
        ) as impairment:
            async with lossy_phone as lossy, clean_phone as clean:
                await lossy.dial(f"sip:quality@{ns.host_ip}:{port}")
                await lossy.wait_event("CALL_RINGING", fail_on=("CALL_CLOSED",))
                await clean.dial(f"sip:quality@{ns.host_ip}:{port}", established=True)
                await lossy.wait_event("CALL_ESTABLISHED", fail_on=("CALL_CLOSED",))
                ids = {p.name: await call_id_of(server, p.user) for p in (lossy, clean)}

                async def enough() -> bool:
                    for call_id in ids.values():
                        quality = (await show(server, call_id))["quality"]
                        if not quality or quality["received"]["packets"] < PACKETS:
                            return False
                    return True

                # quality is written every 5 s while the calls run: wait for ~10 s of it
                await eventually(
                    enough, f"{PACKETS} packets logged per call", timeout=20, interval=1
                )
                await lossy.hangup()
                await clean.hangup()
                await lossy.wait_event("CALL_CLOSED")
                await clean.wait_event("CALL_CLOSED")
            applied: Applied = impairment.applied()

        async def ended(call_id: str) -> dict[str, Any] | None:
            shown = await show(server, call_id)
            return shown if int(shown.get("ended_at_ns", 0)) > 0 and shown["quality"] else None

        lossy_call = await eventually(
            lambda: ended(ids["lossy"]), "the lossy call ended", timeout=5
        )
        clean_call = await eventually(
            lambda: ended(ids["clean"]), "the clean call ended", timeout=5
        )
    finally:
        await asyncio.to_thread(server.stop)
    lossy_q, clean_q = lossy_call["quality"], clean_call["quality"]
    received, clean_received = lossy_q["received"], clean_q["received"]
    want_jitter_ms = expected_jitter() * 1000
    print(
        f"\nimpairment ({applied.how}): dropped {applied.dropped} of "
        f"{applied.dropped + applied.passed} = {100 * applied.loss:.2f} %, "
        f"jitter +-{JITTER_S * 1000:g} ms uniform: expected J {want_jitter_ms:.1f} ms\n"
        f"lossy call: {json.dumps(lossy_q)}\nclean call: {json.dumps(clean_q)}\n"
        f"took {time.monotonic() - began:.1f} s"
    )
    # loss: what the impairment dropped (RTCP too, a few packets), and roughly the 5 % asked for
    assert 0.03 <= applied.loss <= 0.07, applied
    assert received["loss"] == pytest.approx(applied.loss, rel=0.2)
    assert received["loss"] == pytest.approx(LOSS, rel=0.4)
    assert received["packets"] >= PACKETS
    # jitter: the call's mean |D| within 20 % of what the model gives
    assert received["jitter_mean_ms"] == pytest.approx(want_jitter_ms, rel=0.2)
    assert 0.5 * want_jitter_ms <= received["jitter_ms"] <= 2 * want_jitter_ms
    # the clean call is clean, and scores better
    assert clean_received["loss"] < 0.005
    assert clean_received["jitter_mean_ms"] < 0.25 * want_jitter_ms
    assert lossy_q["mos"] < clean_q["mos"] - 0.3
    assert lossy_q["codec"] == "PCMU" and lossy_q["encryption"] == "none"
    model = received["e_model"]
    assert model["loss_percent"] >= 100 * received["loss"] - 0.01  # late discards count too
    assert lossy_call["audio_codec"] == "PCMU"
    assert time.monotonic() - began < 30
