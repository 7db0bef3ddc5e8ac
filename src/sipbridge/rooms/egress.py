"""Recording requests (LiveKit's Egress API) as plans: what to record, in which format, where.

Pure: a `RoomCompositeEgressRequest`, `ParticipantEgressRequest` or `TrackEgressRequest`
becomes a `RecordingPlan` or an `ApiError` with the Twirp code to answer; a plan's filepath
template becomes a path confined to the recordings directory (string work only - the server
checks symlinks on disk). We record audio only, from the audio the server already mixes: video,
streams, segments, images and cloud uploads are answered `unimplemented`, plainly.

Stereo: a room composite's `audio_mixing` DUAL_CHANNEL_AGENT puts the phones (SIP participants)
on the right channel and everyone else (the agent, an operator's SDK client) on the left - for
a call, LiveKit's "agent left, the rest right"; DUAL_CHANNEL_ALTERNATE gives each source a
channel in the order it joined, left first.
"""

from __future__ import annotations

import datetime
import posixpath
import re
from dataclasses import dataclass
from typing import Final

from livekit.protocol import egress as proto

from sipbridge.errors import ApiError, invalid_argument

FileType = proto.EncodedFileType
Status = proto.EgressStatus


@dataclass(frozen=True, slots=True)
class FileFormat:
    """How PyAV writes one `EncodedFileType`: container, codec and the default extension."""

    file_type: int
    container: str
    codec: str
    extension: str
    extensions: tuple[str, ...]


OGG: Final = FileFormat(FileType.OGG, "ogg", "libopus", ".ogg", (".ogg", ".oga", ".opus"))
MP4: Final = FileFormat(FileType.MP4, "mp4", "aac", ".mp4", (".mp4", ".m4a"))
MP3: Final = FileFormat(FileType.MP3, "mp3", "libmp3lame", ".mp3", (".mp3",))
# LiveKit's EncodedFileType has no WAV: a `.wav` filepath with DEFAULT_FILETYPE asks for it.
WAV: Final = FileFormat(FileType.DEFAULT_FILETYPE, "wav", "pcm_s16le", ".wav", (".wav",))
FORMATS: Final = (OGG, MP4, MP3, WAV)
Mixing = proto.AudioMixing

# Statuses in which an egress still records (LiveKit's `ListEgress(active=true)`: below COMPLETE).
ACTIVE_STATUSES: Final = frozenset({Status.EGRESS_STARTING, Status.EGRESS_ACTIVE})
ROOM_TEMPLATE: Final = "{room_name}-{time}"
TRACK_TEMPLATE: Final = "{room_name}-{publisher_identity}-{track_id}-{time}"
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
MAX_FILEPATH = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingPlan:
    """One recording to make: the room's mix (`track_id` empty) or one track, to one file."""

    room_name: str
    track_id: str = ""
    identity: str = ""  # a participant egress: that participant's audio
    filepath: str  # a template (`{room_name}`, `{time}`, ...), maybe empty
    format: FileFormat
    mixing: int = Mixing.DEFAULT_MIXING  # DUAL_CHANNEL_*: a stereo file

    @property
    def channels(self) -> int:
        return 1 if self.mixing == Mixing.DEFAULT_MIXING else 2


def _unsupported(what: str) -> ApiError:
    return ApiError("unimplemented", f"{what} is not supported: sipbridge records audio to files")


def _cloud(output: proto.EncodedFileOutput | proto.DirectFileOutput) -> str | None:
    kind = output.WhichOneof("output")
    return None if kind is None else f"uploading to {kind}"


def format_for(file_type: int, filepath: str) -> FileFormat:
    """The format asked for; DEFAULT_FILETYPE follows the filepath's extension, else OGG."""
    if file_type == FileType.DEFAULT_FILETYPE:
        extension = posixpath.splitext(filepath)[1].lower()
        return next((f for f in FORMATS if extension in f.extensions), OGG)
    for candidate in (OGG, MP4, MP3):
        if candidate.file_type == file_type:
            return candidate
    raise invalid_argument(f"file_type: unknown value {file_type}")


def _one_file(
    req: proto.RoomCompositeEgressRequest | proto.ParticipantEgressRequest,
) -> proto.EncodedFileOutput:
    """The single local file output of a request with LiveKit's output lists, or the error."""
    if isinstance(req, proto.RoomCompositeEgressRequest) and req.WhichOneof("output") in (
        "stream",
        "segments",
    ):
        raise _unsupported(f"a {req.WhichOneof('output')} output")
    for name in ("stream_outputs", "segment_outputs", "image_outputs"):
        if len(getattr(req, name)):
            raise _unsupported(name)
    files = list(req.file_outputs)
    if isinstance(req, proto.RoomCompositeEgressRequest) and req.HasField("file"):
        files.insert(0, req.file)
    if not files:
        raise invalid_argument("no output: give a file output (file_outputs)")
    if len(files) > 1:
        raise invalid_argument("only one file output per egress")
    output = files[0]
    cloud = _cloud(output)
    if cloud is not None:
        raise _unsupported(cloud)
    return output


def plan_room_composite(req: proto.RoomCompositeEgressRequest) -> RecordingPlan:
    """What `StartRoomCompositeEgress` asks for, or the error to answer."""
    if not req.room_name:
        raise invalid_argument("room_name: required")
    if not req.audio_only:
        raise _unsupported("video (room composite without audio_only)")
    if req.audio_mixing not in Mixing.values():
        raise invalid_argument(f"audio_mixing: unknown value {req.audio_mixing}")
    output = _one_file(req)
    return RecordingPlan(
        room_name=req.room_name,
        filepath=output.filepath,
        format=format_for(output.file_type, output.filepath),
        mixing=req.audio_mixing,
    )


def plan_participant(req: proto.ParticipantEgressRequest) -> RecordingPlan:
    """What `StartParticipantEgress` asks for: one participant's audio (a phone's included)."""
    if not req.room_name:
        raise invalid_argument("room_name: required")
    if not req.identity:
        raise invalid_argument("identity: required")
    if req.screen_share:
        raise _unsupported("screen share (video)")
    output = _one_file(req)
    return RecordingPlan(
        room_name=req.room_name,
        identity=req.identity,
        filepath=output.filepath,
        format=format_for(output.file_type, output.filepath),
    )


def plan_track(req: proto.TrackEgressRequest) -> RecordingPlan:
    """What `StartTrackEgress` asks for, or the error to answer."""
    if not req.room_name:
        raise invalid_argument("room_name: required")
    if not req.track_id:
        raise invalid_argument("track_id: required")
    if req.WhichOneof("output") == "websocket_url":
        raise _unsupported("a websocket output")
    if not req.HasField("file"):
        raise invalid_argument("no output: give a file output")
    cloud = _cloud(req.file)
    if cloud is not None:
        raise _unsupported(cloud)
    return RecordingPlan(
        room_name=req.room_name,
        track_id=req.track_id,
        filepath=req.file.filepath,
        format=format_for(FileType.DEFAULT_FILETYPE, req.file.filepath),
    )


def expand_filepath(template: str, values: dict[str, str], fmt: FileFormat, now: float) -> str:
    """The filepath with LiveKit's placeholders replaced (`{room_name}`, `{room_id}`, `{time}`,
    `{utc}`, `{track_id}`, `{publisher_identity}`, ...; unknown ones are left as they are), the
    default name when it is empty or names a directory, and the format's extension when it has
    none of its own."""
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC)
    known = {"time": stamp.strftime("%Y-%m-%dT%H%M%S"), "utc": str(int(now)), **values}
    if not template or template.endswith("/"):
        template += TRACK_TEMPLATE if "track_id" in values else ROOM_TEMPLATE
    path = _PLACEHOLDER.sub(lambda m: known.get(m.group(1), m.group(0)), template)
    if posixpath.splitext(path)[1].lower() not in fmt.extensions:
        path += fmt.extension
    return path


def confine(root: str, filepath: str) -> str:
    """`filepath` (relative to `root`, or absolute inside it) as a normalised absolute path
    inside `root`; invalid_argument when it escapes. `root` must be absolute."""
    if "\x00" in filepath or len(filepath) > MAX_FILEPATH:
        raise invalid_argument("filepath: not a usable path")
    base = posixpath.normpath(root)
    path = posixpath.normpath(posixpath.join(base, filepath))
    if not path.startswith(base.rstrip("/") + "/"):
        raise invalid_argument(f"filepath {filepath!r} is outside the recordings directory")
    return path
