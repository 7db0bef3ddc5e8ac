"""A livekit-agents worker whose `AgentSession` greets each caller with `session.say(...)`,
its voice a TTS of our own that "synthesises" a known signal: no AI service, no cloud key.

    ip netns exec NS env LIVEKIT_URL=http://HOST_IP:PORT LIVEKIT_API_KEY=... \
        LIVEKIT_API_SECRET=... AGENT_EVENTS_FILE=events.jsonl [AGENT_SIGNAL_WAV=signal.wav] \
        .venv/bin/python tests/agent_session_worker.py start

The seed page's shape: an entrypoint that connects, waits for the caller (`ctx.wait_for_
participant()`, kind SIP, `sip.phoneNumber`), then starts an `AgentSession` (there with Deepgram;
here with `SignalTTS` only: `say` needs neither STT nor LLM) and says one sentence. The session's
RoomIO audio output publishes a track and holds every frame until the server's TrackSubscribed
says someone hears it (`wait_for_subscription`), so the caller hears the greeting from its
first word or not at all.

`SignalTTS` speaks AGENT_SIGNAL_WAV (mono 16-bit, its own rate) for any text; without it,
tests/audio.py `distinct_signal("agent-session", 24000, 2.0, top_hz=3400)`. The worker is tuned
for tests as tests/agent_worker.py is (one idle process, no load shedding, port 0, a short
drain). When the caller hangs up, the session closes and deletes the room, which ends the
job. AGENT_EVENTS_FILE gets one JSON object per line: job_started, caller, session_started,
say_started, say_done (its `interrupted`), job_ended, error.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")  # no VAD/EOT models in RAM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    Agent,
    AgentServer,
    AgentSession,
    APIConnectOptions,
    JobContext,
    cli,
    room_io,
    tts,
    utils,
)

from tests.audio import distinct_signal, read_wav

GREETING = "Hello, you are speaking to the test agent."  # one sentence: one synthesis


def event(name: str, **fields: Any) -> None:
    """Append one JSON line to AGENT_EVENTS_FILE (when set)."""
    path = os.environ.get("AGENT_EVENTS_FILE")
    if path:
        line = json.dumps({"event": name, "time": time.time(), "pid": os.getpid(), **fields})
        with open(path, "a", encoding="utf-8") as f:  # one write per line: lines never mix
            f.write(line + "\n")


def signal_pcm() -> tuple[bytes, int]:
    """The signal every synthesis returns: 16-bit mono PCM and its rate."""
    path = os.environ.get("AGENT_SIGNAL_WAV")
    if path:
        samples, rate = read_wav(path)
    else:
        rate = 24000
        samples = distinct_signal("agent-session", rate, 2.0, top_hz=3400.0)
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    return pcm.tobytes(), rate


class SignalTTS(tts.TTS):
    """A TTS that answers every text with the same known signal (non-streaming: AgentSession
    wraps it in a StreamAdapter that calls `synthesize` once per sentence)."""

    def __init__(self) -> None:
        self._pcm, rate = signal_pcm()
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False), sample_rate=rate, num_channels=1
        )

    @property
    def provider(self) -> str:
        return "sipbridge-tests"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return SignalStream(tts=self, input_text=text, conn_options=conn_options)


class SignalStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        signal_tts = self._tts
        assert isinstance(signal_tts, SignalTTS)
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=signal_tts.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        output_emitter.push(signal_tts._pcm)
        output_emitter.flush()


server = AgentServer(
    port=int(os.environ.get("AGENT_WORKER_PORT", "0")),
    num_idle_processes=1,
    load_fnc=lambda: 0.0,
    load_threshold=math.inf,
    drain_timeout=5,
    initialize_process_timeout=20.0,
)


@server.rtc_session(agent_name=os.environ.get("AGENT_NAME", ""))
async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    event("job_started", job_id=ctx.job.id, room=ctx.room.name)

    async def on_shutdown(reason: str) -> None:
        event("job_ended", reason=reason)

    ctx.add_shutdown_callback(on_shutdown)
    try:
        participant = await ctx.wait_for_participant()
        event(
            "caller",
            identity=participant.identity,
            kind=rtc.ParticipantKind.Name(participant.kind),
            phone_number=participant.attributes.get("sip.phoneNumber", ""),
        )
        session: AgentSession[None] = AgentSession(tts=SignalTTS())
        # When the caller hangs up the session closes (close_on_disconnect) and deletes the
        # room, which ends the job: what LiveKit's telephony examples do.
        await session.start(
            agent=Agent(instructions="Greet the caller."),
            room=ctx.room,
            room_options=room_io.RoomOptions(delete_room_on_close=True),
        )
        event("session_started")
        handle = session.say(GREETING, allow_interruptions=False)
        event("say_started", speech_id=handle.id)
        await handle  # played out (RoomIO waits for the track's playout)
        event("say_done", interrupted=handle.interrupted)
    except Exception as exc:
        event("error", error=f"{type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    cli.run_app(server)
