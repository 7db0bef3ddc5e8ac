"""Issue 16's "done when", through the official `livekit-api`: a real phone (baresip) calls into
a room where an SDK client (the official `livekit` realtime SDK, in a network namespace) talks
back, and the call is recorded by two room composite egresses at once (two recordings of one
room): a mono OGG and a stereo OGG (`audio_mixing=DUAL_CHANNEL_AGENT`: the phone on the right,
the SDK client on the left).

Both files decode with PyAV. Each is as long as the recording was - from its `started_at` to
its file's `ended_at`, as the `EgressInfo` says - within 100 ms. The phone's signal and the
client's signal are both in the mono file, and each on its own channel of the stereo one (per
quarter-second window a correlation over 0.9, on at least 80 % of the windows - a tick the
loaded machine made the clock skip costs one, in every mix alike; on the other channel none).
Each recording hears the room (`started_at`: its first frame is the next 20 ms tick) within
100 ms of its request, its file is open (`EGRESS_ACTIVE`) within a second, the webhooks arrive
in LiveKit's order and
`livekit.api.WebhookReceiver` accepts them all, the phone's packets are still forwarded to the
SDK client as they are while it is recorded, and the call log links the call to both recordings.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from livekit import api
from livekit.protocol import egress, room

from tests import baresip, netns
from tests.audio import distinct_signal, windows_heard, write_wav
from tests.harness import client, direct_rule, eventually, served
from tests.helpers import ServerProcess
from tests.interop.conftest import rtc_server_process
from tests.interop.test_webhooks import Receiver, receiver
from tests.interop.test_webrtc import answered_by_sdk

pytestmark = [
    # real time: alone after the parallel tests (the Makefile, `-m serial`)
    pytest.mark.serial,
    pytest.mark.skipif(not shutil.which("baresip"), reason="baresip comes with `make test`"),
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
]
Status = egress.EgressStatus
HEARD = 0.9  # per-window correlation
# ... on this share of windows at least: a tick of the 20 ms clock skipped under load (the
# machine's other processes) costs the window it falls in, in every mix of the room alike
SHARE = 0.8


@pytest.fixture
async def hooks() -> AsyncIterator[Receiver]:
    async with receiver() as rx:
        yield rx


@pytest.fixture
def recorder(
    tmp_path: Path, namespace: netns.VethNamespace, hooks: Receiver
) -> Iterator[ServerProcess]:
    rec = ("--recordings-dir", str(tmp_path / "rec"), "--webhook", hooks.url)
    with served(rtc_server_process(tmp_path, namespace, *rec)) as proc:
        yield proc


def decode_channels(path: Path) -> tuple[np.ndarray, int]:
    """(samples, channels) as floats, and the rate."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        channels = stream.codec_context.channels
        parts = []
        for frame in container.decode(stream):
            data = frame.to_ndarray()
            parts.append(data.T if frame.format.is_planar else data.reshape(-1, channels))
        return np.concatenate(parts).astype(np.float64), stream.rate


def heard(reference: np.ndarray, rate: int, recorded: np.ndarray, recorded_rate: int) -> float:
    """The share of the reference's windows the recording carries with a correlation > HEARD."""
    return windows_heard(reference, recorded, rate, threshold=HEARD, recorded_rate=recorded_rate)


async def test_a_phone_and_an_sdk_client_are_recorded_mono_and_on_their_own_channels(
    recorder: ServerProcess, namespace: netns.VethNamespace, hooks: Receiver, tmp_path: Path
) -> None:
    # The phone talks first (from 1 s after it is answered), the client after it (from 5 s): in
    # the mono file each is then heard alone; in the stereo one each must stay on its side.
    sent = distinct_signal("recorded agent", 48000, 3.0, top_hz=3400.0)
    # Its first 0.5 s silent: the first ~200 ms a client captures after publishing mid-call
    # can be lost before they reach the server (seen as silence in every mix alike: upstream
    # of any recording), as the phone's `lead_s` keeps its signal clear of the call's start.
    write_wav(tmp_path / "agent.wav", np.concatenate([np.zeros(24000), sent]), 48000)
    await direct_rule(recorder, "recorded")
    async with client(recorder) as lk:
        await lk.room.create_room(room.CreateRoomRequest(name="recorded"))
        started: dict[str, egress.EgressInfo] = {}
        asked: dict[str, float] = {}
        for name, mixing in (("mono", 0), ("stereo", egress.AudioMixing.DUAL_CHANNEL_AGENT)):
            asked[name] = time.time()
            started[name] = await lk.egress.start_room_composite_egress(
                egress.RoomCompositeEgressRequest(
                    room_name="recorded",
                    audio_only=True,
                    audio_mixing=mixing,
                    file_outputs=[
                        egress.EncodedFileOutput(
                            file_type=egress.EncodedFileType.OGG, filepath=f"{name}/{{room_id}}"
                        )
                    ],
                )
            )
        async with baresip.phone(
            tmp_path / "phone", codecs="PCMU", top_hz=3400.0, lead_s=1.0
        ) as phone:
            sdk = await answered_by_sdk(
                phone,
                namespace,
                recorder,
                "recorded",
                "recorded",
                "--publish",
                str(tmp_path / "agent.wav"),
                "--record",
                str(tmp_path / "agent_heard.wav"),
                "--publish-after-record",
                "--publish-when-subscribed",
                "--publish-delay",
                "5.0",
                "--seconds",
                "11",
            )
            listed = await lk.room.list_participants(room.ListParticipantsRequest(room="recorded"))
            (call_id,) = [
                p.attributes["sip.callID"] for p in listed.participants if p.kind == p.Kind.SIP
            ]
            await sdk
            counters = await asyncio.to_thread(recorder.metrics)
            for info in started.values():
                await lk.egress.stop_egress(egress.StopEgressRequest(egress_id=info.egress_id))
            await phone.hangup()
        ended: dict[str, egress.EgressInfo] = {}
        for name, info in started.items():

            async def complete(egress_id: str = info.egress_id) -> egress.EgressInfo | None:
                (now,) = (
                    await lk.egress.list_egress(egress.ListEgressRequest(egress_id=egress_id))
                ).items
                assert now.status != Status.EGRESS_FAILED, now.error
                return now if now.status == Status.EGRESS_COMPLETE else None

            ended[name] = await eventually(complete, f"{name} complete", timeout=10)
    # the phone's PCMU went on to the SDK client as it was, recorded or not
    rtc = {k.split('"')[1]: v for k, v in counters.items() if k.startswith("sipbridge_rtc_audio{")}
    assert rtc["forwarded"] > 7 / 0.02 * 0.9 and rtc["made"] == 0, rtc

    assert phone.reference is not None
    after = await asyncio.to_thread(recorder.metrics)
    files = {}
    for name, info in ended.items():
        (result,) = info.file_results
        path = Path(result.location)
        assert (
            path
            == tmp_path / "rec" / result.filename
            == (tmp_path / "rec" / name / f"{info.room_id}.ogg")
        )
        pcm, rate = decode_channels(path)
        assert pcm.shape[1] == (2 if name == "stereo" else 1)
        recorded_s = (result.ended_at - result.started_at) / 1e9
        media = {k: v for k, v in after.items() if "clock" in k or "egress" in k}
        assert abs(len(pcm) / rate - recorded_s) < 0.1, (name, len(pcm) / rate, recorded_s, media)
        assert result.size == (await asyncio.to_thread(path.stat)).st_size
        files[name] = (pcm / 32768 if np.abs(pcm).max() > 2 else pcm, rate)
    mono, rate = files["mono"]
    assert heard(phone.reference, phone.rate, mono[:, 0], rate) >= SHARE
    assert heard(sent, 48000, mono[:, 0], rate) >= SHARE
    stereo, rate = files["stereo"]
    left, right = stereo[:, 0], stereo[:, 1]
    assert heard(phone.reference, phone.rate, right, rate) >= SHARE
    assert heard(sent, 48000, left, rate) >= SHARE
    assert heard(phone.reference, phone.rate, left, rate) <= 0.1
    assert heard(sent, 48000, right, rate) <= 0.1

    # webhooks: each recording's four, in order, accepted by the official receiver; each
    # active within 100 ms of its request
    def arrived() -> list[api.WebhookEvent] | None:
        seen = [d.event for d in hooks.deliveries if d.event and d.event.event.startswith("egress")]
        return seen if len(seen) >= 8 else None

    events = await eventually(arrived, "8 egress webhooks", timeout=5)
    assert all(d.error == "" for d in hooks.deliveries), [d.error for d in hooks.deliveries]
    for name, info in started.items():
        mine = [e for e in events if e.egress_info.egress_id == info.egress_id]
        assert [(e.event, e.egress_info.status) for e in mine] == [
            ("egress_started", Status.EGRESS_STARTING),
            ("egress_updated", Status.EGRESS_ACTIVE),
            ("egress_updated", Status.EGRESS_ENDING),
            ("egress_ended", Status.EGRESS_COMPLETE),
        ]
        # recording from the room's next tick after the request (its first frame is the file's
        # start), the file open (ACTIVE) soon after: the encoder process opens it
        recording_after = mine[1].egress_info.started_at / 1e9 - asked[name]
        assert recording_after < 0.1, (name, recording_after)
        active_after = mine[1].egress_info.updated_at / 1e9 - asked[name]
        assert active_after < 1.0, (name, active_after)
    # the call log links the call to both recordings: `sipbridge call show ID`
    shown = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sipbridge",
        "call",
        "show",
        call_id,
        "--db",
        str(recorder.db),
        "--json",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(shown.communicate(), 30)
    recordings = json.loads(out)["recordings"]
    assert {(r["egress_id"], r["status"]) for r in recordings} == {
        (info.egress_id, "complete") for info in started.values()
    }
