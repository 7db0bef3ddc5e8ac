"""A client's requests about itself on its signalling WebSocket: its metadata, name and
attributes (`update_metadata`), and the tracks it publishes (`add_track`). Each answers on the
session and commits the room's change."""

from __future__ import annotations

from livekit.protocol import models, rtc

from sipbridge.errors import ApiError
from sipbridge.server.rtc.session import Session
from sipbridge.server.state.rooms_runtime import RoomsRuntime


def update_metadata(
    runtime: RoomsRuntime, session: Session, req: rtc.UpdateParticipantMetadata
) -> None:
    """`update_metadata`: the client's own name, metadata and attributes, if its grant allows."""
    participant = runtime.registry.participant(session.room, session.identity)
    reply = rtc.RequestResponse(request_id=req.request_id, update_metadata=req)
    if not participant.permission.can_update_metadata:
        reply.reason = rtc.RequestResponse.Reason.NOT_ALLOWED
        reply.message = "does not have permission to update own metadata"
    else:
        try:
            runtime.registry.update_participant(
                session.room,
                session.identity,
                name=req.name,
                metadata=req.metadata,
                attributes=req.attributes,
            )
            reply.reason = rtc.RequestResponse.Reason.OK
        except ApiError as err:
            reply.reason = rtc.RequestResponse.Reason.LIMIT_EXCEEDED
            reply.message = err.message
    session.send(rtc.SignalResponse(request_response=reply))
    runtime.commit()


def add_track(runtime: RoomsRuntime, session: Session, req: rtc.AddTrackRequest) -> None:
    """`add_track`: a track the client publishes, if its grant allows; its sid in reply."""
    participant = runtime.registry.participant(session.room, session.identity)
    if not participant.permission.can_publish:
        reply = rtc.RequestResponse(
            reason=rtc.RequestResponse.Reason.NOT_ALLOWED,
            message="does not have permission to publish",
            add_track=req,
        )
        session.send(rtc.SignalResponse(request_response=reply))
        return
    track = models.TrackInfo(
        type=req.type,
        name=req.name,
        muted=req.muted,
        source=req.source,
        stereo=req.stereo,
        disable_dtx=req.disable_dtx,
        width=req.width,
        height=req.height,
        stream=req.stream,
        mime_type="audio/opus" if req.type == models.TrackType.AUDIO else "",
    )
    runtime.registry.publish_track(session.room, session.identity, track)
    session.published[req.cid] = track.sid
    session.send(
        rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=req.cid, track=track))
    )
    runtime.commit()
