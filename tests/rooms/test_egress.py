"""Recording requests as plans (`rooms/egress.py`): formats, outputs refused, filepaths confined."""

from __future__ import annotations

import pytest
from livekit.protocol import egress as proto

from sipbridge.errors import ApiError
from sipbridge.rooms.egress import (
    MP3,
    MP4,
    OGG,
    WAV,
    confine,
    expand_filepath,
    format_for,
    plan_participant,
    plan_room_composite,
    plan_track,
)

NOW = 1_767_000_000.0  # 2025-12-29T09:20:00Z


def room_request(**fields: object) -> proto.RoomCompositeEgressRequest:
    req = proto.RoomCompositeEgressRequest(room_name="call-1", audio_only=True)
    if "file_outputs" not in fields and "file" not in fields:
        req.file_outputs.add(filepath="calls/{room_name}.ogg")
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(req, name).extend(value)
        elif name == "file":
            req.file.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(req, name, value)
    return req


def code(call: object) -> str:
    with pytest.raises(ApiError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code


def test_an_audio_only_room_composite_to_a_file_is_planned() -> None:
    plan = plan_room_composite(room_request())
    assert (plan.room_name, plan.filepath, plan.format, plan.track_id) == (
        "call-1",
        "calls/{room_name}.ogg",
        OGG,
        "",
    )
    legacy = room_request(file=proto.EncodedFileOutput(file_type=proto.MP4, filepath="a"))
    assert plan_room_composite(legacy).format is MP4


def test_what_we_do_not_record_is_refused_plainly() -> None:
    assert code(lambda: plan_room_composite(room_request(audio_only=False))) == "unimplemented"
    mixing = room_request(audio_mixing=7)
    assert code(lambda: plan_room_composite(mixing)) == "invalid_argument"
    for name in ("segment_outputs", "image_outputs"):
        output = proto.SegmentedFileOutput() if name == "segment_outputs" else proto.ImageOutput()
        refused = room_request(**{name: [output]})
        assert code(lambda r=refused: plan_room_composite(r)) == "unimplemented"
    streamed = room_request(stream_outputs=[proto.StreamOutput(urls=["rtmp://x/y"])])
    assert code(lambda: plan_room_composite(streamed)) == "unimplemented"
    uploaded = room_request(
        file_outputs=[proto.EncodedFileOutput(filepath="a.ogg", s3=proto.S3Upload(bucket="b"))]
    )
    assert code(lambda: plan_room_composite(uploaded)) == "unimplemented"
    assert code(lambda: plan_room_composite(room_request(room_name=""))) == "invalid_argument"
    nothing = proto.RoomCompositeEgressRequest(room_name="r", audio_only=True)
    assert code(lambda: plan_room_composite(nothing)) == "invalid_argument"
    two = room_request(file_outputs=[proto.EncodedFileOutput(), proto.EncodedFileOutput()])
    assert code(lambda: plan_room_composite(two)) == "invalid_argument"


def test_dual_channel_mixing_asks_for_a_stereo_file() -> None:
    assert plan_room_composite(room_request()).channels == 1
    for mixing in (proto.AudioMixing.DUAL_CHANNEL_AGENT, proto.AudioMixing.DUAL_CHANNEL_ALTERNATE):
        plan = plan_room_composite(room_request(audio_mixing=mixing))
        assert (plan.channels, plan.mixing) == (2, mixing)


def test_a_participant_egress_records_one_participant_to_one_file() -> None:
    req = proto.ParticipantEgressRequest(room_name="r", identity="sip_1")
    req.file_outputs.add(filepath="p/{publisher_identity}.wav")
    plan = plan_participant(req)
    assert (plan.identity, plan.format, plan.channels) == ("sip_1", WAV, 1)
    nobody = proto.ParticipantEgressRequest(room_name="r")
    nobody.file_outputs.add(filepath="x.ogg")
    assert code(lambda: plan_participant(nobody)) == "invalid_argument"
    assert code(
        lambda: plan_participant(proto.ParticipantEgressRequest(room_name="r", identity="a"))
    )
    screen = proto.ParticipantEgressRequest(room_name="r", identity="a", screen_share=True)
    screen.file_outputs.add(filepath="x.ogg")
    assert code(lambda: plan_participant(screen)) == "unimplemented"
    streamed = proto.ParticipantEgressRequest(room_name="r", identity="a")
    streamed.stream_outputs.add(urls=["rtmp://x/y"])
    assert code(lambda: plan_participant(streamed)) == "unimplemented"


def test_a_track_egress_needs_a_track_and_a_file() -> None:
    req = proto.TrackEgressRequest(room_name="r", track_id="TR_1")
    req.file.filepath = "t/{track_id}"
    plan = plan_track(req)
    assert (plan.track_id, plan.format) == ("TR_1", OGG)
    assert code(lambda: plan_track(proto.TrackEgressRequest(room_name="r"))) == "invalid_argument"
    ws = proto.TrackEgressRequest(room_name="r", track_id="TR_1", websocket_url="ws://x")
    assert code(lambda: plan_track(ws)) == "unimplemented"
    bare = proto.TrackEgressRequest(room_name="r", track_id="TR_1")
    assert code(lambda: plan_track(bare)) == "invalid_argument"


def test_the_file_type_follows_the_request_then_the_extension() -> None:
    assert format_for(proto.DEFAULT_FILETYPE, "x.m4a") is MP4
    assert format_for(proto.DEFAULT_FILETYPE, "x.MP3") is MP3
    assert format_for(proto.DEFAULT_FILETYPE, "x") is OGG
    assert format_for(proto.OGG, "x.mp3") is OGG
    assert format_for(proto.DEFAULT_FILETYPE, "calls/x.WAV") is WAV


def test_filepath_templates_expand_as_livekit_documents() -> None:
    values = {"room_name": "call-1", "room_id": "RM_x"}
    assert expand_filepath("{room_name}/{room_id}-{time}", values, OGG, NOW) == (
        "call-1/RM_x-2025-12-29T092000.ogg"
    )
    assert expand_filepath("", values, MP4, NOW) == "call-1-2025-12-29T092000.mp4"
    assert expand_filepath("d/", values, OGG, NOW) == "d/call-1-2025-12-29T092000.ogg"
    assert expand_filepath("a-{utc}-{nope}.oga", values, OGG, NOW) == f"a-{int(NOW)}-{{nope}}.oga"
    track = {**values, "track_id": "TR_1", "publisher_identity": "phone"}
    assert expand_filepath("", track, OGG, NOW) == "call-1-phone-TR_1-2025-12-29T092000.ogg"


def test_filepaths_stay_inside_the_recordings_directory() -> None:
    assert confine("/rec", "a/b.ogg") == "/rec/a/b.ogg"
    assert confine("/rec/", "./a/../b.ogg") == "/rec/b.ogg"
    assert confine("/rec", "/rec/x.ogg") == "/rec/x.ogg"
    for escaping in ("../x.ogg", "/etc/x.ogg", "a/../../x.ogg", "/recx/y.ogg", ".", "a\x00.ogg"):
        assert code(lambda p=escaping: confine("/rec", p)) == "invalid_argument", escaping
