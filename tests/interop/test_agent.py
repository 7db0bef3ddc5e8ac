"""A real `livekit-agents` worker answers a phone call: the seed page's agent code, unmodified.

The worker (tests/agent_worker.py, the entrypoint of examples/phone_agent.py) runs inside a
network namespace and registers on `/agent`. A phone (baresip) dials a direct-rule room; the
room's creation dispatches a job to the worker; the agent joins over WebRTC, finds the caller
with `ctx.wait_for_participant()` (kind SIP, `sip.phoneNumber`), subscribes - which answers the
call - and echoes what it hears half a second later, and each key pressed back as DTMF. The
phone records its own voice coming back (correlation above 0.9) and gets its keys back.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests import baresip, netns
from tests.agent_process import agent_worker
from tests.audio import best_correlation, read_wav, windows_heard
from tests.harness import direct_rule, eventually
from tests.helpers import ServerProcess

WORKER = Path(__file__).parents[1] / "agent_worker.py"
pytestmark = [
    pytest.mark.skipif(not shutil.which("baresip"), reason="baresip comes with `make test`"),
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
    # real time (what the agent heard, per quarter second): alone after the parallel tests
    pytest.mark.serial,
]


LEAD_S = 3.5  # the phone's silence before it talks (as tests/interop/test_cluster_rooms.py)


def events_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_agent_worker_answers_the_phone_and_echoes_it(
    rtc_server: ServerProcess,
    namespace: netns.VethNamespace,
    tmp_path: Path,
) -> None:
    await direct_rule(rtc_server, "support")
    events_file = tmp_path / "agent_events.jsonl"
    async with agent_worker(
        WORKER,
        namespace,
        rtc_server,
        tmp_path / "worker.log",
        EXAMPLE_EVENTS_FILE=str(events_file),
        EXAMPLE_RECORD_FILE=str(tmp_path / "agent_heard.wav"),
    ) as worker:
        # The phone talks LEAD_S into its stream, once the SDK's jitter buffer has settled on
        # it (it time-stretches a new stream's first seconds, which no waveform survives): at
        # 1.5 s a helper's loaded run heard 0.73 of the windows twice (the bar stays 0.8).
        async with baresip.phone(
            tmp_path / "phone", codecs="PCMU", top_hz=3400.0, lead_s=LEAD_S
        ) as phone:
            await phone.dial(f"sip:support@127.0.0.1:{rtc_server.sip_port}")  # type: ignore[attr-defined]
            # answered when the agent subscribes to the caller
            await phone.wait_event("CALL_ESTABLISHED", timeout=20, fail_on=("CALL_CLOSED",))
            # The conversation itself: LEAD_S of silence, the 3 s signal, its echo 0.5 s later.
            await asyncio.sleep(LEAD_S + 4.0)
            await phone.send_dtmf("12#")
            got = await phone.wait_dtmf("12#", timeout=8)
            await phone.hang_up_and_stop()
            heard, rate = read_wav(phone.recorded())
        # the job ends when its caller leaves
        await eventually(
            lambda: any(e["event"] == "job_ended" for e in events_of(events_file)),
            "the job to end when its caller leaves",
            timeout=15,
            interval=0.2,
        )
    assert got == "12#"
    events = events_of(events_file)
    (caller,) = [e for e in events if e["event"] == "caller"]
    assert caller["kind"] == "PARTICIPANT_KIND_SIP" or caller["kind"] == 3, caller
    assert caller["phone_number"] == phone.user
    assert phone.reference is not None
    # The agent heard the caller ...
    agent_heard, agent_rate = read_wav(tmp_path / "agent_heard.wav")
    # (per quarter second: a jitter buffer that shifts time once under load keeps the rest)
    received = windows_heard(phone.reference, agent_heard, phone.rate, recorded_rate=agent_rate)
    assert received >= 0.8, received
    # ... and the caller heard the agent: its own voice, back through two Opus legs.
    echo = windows_heard(phone.reference, heard, phone.rate, recorded_rate=rate)
    assert echo >= 0.8, echo
    _, lag = best_correlation(phone.reference, heard, phone.rate, recorded_rate=rate)
    assert 0.4 < lag < 1.5, lag  # the agent's half second and the round trip
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
