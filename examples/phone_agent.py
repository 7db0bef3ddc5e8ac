"""A phone agent that runs offline: it answers callers with their own voice and their own keys.

This is the agent of LiveKit's "SIP participant attributes" page (check the participant's kind
and `sip.phoneNumber` after `await ctx.connect()`), with the speech pipeline (STT, LLM and TTS,
which need cloud keys) replaced by something that needs nothing but the server:

- every frame the caller says is played back to them after ECHO_DELAY_S seconds (0.5 by
  default), on a track the agent publishes - both directions of audio in one loop;
- every key the caller presses (`sip_dtmf_received`) is sent back to them as the same DTMF
  digit (`publish_dtmf`), which the phone receives as RFC 4733 telephone-events;
- when the caller hangs up, the job ends.

Run a worker (no plugin, no cloud account; `pip install livekit-agents`):

    export LIVEKIT_URL=http://127.0.0.1:7880        # your sipbridge server (ws:// works too)
    export LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
    python examples/phone_agent.py start            # or `dev`: debug logs, no process pool

then give the inbound trunk a dispatch rule whose `room_config` names no agent: each call's room
gets a job for this worker (an `agent_name` in WorkerOptions makes the dispatch explicit).

For scripts and tests, EXAMPLE_EVENTS_FILE=path makes the agent append one JSON object per line
to that file for what it does ("event": job_started, caller, echo_started, echo_stats,
dtmf_received, dtmf_sent, echo_done, job_ended, error). The same facts are in the log.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import time
import wave
from typing import Any

from livekit import rtc
from livekit.agents import AutoSubscribe, JobContext, WorkerOptions, cli

logger = logging.getLogger("phone-agent")

SAMPLE_RATE = 48000
FRAME_MS = 10
ECHO_DELAY_S = float(os.environ.get("ECHO_DELAY_S", "0.5"))


def event(name: str, **fields: Any) -> None:
    """Log what happened; also append it as JSON to EXAMPLE_EVENTS_FILE when that is set."""
    logger.info(name, extra=fields)
    path = os.environ.get("EXAMPLE_EVENTS_FILE")
    if path:
        line = json.dumps({"event": name, "time": time.time(), "pid": os.getpid(), **fields})
        with open(path, "a", encoding="utf-8") as f:  # one write per line: lines never mix
            f.write(line + "\n")


async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    event(
        "job_started",
        job_id=ctx.job.id,
        room=ctx.room.name,
        identity=ctx.room.local_participant.identity,
    )

    # -- the page's example: who is calling? ---------------------------------------------------
    participant = await ctx.wait_for_participant()
    on_the_phone = False
    # Check if the participant is a SIP participant
    if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP:
        # (where the page picks a Deepgram model better suited for phone calls)
        on_the_phone = True
        if participant.attributes["sip.phoneNumber"] == "+15105550100":
            logger.info("Caller phone number is +1-510-555-0100")
        # Add other logic here to modify the agent based on the caller's phone number
    event(
        "caller",
        identity=participant.identity,
        kind=rtc.ParticipantKind.Name(participant.kind),
        on_the_phone=on_the_phone,
        phone_number=participant.attributes.get("sip.phoneNumber", ""),
        attributes=dict(participant.attributes),
    )

    # -- instead of STT/LLM/TTS: echo the caller's audio back to them ----------------------------
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("echo", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await ctx.room.local_participant.publish_track(track, options)

    caller_track: asyncio.Future[rtc.Track] = asyncio.get_running_loop().create_future()

    def on_track_subscribed(
        track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
    ) -> None:
        is_caller = p.identity == participant.identity
        if is_caller and track.kind == rtc.TrackKind.KIND_AUDIO and not caller_track.done():
            caller_track.set_result(track)

    ctx.room.on("track_subscribed", on_track_subscribed)
    for pub in participant.track_publications.values():  # subscribed before we listened
        if pub.track is not None and pub.kind == rtc.TrackKind.KIND_AUDIO:
            on_track_subscribed(pub.track, pub, participant)

    # -- answer the caller's keys with the same keys --------------------------------------------
    async def answer_key(code: int, digit: str) -> None:
        try:
            await ctx.room.local_participant.publish_dtmf(code=code, digit=digit)
            event("dtmf_sent", code=code, digit=digit)
        except Exception as exc:
            event("error", where="publish_dtmf", error=repr(exc))

    key_tasks: set[asyncio.Task[None]] = set()

    def on_dtmf(dtmf: rtc.SipDTMF) -> None:
        who = dtmf.participant.identity if dtmf.participant else ""
        event("dtmf_received", identity=who, code=dtmf.code, digit=dtmf.digit)
        task = asyncio.create_task(answer_key(dtmf.code, dtmf.digit))
        key_tasks.add(task)
        task.add_done_callback(key_tasks.discard)

    ctx.room.on("sip_dtmf_received", on_dtmf)

    # -- the job ends when the caller leaves -----------------------------------------------------
    caller_left = asyncio.Event()

    def on_participant_disconnected(p: rtc.RemoteParticipant) -> None:
        if p.identity == participant.identity:
            event("caller_left", identity=p.identity)
            caller_left.set()

    ctx.room.on("participant_disconnected", on_participant_disconnected)
    if participant.identity not in ctx.room.remote_participants:  # gone already
        caller_left.set()

    async def on_shutdown(reason: str) -> None:
        event("job_ended", reason=reason)

    ctx.add_shutdown_callback(on_shutdown)

    async def echo_caller() -> None:
        await echo(source, await caller_track)

    echoing = asyncio.create_task(echo_caller())
    leaving = asyncio.create_task(caller_left.wait())
    try:
        await asyncio.wait({echoing, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (echoing, leaving):
            task.cancel()
        await asyncio.gather(echoing, leaving, return_exceptions=True)
    ctx.shutdown(reason="caller left")


async def echo(source: rtc.AudioSource, track: rtc.Track) -> None:
    """Play what `track` says into `source`, ECHO_DELAY_S later (silence until then)."""
    event("echo_started", track_sid=track.sid, delay_s=ECHO_DELAY_S)
    delay_frames = round(ECHO_DELAY_S * 1000 / FRAME_MS)
    samples = SAMPLE_RATE * FRAME_MS // 1000
    silence = rtc.AudioFrame.create(SAMPLE_RATE, 1, samples)
    line: collections.deque[rtc.AudioFrame] = collections.deque()
    frames = 0
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=FRAME_MS)
    # EXAMPLE_RECORD_FILE=path.wav keeps what the caller said (48 kHz mono), for checking.
    record_path = os.environ.get("EXAMPLE_RECORD_FILE")
    recording = wave.open(record_path, "wb") if record_path else None  # noqa: SIM115
    if recording is not None:
        recording.setnchannels(1)
        recording.setsampwidth(2)
        recording.setframerate(SAMPLE_RATE)
    try:
        async for ev in stream:
            if recording is not None:
                recording.writeframes(bytes(ev.frame.data))
            line.append(ev.frame)
            out = line.popleft() if len(line) > delay_frames else silence
            await source.capture_frame(out)
            frames += 1
            if frames % 100 == 0:  # once a second
                event("echo_stats", frames=frames)
    finally:
        if recording is not None:
            recording.close()
        event("echo_done", frames=frames)
        await stream.aclose()


if __name__ == "__main__":
    cli.run_app(WorkerOptions(entrypoint_fnc=entrypoint))
