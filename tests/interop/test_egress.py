"""Call recording through LiveKit's Egress API, driven by the official `livekit-api` (issue 16).

A real phone (headless baresip) plays a known signal into a room; the recording's file, decoded
with PyAV, must carry it (`windows_heard` >= 0.8): a room composite (audio only, OGG) stopped
with StopEgress, a track egress of the phone's track ended by the phone hanging up, and a
dispatch rule whose `room_config.egress` records every call with no API call at all. Webhooks
are verified by `livekit.api.WebhookReceiver`. Bad requests get the Twirp codes LiveKit users
see; a server stopped mid-recording leaves a playable file.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from livekit import api
from livekit.protocol import egress, room, sip

from tests import baresip
from tests.audio import windows_heard, write_wav
from tests.harness import client, eventually, sip_server_process
from tests.helpers import ServerProcess, token, twirp
from tests.interop.conftest import MEDIA_FLAGS
from tests.interop.test_webhooks import Receiver, receiver

pytestmark = pytest.mark.skipif(
    not shutil.which("baresip"), reason="baresip comes with `make test` (baresip-core)"
)

SIGNAL_S = 3.0  # each phone plays this much of its signal, then silence
Status = egress.EgressStatus


@pytest.fixture
async def hooks() -> AsyncIterator[Receiver]:
    async with receiver() as rx:
        yield rx


@pytest.fixture
async def recorder(tmp_path: Path, hooks: Receiver) -> AsyncIterator[ServerProcess]:
    rec = ("--recordings-dir", str(tmp_path / "rec"), "--webhook", hooks.url)
    proc = sip_server_process(tmp_path, *MEDIA_FLAGS, *rec)
    proc.recordings = tmp_path / "rec"  # type: ignore[attr-defined]
    await asyncio.to_thread(proc.start)
    yield proc
    if proc.proc is not None:
        assert await asyncio.to_thread(proc.stop) == 0, proc.log_tail()


def target(server: ServerProcess, user: str) -> str:
    return f"sip:{user}@127.0.0.1:{server.sip_port}"  # type: ignore[attr-defined]


async def direct_rule(
    lk: api.LiveKitAPI, room_name: str, config: room.RoomConfiguration | None = None
) -> None:
    """Every call to `room_name`, with the rule's `room_config` (what `harness.direct_rule` does
    not take: the auto-recording test needs it)."""
    info = sip.SIPDispatchRuleInfo(
        rule=sip.SIPDispatchRule(
            dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name=room_name)
        ),
        name=f"to {room_name}",
    )
    if config is not None:
        info.room_config.CopyFrom(config)
    await lk.sip.create_dispatch_rule(sip.CreateSIPDispatchRuleRequest(dispatch_rule=info))


@asynccontextmanager
async def call(
    server: ServerProcess, directory: Path, room_name: str, **options: Any
) -> AsyncIterator[baresip.Phone]:
    """A phone playing its signal in `room_name`, answered because a silent second phone joins
    the room too (a call rings until someone else is there to hear it)."""
    silence = write_wav(directory / "silence.wav", np.zeros(8000 * 40), 8000)
    async with (
        baresip.phone(directory / "talker", **options) as talker,
        baresip.phone(directory / "quiet", codecs="PCMU", source=silence) as quiet,
    ):
        await talker.dial(target(server, room_name))
        await talker.wait_event("CALL_RINGING", fail_on=("CALL_CLOSED",))
        await quiet.dial(target(server, room_name), established=True)
        await talker.wait_event("CALL_ESTABLISHED", fail_on=("CALL_CLOSED",))
        yield talker
        await talker.hangup()
        await quiet.hangup()


async def listed(lk: api.LiveKitAPI, **fields: object) -> list[egress.EgressInfo]:
    reply = await lk.egress.list_egress(egress.ListEgressRequest(**fields))  # type: ignore[arg-type]
    return list(reply.items)


async def recorded_for(lk: api.LiveKitAPI, egress_id: str, seconds: float) -> egress.EgressInfo:
    """The egress once it has recorded `seconds` of audio (its live file result's duration)."""

    async def long_enough() -> egress.EgressInfo | None:
        (info,) = await listed(lk, egress_id=egress_id)
        assert info.status in (Status.EGRESS_STARTING, Status.EGRESS_ACTIVE), info
        return info if info.file_results[0].duration >= seconds * 1e9 else None

    return await eventually(long_enough, f"{seconds} s recorded", timeout=seconds + 6)


async def completed(lk: api.LiveKitAPI, egress_id: str) -> egress.EgressInfo:
    async def done() -> egress.EgressInfo | None:
        (info,) = await listed(lk, egress_id=egress_id)
        assert info.status != Status.EGRESS_FAILED, info.error
        return info if info.status == Status.EGRESS_COMPLETE else None

    return await eventually(done, f"egress {egress_id} complete", timeout=8)


def decode(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
        return pcm.astype(np.float64), stream.rate


def check_file(server: ServerProcess, info: egress.EgressInfo, phone: baresip.Phone) -> float:
    """The file result agrees with the file on disk, which carries the phone's signal: the share
    of its windows heard."""
    (result,) = info.file_results
    path = Path(result.location)
    assert path.is_relative_to(server.recordings)  # type: ignore[attr-defined]
    assert path == server.recordings / result.filename  # type: ignore[attr-defined]
    assert result.size == path.stat().st_size > 0
    assert info.started_at == result.started_at < result.ended_at <= info.ended_at
    pcm, rate = decode(path)
    # the file is as long as the recording was: from its first frame to its last, as the
    # EgressInfo says (within 100 ms), and as long as its FileInfo says (within the encoder's
    # padding, a frame)
    recorded_s = (result.ended_at - result.started_at) / 1e9
    assert abs(len(pcm) / rate - recorded_s) < 0.1, (len(pcm) / rate, recorded_s)
    assert abs(len(pcm) / rate - result.duration / 1e9) < 0.03
    assert phone.reference is not None
    return windows_heard(phone.reference, pcm, phone.rate, recorded_rate=rate)


async def egress_events(hooks: Receiver, count: int) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []

    def arrived() -> list[tuple[str, int]] | None:
        seen[:] = [
            (d.event.event, d.event.egress_info.status)
            for d in hooks.deliveries
            if d.event is not None and d.event.event.startswith("egress_")
        ]
        return seen if len(seen) >= count else None

    return await eventually(arrived, f"{count} egress webhooks", timeout=5)


@pytest.mark.serial  # real time: the phone's audio heard in the file
async def test_a_call_is_recorded_by_a_room_composite_egress_to_ogg(
    recorder: ServerProcess, hooks: Receiver, tmp_path: Path
) -> None:
    async with client(recorder) as lk:
        await lk.room.create_room(room.CreateRoomRequest(name="rec"))
        await direct_rule(lk, "rec")
        started = await lk.egress.start_room_composite_egress(
            egress.RoomCompositeEgressRequest(
                room_name="rec",
                audio_only=True,
                file_outputs=[
                    egress.EncodedFileOutput(
                        file_type=egress.EncodedFileType.OGG, filepath="{room_name}/{room_id}"
                    )
                ],
            )
        )
        assert started.status == Status.EGRESS_STARTING
        assert started.egress_id.startswith("EG_") and started.room_name == "rec"
        async with call(recorder, tmp_path, "rec", codecs="opus") as phone:
            await recorded_for(lk, started.egress_id, SIGNAL_S + 1)
            stopping = await lk.egress.stop_egress(
                egress.StopEgressRequest(egress_id=started.egress_id)
            )
        assert stopping.status == Status.EGRESS_ENDING
        info = await completed(lk, started.egress_id)
        assert info.file_results[0].filename == f"rec/{info.room_id}.ogg"
        assert await listed(lk, room_name="rec", active=True) == []
        assert check_file(recorder, info, phone) >= 0.8
        with pytest.raises(api.TwirpError) as again:
            await lk.egress.stop_egress(egress.StopEgressRequest(egress_id=started.egress_id))
        assert again.value.code == "failed_precondition"
    assert await egress_events(hooks, 4) == [
        ("egress_started", Status.EGRESS_STARTING),
        ("egress_updated", Status.EGRESS_ACTIVE),
        ("egress_updated", Status.EGRESS_ENDING),
        ("egress_ended", Status.EGRESS_COMPLETE),
    ]


@pytest.mark.serial  # real time: the phone's audio heard in the file
async def test_the_phone_track_is_recorded_until_the_phone_hangs_up(
    recorder: ServerProcess, tmp_path: Path
) -> None:
    async with client(recorder) as lk:
        await direct_rule(lk, "track-room")
        async with call(recorder, tmp_path, "track-room", lead_s=0.5, top_hz=3400.0) as phone:
            reply = await lk.room.list_participants(room.ListParticipantsRequest(room="track-room"))
            (caller,) = [
                p for p in reply.participants if p.attributes["sip.phoneNumber"] == phone.user
            ]
            (track,) = caller.tracks
            started = await lk.egress.start_track_egress(
                egress.TrackEgressRequest(
                    room_name="track-room",
                    track_id=track.sid,
                    file=egress.DirectFileOutput(filepath="tracks/"),
                )
            )
            await recorded_for(lk, started.egress_id, SIGNAL_S + 1)
        # the phone hung up: its track is gone, and its recording ends
        info = await completed(lk, started.egress_id)
        assert info.track.track_id == track.sid
        assert info.file_results[0].filename.startswith(f"tracks/track-room-{caller.identity}-")
        assert check_file(recorder, info, phone) >= 0.8


@pytest.mark.serial  # real time: the phone's audio heard in the file
async def test_a_dispatch_rule_records_every_call_without_an_api_call(
    recorder: ServerProcess, tmp_path: Path
) -> None:
    config = room.RoomConfiguration(
        departure_timeout=1,
        egress=room.RoomEgress(
            room=egress.RoomCompositeEgressRequest(
                audio_only=True,
                file_outputs=[egress.EncodedFileOutput(filepath="auto/{room_name}.ogg")],
            )
        ),
    )
    async with client(recorder) as lk:
        await direct_rule(lk, "auto", config)
        async with call(recorder, tmp_path, "auto", codecs="G722") as phone:
            (started,) = await eventually(lambda: listed(lk, room_name="auto"), "an auto egress")
            assert started.room_composite.audio_only
            await recorded_for(lk, started.egress_id, SIGNAL_S + 1)
        # both phones hung up: the room ends a second later, and its recording with it
        info = await completed(lk, started.egress_id)
        assert info.file_results[0].filename == "auto/auto.ogg"
        assert check_file(recorder, info, phone) >= 0.8


def link_out(link: Path, target: Path) -> None:
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(target)


async def test_bad_requests_get_the_twirp_codes_livekit_users_see(
    recorder: ServerProcess,
) -> None:
    ogg = egress.EncodedFileOutput(filepath="x.ogg")
    async with client(recorder) as lk:
        await lk.room.create_room(room.CreateRoomRequest(name="bad"))

        async def code(request: egress.RoomCompositeEgressRequest) -> str:
            with pytest.raises(api.TwirpError) as raised:
                await lk.egress.start_room_composite_egress(request)
            return str(raised.value.code)

        def composite(**fields: object) -> egress.RoomCompositeEgressRequest:
            fields = {"room_name": "bad", "audio_only": True, "file_outputs": [ogg], **fields}
            return egress.RoomCompositeEgressRequest(**fields)  # type: ignore[arg-type]

        escaping = [egress.EncodedFileOutput(filepath="../../etc/x.ogg")]
        assert await code(composite(file_outputs=escaping)) == "invalid_argument"
        absolute = [egress.EncodedFileOutput(filepath="/tmp/x.ogg")]
        assert await code(composite(file_outputs=absolute)) == "invalid_argument"
        # a directory inside that is a symlink out of it
        link_out(recorder.recordings / "out", recorder.log.parent)  # type: ignore[attr-defined]
        linked = [egress.EncodedFileOutput(filepath="out/x.ogg")]
        assert await code(composite(file_outputs=linked)) == "invalid_argument"
        mixing = composite(audio_mixing=9)
        assert await code(mixing) == "invalid_argument"
        assert await code(composite(room_name="nowhere")) == "not_found"
        assert await code(composite(audio_only=False)) == "unimplemented"
        with pytest.raises(api.TwirpError) as raised:
            await lk.egress.stop_egress(egress.StopEgressRequest(egress_id="EG_unknown"))
        assert raised.value.code == "not_found"
        with pytest.raises(api.TwirpError) as raised:
            await lk.egress.update_layout(egress.UpdateLayoutRequest(egress_id="EG_x"))
        assert raised.value.code == "not_found"  # (LiveKit looks the egress up first)
        with pytest.raises(api.TwirpError) as raised:
            await lk.egress.start_track_egress(
                egress.TrackEgressRequest(
                    room_name="bad", track_id="TR_none", file=egress.DirectFileOutput()
                )
            )
        assert raised.value.code == "not_found"
        assert await listed(lk) == []
    # Without the roomRecord grant (the official client always sends it): refused.
    body = composite(room_name="bad").SerializeToString()
    for grants in (api.VideoGrants(room_admin=True, room="bad"), api.VideoGrants()):
        status, _, reply = await twirp(
            recorder.url,
            "livekit.Egress",
            "StartRoomCompositeEgress",
            body,
            auth=f"Bearer {token(grants)}",
        )
        assert (status, json.loads(reply)["code"]) == (403, "permission_denied")
    assert not (recorder.recordings / "x.ogg").exists()  # type: ignore[attr-defined]
    assert not (recorder.log.parent / "x.ogg").exists()


async def test_a_recording_is_closed_playable_when_the_server_stops(
    recorder: ServerProcess, hooks: Receiver
) -> None:
    """... and a room no one ever joined (a room that never starts) is flagged: ABORTED."""
    async with client(recorder) as lk:
        await lk.room.create_room(room.CreateRoomRequest(name="quiet"))
        started = await lk.egress.start_room_composite_egress(
            egress.RoomCompositeEgressRequest(
                room_name="quiet",
                audio_only=True,
                file_outputs=[egress.EncodedFileOutput(filepath="quiet.ogg")],
            )
        )
        await recorded_for(lk, started.egress_id, 0.5)
    assert await asyncio.to_thread(recorder.stop) == 0
    pcm, rate = decode(recorder.recordings / "quiet.ogg")  # type: ignore[attr-defined]
    assert len(pcm) / rate >= 0.5
    assert (await egress_events(hooks, 4))[-1] == ("egress_ended", Status.EGRESS_ABORTED)
    ended = [d.event.egress_info for d in hooks.deliveries if d.event.event == "egress_ended"]
    assert "no one was in the room" in ended[-1].error


def decode_any(path: Path) -> tuple[np.ndarray, int, str]:
    """Mono samples (floats), rate and codec of a recording in any of our formats."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
        scale = 32768.0 if pcm.dtype == np.int16 else 1.0
        return pcm.astype(np.float64) / scale, stream.rate, stream.codec_context.name


@pytest.mark.serial  # real time: the phone's audio heard in the file
async def test_a_participant_egress_records_the_phone_to_wav_until_it_leaves(
    recorder: ServerProcess, tmp_path: Path
) -> None:
    async with client(recorder) as lk:
        await direct_rule(lk, "who")
        async with call(recorder, tmp_path, "who", lead_s=0.5, top_hz=3400.0) as phone:
            reply = await lk.room.list_participants(room.ListParticipantsRequest(room="who"))
            (caller,) = [
                p for p in reply.participants if p.attributes["sip.phoneNumber"] == phone.user
            ]
            with pytest.raises(api.TwirpError) as raised:
                await lk.egress.start_participant_egress(
                    egress.ParticipantEgressRequest(
                        room_name="who",
                        identity="nobody",
                        file_outputs=[egress.EncodedFileOutput(filepath="x.wav")],
                    )
                )
            assert raised.value.code == "not_found"
            started = await lk.egress.start_participant_egress(
                egress.ParticipantEgressRequest(
                    room_name="who",
                    identity=caller.identity,
                    file_outputs=[egress.EncodedFileOutput(filepath="p/{publisher_identity}.wav")],
                )
            )
            assert started.participant.identity == caller.identity
            await recorded_for(lk, started.egress_id, SIGNAL_S + 1)
        info = await completed(lk, started.egress_id)  # the phone left: its recording ended
        (result,) = info.file_results
        assert result.filename == f"p/{caller.identity}.wav"
        pcm, rate, codec = decode_any(Path(result.location))
        assert (codec, rate) == ("pcm_s16le", 48000)
        recorded_s = (result.ended_at - result.started_at) / 1e9
        assert abs(len(pcm) / rate - recorded_s) < 0.1
        assert phone.reference is not None
        assert windows_heard(phone.reference, pcm, phone.rate, recorded_rate=rate) >= 0.8
        with pytest.raises(api.TwirpError) as raised:
            await lk.egress.update_stream(egress.UpdateStreamRequest(egress_id=info.egress_id))
        assert raised.value.code == "unimplemented"


@contextmanager
def tmpfs(path: Path, *options: str) -> Iterator[Path]:
    """A small filesystem of our own at `path` (a full disk, a read-only one), unmounted after."""
    path.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


async def failed(lk: api.LiveKitAPI, egress_id: str) -> egress.EgressInfo:
    async def done() -> egress.EgressInfo | None:
        (info,) = await listed(lk, egress_id=egress_id)
        assert info.status != Status.EGRESS_COMPLETE, info
        return info if info.status == Status.EGRESS_FAILED else None

    return await eventually(done, f"egress {egress_id} failed", timeout=8)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
async def test_a_full_or_read_only_disk_fails_the_recording_with_the_reason(
    recorder: ServerProcess, hooks: Receiver
) -> None:
    rec: Path = recorder.recordings  # type: ignore[attr-defined]
    with tmpfs(rec / "full", "size=64k"), tmpfs(rec / "ro", "ro", "size=64k"):
        async with client(recorder) as lk:
            await lk.room.create_room(room.CreateRoomRequest(name="disk"))

            async def start(filepath: str) -> egress.EgressInfo:
                return await lk.egress.start_room_composite_egress(
                    egress.RoomCompositeEgressRequest(
                        room_name="disk",
                        audio_only=True,
                        file_outputs=[egress.EncodedFileOutput(filepath=filepath)],
                    )
                )

            # 96 kB of WAV a second: the 64 kB disk is full within a second
            full = await failed(lk, (await start("full/x.wav")).egress_id)
            assert "No space left on device" in full.error, full.error
            assert full.file_results[0].size <= 64 * 1024
            read_only = await failed(lk, (await start("ro/x.ogg")).egress_id)
            assert "Read-only file system" in read_only.error, read_only.error
            # two recordings of one file: the second is refused while the first writes
            first = await start("twice.ogg")
            with pytest.raises(api.TwirpError) as raised:
                await start("twice.ogg")
            assert raised.value.code == "already_exists"
            await lk.egress.stop_egress(egress.StopEgressRequest(egress_id=first.egress_id))
            assert (await completed_or_aborted(lk, first.egress_id)).error
    ended = {
        d.event.egress_info.egress_id: d.event.egress_info
        for d in hooks.deliveries
        if d.event is not None and d.event.event == "egress_ended"
    }
    assert ended[full.egress_id].status == Status.EGRESS_FAILED
    assert ended[full.egress_id].error == full.error


async def completed_or_aborted(lk: api.LiveKitAPI, egress_id: str) -> egress.EgressInfo:
    async def done() -> egress.EgressInfo | None:
        (info,) = await listed(lk, egress_id=egress_id)
        finished = (Status.EGRESS_COMPLETE, Status.EGRESS_ABORTED)
        return info if info.status in finished else None

    return await eventually(done, f"egress {egress_id} ended", timeout=8)


async def test_a_recording_cut_short_by_a_crash_is_failed_after_the_restart(
    recorder: ServerProcess,
) -> None:
    async with client(recorder) as lk:
        await lk.room.create_room(room.CreateRoomRequest(name="crash"))
        started = await lk.egress.start_room_composite_egress(
            egress.RoomCompositeEgressRequest(
                room_name="crash",
                audio_only=True,
                file_outputs=[egress.EncodedFileOutput(filepath="crash.ogg")],
            )
        )
        await recorded_for(lk, started.egress_id, 0.5)
    assert recorder.proc is not None
    recorder.proc.kill()  # SIGKILL: no shutdown, the file is left as it was
    await asyncio.to_thread(recorder.proc.wait)
    recorder.proc = None
    await asyncio.to_thread(recorder.start)
    async with client(recorder) as lk:
        (info,) = await listed(lk, egress_id=started.egress_id)
        assert info.status == Status.EGRESS_FAILED
        assert "stopped while recording" in info.error
        assert await listed(lk, active=True) == []

    # ... and its file was still closed, playable, by the encoder process the server left
    def playable() -> bool:
        try:
            pcm, _ = decode(Path(info.file_results[0].location))
        except (av.error.FFmpegError, ValueError):
            return False
        return len(pcm) > 0

    assert await eventually(playable, "the cut recording's file playable", timeout=5)
