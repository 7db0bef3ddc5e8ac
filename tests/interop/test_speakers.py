"""Active speakers and connection quality, end to end, as the official `livekit` SDK sees them.

A phone (baresip, PCMU) dials a direct-rule room; the SDK client (in a network namespace, WIRE.md
s6) joins and subscribes, which answers the call. The phone is silent for 1.5 s, talks for 3 s
and is silent again; 6.5 s after it connected the SDK client publishes 2 s of its own speech.
Its `active_speakers_changed` events must name the phone while the phone talks (its level
measured from the G.711 it sends) and not once it is silent, then the client itself while it
talks (its level from its decoded publication), then nobody. `connection_quality_changed`
rates both participants EXCELLENT on this loss-free link. Every wait polls what the client
printed so far (`eventually`).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests import baresip, netns
from tests.audio import distinct_signal, write_wav
from tests.harness import direct_rule, eventually
from tests.helpers import ServerProcess
from tests.sdk_run import SdkRun, sdk_command

pytestmark = [
    # real time: alone after the parallel tests (the Makefile, `-m serial`)
    pytest.mark.serial,
    pytest.mark.skipif(not shutil.which("baresip"), reason="baresip comes with `make test`"),
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
]

PHONE_LEAD_S = 1.5  # silent before it talks
PHONE_TALK_S = 3.0
AGENT_DELAY_S = 6.5  # after it connected: the phone has been silent for a while by then
AGENT_TALK_S = 2.0


async def start_sdk(
    ns: netns.VethNamespace, server: ServerProcess, identity: str, room: str, *args: str
) -> SdkRun:
    cmd = sdk_command(ns, server.port, identity, room, *args)
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    return SdkRun(proc)


async def test_the_sdk_sees_the_phone_speak_and_stop_and_rates_the_connections(
    rtc_server: ServerProcess, namespace: netns.VethNamespace, tmp_path: Path
) -> None:
    await direct_rule(rtc_server, "talk")
    speech = distinct_signal("agent", 48000, AGENT_TALK_S, pad_s=6.0, top_hz=3400.0)
    write_wav(tmp_path / "agent.wav", speech, 48000)
    async with baresip.phone(
        tmp_path / "phone",
        codecs="PCMU",
        lead_s=PHONE_LEAD_S,
        signal_s=PHONE_TALK_S,
        top_hz=3400.0,
    ) as phone:
        await phone.dial(f"sip:talk@127.0.0.1:{rtc_server.sip_port}")  # type: ignore[attr-defined]
        await phone.wait_event("CALL_RINGING", fail_on=("CALL_CLOSED",))
        sdk = await start_sdk(
            namespace,
            rtc_server,
            "agent",
            "talk",
            "--publish",
            str(tmp_path / "agent.wav"),
            "--publish-delay",
            str(AGENT_DELAY_S),
            "--seconds",
            str(AGENT_DELAY_S + AGENT_TALK_S + 2.5),
        )
        try:
            connected = await eventually(lambda: sdk.of("connected"), "the SDK in the room")
            (caller,) = connected[0]["participants"]
            phone_id = caller["identity"]
            await phone.wait_event("CALL_ESTABLISHED", timeout=10, fail_on=("CALL_CLOSED",))

            def named(who: str) -> list[dict[str, Any]]:
                return [e for e in sdk.of("active_speakers_changed") if who in e["speakers"]]

            # The phone talks 1.5 s after the answer: named as a speaker within a second of it.
            first = await eventually(
                lambda: named(phone_id), "the phone named as a speaker", timeout=6
            )
            # ... and no longer once it fell silent (its call still up, sending silence).
            silent = await eventually(
                lambda: [
                    e
                    for e in sdk.of("active_speakers_changed")
                    if e["t"] > first[0]["t"] and phone_id not in e["speakers"]
                ],
                "the phone no longer named",
                timeout=PHONE_TALK_S + 3,
            )
            # The SDK's own published speech: the client itself named, alone.
            mine = await eventually(lambda: named("agent"), "the client named", timeout=8)
            await eventually(
                lambda: [
                    e
                    for e in sdk.of("active_speakers_changed")
                    if e["t"] > mine[0]["t"] and not e["speakers"]
                ],
                "nobody named after the client's speech",
                timeout=AGENT_TALK_S + 3,
            )

            def rated_both() -> list[dict[str, Any]]:
                found = sdk.of("connection_quality_changed")
                return found if {e["identity"] for e in found} >= {phone_id, "agent"} else []

            quality = await eventually(
                rated_both, "connection quality of the phone and the client", timeout=8
            )
            assert not [e for e in phone.events if e.get("type") == "CALL_CLOSED"]
        finally:
            code = await sdk.finish(rtc_server.log.parent / "sdk-agent.log", timeout=20)
        await phone.hangup()
        await phone.wait_event("CALL_CLOSED")
    assert code == 0, sdk.events
    assert not sdk.of("error"), sdk.events
    speakers = sdk.of("active_speakers_changed")
    # While the phone talked it was the only speaker; it was never named before its speech.
    talking = [e for e in speakers if e["t"] < silent[0]["t"]]
    assert all(e["speakers"] == [phone_id] for e in talking if e["speakers"]), speakers
    assert first[0]["t"] - connected[0]["t"] >= PHONE_LEAD_S * 0.8, speakers
    # The phone spoke for 3 s: named for about that long (the window and smoothing add < 1 s).
    spoke_for = silent[0]["t"] - first[0]["t"]
    assert PHONE_TALK_S - 1.0 <= spoke_for <= PHONE_TALK_S + 1.2, speakers
    assert not [e for e in speakers if e["t"] > silent[0]["t"] and phone_id in e["speakers"]]
    assert all(e["speakers"] == ["agent"] for e in mine), speakers
    rated = {e["identity"]: e["quality"] for e in quality}
    assert rated[phone_id] == rated["agent"] == "QUALITY_EXCELLENT", quality
