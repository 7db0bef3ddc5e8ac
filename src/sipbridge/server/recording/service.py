"""`livekit.Egress` on the Twirp API: audio recordings of a room's mix, one participant or one
track, to files.

LiveKit records through a separate Egress service (a headless Chrome and GStreamer); we record
the audio we already have. An egress is a listener in the room's audio (`RecorderLeg`) that
hears everyone (room composite, `audio_only`) or one track (track egress); its frames go to a
`FileWriter` thread. Statuses as LiveKit reports them: STARTING when asked, ACTIVE once the file
is open, ENDING on StopEgress or when the room ends (or the track goes), COMPLETE once the file
is closed (FAILED with the reason when it could not be written; ABORTED for a room recording
of a room no one was ever in), each with its webhook (`egress_started`, `egress_updated`,
`egress_ended`) and each written to the store (`records.py`: ListEgress survives a restart, a
recording cut short by a crash is marked FAILED, each call is linked to its recordings). A room
whose `RoomConfiguration.egress.room` asks for it (a dispatch rule's `room_config`, CreateRoom's
`egress`) is recorded from its start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from livekit.protocol import egress as proto
from livekit.protocol import models
from livekit.protocol.room import RoomEgress

from sipbridge import ids
from sipbridge.errors import ApiError, not_found
from sipbridge.media.players import FRAME_MS
from sipbridge.rooms import events as ev
from sipbridge.rooms.egress import (
    ACTIVE_STATUSES,
    Mixing,
    RecordingPlan,
    confine,
    expand_filepath,
    plan_participant,
    plan_room_composite,
    plan_track,
)
from sipbridge.rooms.model import Kind, Participant
from sipbridge.server.api.auth import Claims
from sipbridge.server.api.twirp import TwirpServer, not_implemented_yet
from sipbridge.server.api.webhooks import WebhookNotifier
from sipbridge.server.media.leg_driver import CallMedia
from sipbridge.server.media.service import MediaService
from sipbridge.server.recording.records import EgressRecords
from sipbridge.server.recording.writer import (
    RATE,
    EncoderProcess,
    FileWriter,
    RecorderLeg,
    StereoRecorderLeg,
    WriterResult,
)
from sipbridge.server.state.rooms_runtime import RoomsRuntime
from sipbridge.telephony.inbound import ATTR_CALL_ID

log = logging.getLogger(__name__)

SERVICE = "livekit.Egress"
Status = proto.EgressStatus
FINISHED_KEPT = 1000  # ended egresses ListEgress still shows (the oldest are forgotten)
SHUTDOWN_WAIT_S = 5.0


def require_room_record(_: Any, claims: Claims) -> None:
    """LiveKit authorises every Egress method with the `roomRecord` grant alone."""
    if not claims.video_grant("roomRecord"):
        raise ApiError("permission_denied", "requires the roomRecord grant")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


@dataclass(eq=False, kw_only=True)
class Recording:
    """A recording made here, or one loaded from the store (no plan, writer or leg)."""

    info: proto.EgressInfo
    plan: RecordingPlan | None = None
    path: str = ""
    writer: FileWriter | None = None
    leg: RecorderLeg | None = None
    attended: bool = False  # someone was in the room while it recorded
    began: float = 0.0  # when it joined the room's audio: the time of its first frame


def _unsupported(_: Any, __: Claims) -> Message:
    raise ApiError("unimplemented", "sipbridge records audio to files: no streams to update")


def _no_video(req: Any, _: Claims) -> Message:
    what = type(req).__name__[: -len("Request")]
    raise ApiError("unimplemented", f"{what} (video) is not supported: sipbridge records audio")


def _call_id(participant: Participant) -> str:
    return participant.attributes.get(ATTR_CALL_ID, "") if participant.kind == Kind.SIP else ""


def _dual_channel(mixing: int) -> Callable[[Any], int]:
    """Which channel each source goes to in a stereo room recording (`rooms/egress.py`)."""
    if mixing == Mixing.DUAL_CHANNEL_AGENT:
        return lambda source: 1 if isinstance(source, CallMedia) else 0
    order: dict[Any, int] = {}
    return lambda source: order.setdefault(source, len(order) % 2)


class EgressService:
    def __init__(
        self,
        runtime: RoomsRuntime,
        media: MediaService,
        webhooks: WebhookNotifier,
        recordings_dir: str,
        *,
        records: EgressRecords | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runtime = runtime
        self.media = media
        self.webhooks = webhooks
        self.root = os.path.realpath(recordings_dir)
        self.clock = clock
        self.egresses: dict[str, Recording] = {}  # live ones and the last FINISHED_KEPT ended
        self.finished: list[str] = []
        self.stats: dict[str, int] = {}
        self.records = records
        self.encoder = EncoderProcess()
        runtime.listen(
            self.on_room_event,
            (
                ev.RoomStarted,
                ev.ParticipantJoined,
                ev.RoomFinished,
                ev.TrackUnpublished,
                ev.ParticipantLeft,
            ),
        )

    async def open(self, node: str) -> None:
        """The recordings stored before this start; those left in progress marked FAILED. The
        encoder process starts now, so that the first recording starts at once."""
        self.encoder.ensure()
        if self.records is None:
            return
        infos = await self.records.recover(node, _ns(self.clock()))
        for info in infos[:-FINISHED_KEPT]:
            self.records.forget(info.egress_id)
        for info in infos[-FINISHED_KEPT:]:
            if info.egress_id not in self.egresses:
                self.egresses[info.egress_id] = Recording(info=info)
                self.finished.append(info.egress_id)

    def register(self, twirp: TwirpServer) -> None:
        auth = require_room_record
        methods: list[tuple[str, type[Any], Any]] = [
            ("StartRoomCompositeEgress", proto.RoomCompositeEgressRequest, self.start_room),
            ("StartTrackEgress", proto.TrackEgressRequest, self.start_track),
            ("ListEgress", proto.ListEgressRequest, self.list_egress),
            ("StopEgress", proto.StopEgressRequest, self.stop_egress),
            ("StartParticipantEgress", proto.ParticipantEgressRequest, self.start_participant),
            ("StartEgress", proto.StartEgressRequest, not_implemented_yet),
            ("StartWebEgress", proto.WebEgressRequest, _no_video),
            ("StartTrackCompositeEgress", proto.TrackCompositeEgressRequest, _no_video),
            ("UpdateLayout", proto.UpdateLayoutRequest, self._known(_no_video)),
            ("UpdateStream", proto.UpdateStreamRequest, self._known(_unsupported)),
        ]
        for name, request_type, handler in methods:
            twirp.register(SERVICE, name, request_type, handler, auth)

    def _known(self, handler: Callable[[Any, Claims], Message]) -> Any:
        """`handler` for an egress held here; `not_found` for any other (as LiveKit, which
        looks the egress up first)."""

        async def known(req: Any, claims: Claims) -> Message:
            if req.egress_id not in self.egresses:
                raise not_found(f"egress {req.egress_id!r} not found")
            return handler(req, claims)

        return known

    # -- the API ----------------------------------------------------------------------------

    async def start_room(
        self, req: proto.RoomCompositeEgressRequest, _: Claims
    ) -> proto.EgressInfo:
        return self.start_room_composite(req)

    def start_room_composite(self, req: proto.RoomCompositeEgressRequest) -> proto.EgressInfo:
        plan = plan_room_composite(req)
        info = proto.EgressInfo(source_type=proto.EgressSourceType.EGRESS_SOURCE_TYPE_WEB)
        info.room_composite.CopyFrom(req)
        return self._start(plan, info, {})

    async def start_track(self, req: proto.TrackEgressRequest, _: Claims) -> proto.EgressInfo:
        plan = plan_track(req)
        room = self.runtime.registry.find(plan.room_name)
        owners = (
            [p for p in room.participants.values() if plan.track_id in p.tracks] if room else []
        )
        source = self.media.track_legs.get(plan.track_id)
        if not owners or source is None:
            raise not_found(f"track {plan.track_id!r} not found in room {plan.room_name!r}")
        track = owners[0].tracks[plan.track_id]
        info = proto.EgressInfo(source_type=proto.EgressSourceType.EGRESS_SOURCE_TYPE_SDK)
        info.track.CopyFrom(req)
        values = {
            "track_id": plan.track_id,
            "publisher_identity": owners[0].identity,
            "track_type": "audio",
            "track_source": models.TrackSource.Name(track.source).lower(),
        }
        return self._start(plan, info, values, hears=source)

    async def start_participant(
        self, req: proto.ParticipantEgressRequest, _: Claims
    ) -> proto.EgressInfo:
        plan = plan_participant(req)
        room = self.runtime.registry.find(plan.room_name)
        participant = room.participants.get(plan.identity) if room else None
        if participant is None:
            raise not_found(f"participant {plan.identity!r} not found in room {plan.room_name!r}")
        audio = [
            self.media.track_legs[sid]
            for sid, track in participant.tracks.items()
            if track.type == models.TrackType.AUDIO and sid in self.media.track_legs
        ]
        if not audio:
            raise ApiError(
                "failed_precondition", f"participant {plan.identity!r} publishes no audio yet"
            )
        info = proto.EgressInfo(source_type=proto.EgressSourceType.EGRESS_SOURCE_TYPE_SDK)
        info.participant.CopyFrom(req)
        values = {"publisher_identity": plan.identity}
        return self._start(plan, info, values, hears=audio[0])

    async def list_egress(
        self, req: proto.ListEgressRequest, _: Claims
    ) -> proto.ListEgressResponse:
        found = [
            r.info
            for r in self.egresses.values()
            if (not req.room_name or r.info.room_name == req.room_name)
            and (not req.egress_id or r.info.egress_id == req.egress_id)
            and (not req.active or r.info.status in ACTIVE_STATUSES)
        ]
        return proto.ListEgressResponse(items=[self._snapshot(r) for r in found])

    async def stop_egress(self, req: proto.StopEgressRequest, _: Claims) -> proto.EgressInfo:
        recording = self.egresses.get(req.egress_id)
        if recording is None:
            raise not_found(f"egress {req.egress_id!r} not found")
        if recording.info.status not in ACTIVE_STATUSES or recording.writer is None:
            status = Status.Name(recording.info.status)
            raise ApiError("failed_precondition", f"egress with status {status} cannot be stopped")
        self._stop(recording)
        return self._snapshot(recording.info)

    # -- the recordings ---------------------------------------------------------------------

    def _start(
        self,
        plan: RecordingPlan,
        info: proto.EgressInfo,
        values: dict[str, str],
        hears: Any = None,
    ) -> proto.EgressInfo:
        room = self.runtime.registry.find(plan.room_name)
        if room is None:
            raise not_found(f"room {plan.room_name!r} not found")
        now = self.clock()
        filename = expand_filepath(
            plan.filepath, {"room_name": room.name, "room_id": room.sid, **values}, plan.format, now
        )
        path = confine(self.root, filename)
        # The directories on the way may be symlinks out of the recordings directory.
        real = os.path.realpath(path)
        if not real.startswith(self.root.rstrip("/") + "/"):
            raise ApiError("invalid_argument", f"filepath {filename!r} leaves the recordings dir")
        if os.path.lexists(real) or any(
            r.path == real and r.info.status in ACTIVE_STATUSES for r in self.egresses.values()
        ):
            raise ApiError("already_exists", f"{filename!r} exists: recordings are not overwritten")
        info.egress_id = ids.new_id(ids.EGRESS)
        info.room_id, info.room_name = room.sid, room.name
        info.status = Status.EGRESS_STARTING
        info.updated_at = _ns(now)
        result = info.file_results.add(filename=filename, location=real)
        info.file.CopyFrom(result)  # the deprecated single result, for older clients
        egress_id = info.egress_id
        writer = FileWriter(
            real,
            plan.format,
            on_opened=lambda: self._opened(egress_id),
            channels=plan.channels,
            encoder=self.encoder,
        )
        leg = (
            StereoRecorderLeg(writer, _dual_channel(plan.mixing))
            if plan.channels == 2
            else RecorderLeg(writer, hears=hears)
        )
        recording = Recording(info=info, plan=plan, path=real, writer=writer, leg=leg)
        recording.attended = bool(room.participants)
        recording.began = now
        self.egresses[info.egress_id] = recording
        self.media.attach(leg, room.name)
        writer.start()
        writer.done.add_done_callback(lambda f: self._ended(recording, f.result()))
        self._count("started")
        self._notify("egress_started", recording)
        for participant in room.participants.values():
            if not (plan.identity or plan.track_id) or hears in self._legs_of(participant):
                self._link(participant, egress_id)
        return self._snapshot(info)

    def _legs_of(self, participant: Participant) -> list[Any]:
        return [self.media.track_legs.get(sid) for sid in participant.tracks]

    def _link(self, participant: Participant, egress_id: str) -> None:
        call_id = _call_id(participant)
        if call_id and self.records is not None:
            self.records.link_call(call_id, egress_id)

    def _opened(self, egress_id: str) -> None:
        recording = self.egresses.get(egress_id)
        if recording is None or recording.info.status != Status.EGRESS_STARTING:
            return
        info = recording.info
        info.status = Status.EGRESS_ACTIVE
        info.updated_at = _ns(self.clock())
        # The file's first frame is the room's next tick after the request (`began`): the
        # file's duration is the time from `started_at` to its `ended_at`, to a frame.
        info.started_at = _ns(recording.began)
        info.file_results[0].started_at = info.file.started_at = info.started_at
        self._notify("egress_updated", recording)

    def _stop(self, recording: Recording) -> None:
        info = recording.info
        if info.status not in ACTIVE_STATUSES or recording.writer is None:
            return
        info.status = Status.EGRESS_ENDING
        info.updated_at = _ns(self.clock())
        info.file_results[0].ended_at = info.file.ended_at = info.updated_at  # the last frame
        if not info.started_at:  # stopped before its file was open: it recorded all the same
            info.started_at = _ns(recording.began)
            info.file_results[0].started_at = info.file.started_at = info.started_at
        if recording.leg is not None:
            self.media.detach(recording.leg)
        recording.writer.finish()
        self._notify("egress_updated", recording)

    def _ended(self, recording: Recording, result: WriterResult) -> None:
        info = recording.info
        if recording.leg is not None:  # the writer may have failed on its own
            self.media.detach(recording.leg)
            self.stats["frames_filled"] = self.stats.get("frames_filled", 0) + recording.leg.filled
        now = _ns(self.clock())
        info.ended_at = info.updated_at = now
        for file in (info.file_results[0], info.file):
            file.ended_at = file.ended_at or now  # when the writer failed on its own: now
            file.size = result.size
            file.duration = result.samples * 1_000_000_000 // RATE
        if result.error:
            info.status = Status.EGRESS_FAILED
            info.error = result.error
            self._count("failed")
        elif not recording.attended and info.HasField("room_composite"):
            info.status = Status.EGRESS_ABORTED
            info.error = "no one was in the room while it recorded: the file holds silence"
            self._count("aborted")
        else:
            info.status = Status.EGRESS_COMPLETE
            self._count("complete")
        self._notify("egress_ended", recording)
        self.finished.append(info.egress_id)
        while len(self.finished) > FINISHED_KEPT:
            forgotten = self.finished.pop(0)
            self.egresses.pop(forgotten, None)
            if self.records is not None:
                self.records.forget(forgotten)

    def _snapshot(self, info: proto.EgressInfo) -> proto.EgressInfo:
        """A copy to send, with the length recorded so far while the file is being written."""
        copy = proto.EgressInfo()
        copy.CopyFrom(info)
        recording = self.egresses.get(info.egress_id)
        if (
            recording is not None
            and recording.writer is not None
            and info.status in (*ACTIVE_STATUSES, Status.EGRESS_ENDING)
        ):
            duration = recording.writer.frames * FRAME_MS * 1_000_000
            copy.file_results[0].duration = copy.file.duration = duration
        return copy

    def _notify(self, event: str, recording: Recording) -> None:
        snapshot = self._snapshot(recording.info)
        if self.records is not None:
            self.records.save(snapshot)
        self.webhooks.notify(event, egress_info=snapshot)

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    # -- rooms ------------------------------------------------------------------------------

    def on_room_event(self, event: ev.RoomEvent) -> None:
        if not self.egresses and type(event) is not ev.RoomStarted:
            return  # nothing recorded: only a new room may start a recording (8 events a call)
        match event:
            case ev.RoomStarted(room=room):
                live = self.runtime.registry.find(room.name)
                wanted: RoomEgress | None = live.egress if live is not None else None
                if wanted is not None and wanted.HasField("room"):
                    self._auto_record(room.name, wanted)
            case ev.ParticipantJoined(room=room, participant=participant):
                for recording in self._live(lambda r: r.info.room_name == room.name):
                    recording.attended = True
                    if recording.info.HasField("room_composite"):
                        call_id = participant.attributes.get(ATTR_CALL_ID, "")
                        if call_id and participant.kind == Kind.SIP and self.records is not None:
                            self.records.link_call(call_id, recording.info.egress_id)
            case ev.RoomFinished(room=room):
                for recording in self._live(lambda r: r.info.room_name == room.name):
                    self._stop(recording)
            case ev.TrackUnpublished(room=room, track=track):
                leg = self.media.track_legs.get(track.sid)
                for recording in self._live(
                    lambda r: (
                        r.info.room_name == room.name
                        and r.plan is not None
                        and r.leg is not None
                        and (
                            r.plan.track_id == track.sid or (leg is not None and r.leg.hears is leg)
                        )
                    )
                ):
                    self._stop(recording)
            case ev.ParticipantLeft(room=room, participant=participant):
                sids = {t.sid for t in participant.tracks}
                for recording in self._live(
                    lambda r: (
                        r.info.room_name == room.name
                        and r.plan is not None
                        and (r.plan.track_id in sids or r.plan.identity == participant.identity)
                    )
                ):
                    self._stop(recording)
            case _:
                pass

    def _auto_record(self, room_name: str, wanted: RoomEgress) -> None:
        req = proto.RoomCompositeEgressRequest()
        req.CopyFrom(wanted.room)
        req.room_name = room_name
        try:
            info = self.start_room_composite(req)
        except ApiError as err:
            self._count("auto_refused")
            log.warning("room %s: its auto recording was refused: %s", room_name, err.message)
            return
        log.info("room %s: recording %s to %s", room_name, info.egress_id, info.file.location)

    def _live(self, wanted: Callable[[Recording], bool]) -> list[Recording]:
        return [r for r in self.egresses.values() if r.info.status in ACTIVE_STATUSES and wanted(r)]

    async def close(self) -> None:
        """Stop every recording and wait (bounded) until each file is closed and playable."""
        for recording in self._live(lambda _: True):
            self._stop(recording)
        writing = [
            r.writer.done
            for r in self.egresses.values()
            if r.writer is not None and not r.writer.done.done()
        ]
        if writing:
            _, pending = await asyncio.wait(writing, timeout=SHUTDOWN_WAIT_S)
            if pending:
                log.error("%d recordings were still being written at shutdown", len(pending))
        await self.encoder.close()
        if self.records is not None:
            await self.records.flush()
