"""A real `AgentSession` speaks to a phone: `session.say(...)` heard from its first word.

The worker (tests/agent_session_worker.py) runs inside a network namespace and registers on
`/agent`. A phone (baresip) dials a direct-rule room; the room's creation dispatches a job; the
agent joins, finds the caller (`ctx.wait_for_participant()`, kind SIP), starts an `AgentSession`
whose only service is a TTS of ours that returns a known signal, and says one sentence.

What this proves: livekit-agents' RoomIO audio output holds every frame until the track it
publishes is subscribed (`LocalTrackPublication.wait_for_subscription()`, resolved by the
server's `TrackSubscribed`). Without that message the agent would never speak; sent too early
the start of the greeting would be lost. The phone must hear four of the five 100 ms windows
of the first half second and at least 80 % of the quarter-second windows overall.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import api
from livekit.protocol import room, sip

from tests import baresip, netns
from tests.agent_process import agent_worker
from tests.audio import distinct_signal, read_wav, windows_heard, write_wav
from tests.harness import eventually
from tests.helpers import API_KEY, API_SECRET, ServerProcess

WORKER = Path(__file__).parents[1] / "agent_session_worker.py"
pytestmark = [
    # real time: alone after the parallel tests (the Makefile, `-m serial`)
    pytest.mark.serial,
    pytest.mark.skipif(not shutil.which("baresip"), reason="baresip comes with `make test`"),
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
]

RATE = 24000  # what the TTS "synthesises" at: RoomIO's output rate, so nothing resamples it
SIGNAL_S = 2.0


def events_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def seconds_recorded(path: Path) -> float:
    """How much a phone recording (sndfile's WAV, 8 kHz 16-bit mono for PCMU) holds so far,
    from the file's size: its header's sizes are only right once the call ended."""
    head = path.read_bytes()[:4096]
    data = head.find(b"data")
    if data < 0:
        return 0.0
    return max(0, path.stat().st_size - (data + 8)) / (2 * 8000)


async def test_an_agent_session_greets_the_caller_from_its_first_word(
    rtc_server: ServerProcess, namespace: netns.VethNamespace, tmp_path: Path
) -> None:
    async with api.LiveKitAPI(url=rtc_server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        await lk.sip.create_dispatch_rule(
            sip.CreateSIPDispatchRuleRequest(
                dispatch_rule=sip.SIPDispatchRuleInfo(
                    rule=sip.SIPDispatchRule(
                        dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name="greeting")
                    )
                )
            )
        )
    spoken = distinct_signal("agent-session", RATE, SIGNAL_S, top_hz=3400.0)
    write_wav(tmp_path / "greeting.wav", spoken, RATE)
    events_file = tmp_path / "agent_events.jsonl"

    def happened(name: str) -> list[dict[str, Any]]:
        return [e for e in events_of(events_file) if e["event"] == name]

    async with agent_worker(
        WORKER,
        namespace,
        rtc_server,
        tmp_path / "worker.log",
        interval=0.1,
        stop_s=15,
        AGENT_EVENTS_FILE=str(events_file),
        AGENT_SIGNAL_WAV=str(tmp_path / "greeting.wav"),
    ) as worker:
        async with baresip.phone(tmp_path / "phone", codecs="PCMU") as phone:
            await phone.dial(f"sip:greeting@127.0.0.1:{rtc_server.sip_port}")  # type: ignore[attr-defined]
            # answered when the agent subscribes to the caller
            await phone.wait_event("CALL_ESTABLISHED", timeout=15, fail_on=("CALL_CLOSED",))

            def said() -> bool:
                assert not happened("error"), events_of(events_file)
                return bool(happened("say_done"))

            await eventually(said, "the agent to finish its greeting", timeout=10)
            # played out at the agent: the phone has it once its recording ran on a bit more
            # (the server's and the phone's jitter buffers)
            recording = phone.recorded()
            done_at = seconds_recorded(recording)
            await eventually(
                lambda: seconds_recorded(recording) >= done_at + 0.5,
                "the phone to record past the greeting",
                timeout=5,
            )
            await phone.hang_up_and_stop()
            heard, rate = read_wav(phone.recorded())
        # the caller left: the session closed and deleted the room, which ended the job (the
        # server's JobTermination or the room's disconnection, whichever reaches it first)
        await eventually(lambda: happened("job_ended"), "the job to end", timeout=10)
        async with api.LiveKitAPI(url=rtc_server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
            rooms = await lk.room.list_rooms(room.ListRoomsRequest(names=["greeting"]))
        assert not rooms.rooms, rooms
    (caller,) = happened("caller")
    assert caller["kind"] == "PARTICIPANT_KIND_SIP", caller
    assert caller["phone_number"] == phone.user
    (done,) = happened("say_done")
    assert done["interrupted"] is False, done
    # the first half second, in 100 ms windows: at most one missed (a jitter buffer settling
    # under load; 1.0 on a quiet machine) - the ~160 ms a client loses when it speaks before
    # its track is subscribed would cost two
    onset = int(np.argmax(np.abs(spoken) > 1e-3))
    first = spoken[onset : onset + int(0.5 * RATE)]
    first_words = windows_heard(first, heard, RATE, window_s=0.1, recorded_rate=rate)
    assert first_words >= 0.8, first_words
    overall = windows_heard(spoken, heard, RATE, recorded_rate=rate)
    assert overall >= 0.8, overall
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
