"""The media of each signalling session: its peer connection (rtc/peer.py) driven.

The client's offers are answered with the room's audio tracks on its free sections; what it
hears follows its subscriptions (auto-subscribe, its own `subscription` requests, the API's
UpdateSubscriptions) and the publishers' SubscriptionPermissions; what it publishes joins the
room's audio; its peer connection coming up makes it ACTIVE. Room audio sources are the media
service's (`MediaService.track_legs`), attached to and detached from a room's clock there.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping

from livekit.protocol import models, rtc

from sipbridge.errors import ApiError
from sipbridge.server.media.leg_driver import AudioLeg
from sipbridge.server.media.service import MediaService
from sipbridge.server.rtc.audio import Publication
from sipbridge.server.rtc.peer import RtcPeer
from sipbridge.server.rtc.session import Session, in_room, leave_message
from sipbridge.server.state.rooms_runtime import RoomsRuntime

log = logging.getLogger(__name__)

DisconnectReason = models.DisconnectReason


class SessionMedia:
    """The peer connections of the signalling sessions (`sessions`, by (room, identity)) and the
    room audio each one carries. `leave` takes a session's participant out of its room."""

    def __init__(
        self,
        runtime: RoomsRuntime,
        media: MediaService,
        sessions: Mapping[tuple[str, str], Session],
        *,
        leave: Callable[[Session, int], None],
        on_data: Callable[[Session, bytes, bool], None],
    ) -> None:
        self.runtime = runtime
        self.rooms = runtime.registry
        self.media = media
        self.sessions = sessions
        self._leave = leave
        self._on_data = on_data
        self.audio_ended: Counter[str] = Counter()  # audio counters of closed subscriptions

    def start(self, session: Session, offer: rtc.SessionDescription) -> None:
        """The client's first offer: its peer connection is made, and the offer answered."""
        session.peer = RtcPeer(identity=session.identity)
        session.peer.on_data = lambda data, lossy: self._on_data(session, data, lossy)
        session.peer.on_connected = lambda: self._connected(session)
        session.spawn(self.negotiate(session, offer))

    async def negotiate(self, session: Session, offer: rtc.SessionDescription) -> None:
        """Answer an offer of the client, its room audio tracks on its free sections."""
        peer = session.peer
        if peer is None:
            return
        async with peer.lock:
            if peer.closed:
                return
            wanted = self._wanted(session)
            try:
                sdp, mids, left = await peer.answer(
                    offer.sdp,
                    wanted,
                    lambda sid, publication: self._published(session, sid, publication),
                )
            except Exception as err:  # a bad offer must not take the server down
                log.info("signal %s: offer refused: %s", session.identity, err)
                self._leave(session, DisconnectReason.SIGNAL_CLOSE)
                session.send(leave_message(DisconnectReason.SIGNAL_CLOSE))
                return
            session.send(
                rtc.SignalResponse(
                    answer=rtc.SessionDescription(
                        type="answer", sdp=sdp, id=offer.id, mid_to_track_id=mids
                    )
                )
            )
            self.apply_subscriptions(session, ask=False)
            if left:
                session.send(
                    rtc.SignalResponse(
                        media_sections_requirement=rtc.MediaSectionsRequirement(
                            num_audios=len(left)
                        )
                    )
                )

    def _wanted(self, session: Session) -> dict[str, tuple[AudioLeg, str]]:
        """The audio tracks of the others in the room, with a source to hear, that the client
        subscribes to: every one when it auto-subscribes, else those it asked for (its own
        `subscription` requests and UpdateSubscriptions through the API win either way);
        none without the canSubscribe grant."""
        room = self.rooms.find(session.room)
        if room is None:
            return {}
        me = room.participants.get(session.identity)
        if me is None or not me.permission.can_subscribe:
            return {}
        wanted: dict[str, tuple[AudioLeg, str]] = {}
        for participant in room.participants.values():
            if participant.identity == session.identity:
                continue
            for track in participant.tracks.values():
                source = self.media.track_legs.get(track.sid)
                if track.type != models.TrackType.AUDIO or source is None:
                    continue
                if not session.choices.get(track.sid, session.auto_subscribe):
                    continue
                if self._may_subscribe(session, me.sid, participant.identity, track.sid):
                    wanted[track.sid] = (source, participant.sid)
        return wanted

    def _may_subscribe(
        self, session: Session, subscriber_sid: str, publisher: str, track_sid: str
    ) -> bool:
        """The publisher's SubscriptionPermission lets this client have the track (a client
        refused is told once with SubscriptionPermissionUpdate, as LiveKit does)."""
        owner = self.sessions.get((session.room, publisher))
        permission = owner.permission if owner is not None else None
        if permission is None:
            return True
        allowed = any(
            (
                grant.participant_identity == session.identity
                or grant.participant_sid == subscriber_sid
            )
            and (grant.all_tracks or track_sid in grant.track_sids)
            for grant in permission.track_permissions
        )
        before = session.refused.get(track_sid)
        if before != (not allowed):
            session.refused[track_sid] = not allowed
            if not allowed or before:  # refused now, or allowed again after a refusal
                session.send(
                    rtc.SignalResponse(
                        subscription_permission_update=rtc.SubscriptionPermissionUpdate(
                            participant_sid=owner.participant_sid if owner else "",
                            track_sid=track_sid,
                            allowed=allowed,
                        )
                    )
                )
        return allowed

    def apply_subscriptions(self, session: Session, *, ask: bool = True) -> None:
        """Make the audio the client gets match `_wanted`: a subscription that has its section
        is (re)attached to the room or detached from it - the section stays, silent - and the
        room model follows; tracks still without a section are asked for (`ask`)."""
        peer, media = session.peer, self.media
        if peer is None:
            return
        wanted = self._wanted(session)
        on, off = [], []
        for track_sid, (_, subscription) in peer.sending.items():
            if track_sid in wanted and subscription.room is None:
                media.attach(subscription, session.room)
                on.append(track_sid)
            elif track_sid not in wanted and subscription.room is not None:
                media.detach(subscription)
                off.append(track_sid)
        for track_sids, subscribed in ((on, True), (off, False)):
            if track_sids:
                with contextlib.suppress(ApiError):
                    self.rooms.update_subscriptions(
                        session.room, session.identity, track_sids, subscribed
                    )
        if on or off:
            self.runtime.commit()
        missing = sum(1 for track_sid in wanted if track_sid not in peer.sending)
        if ask and missing:
            session.send(
                rtc.SignalResponse(
                    media_sections_requirement=rtc.MediaSectionsRequirement(num_audios=missing)
                )
            )

    def _published(self, session: Session, track_sid: str, publication: Publication) -> None:
        """A client's published audio arrived: it joins the room's audio, and the others in
        the room are asked for a section to receive it. Once its audio reaches someone, the
        client is told `TrackSubscribed` (as LiveKit does, once per track)."""
        publication.on_heard = lambda: self._track_subscribed(session, track_sid)
        self.media.track_legs[track_sid] = publication
        self.media.attach(publication, session.room)
        self.ask_for_sections(session.room, exclude=session.identity)

    def _track_subscribed(self, session: Session, track_sid: str) -> None:
        """The first listener hears a client's track: tell the client, whose SDK resolves
        `LocalTrackPublication.wait_for_subscription()` (what an agent waits for to speak)."""
        if self.sessions.get((session.room, session.identity)) is session:
            session.send(
                rtc.SignalResponse(track_subscribed=rtc.TrackSubscribed(track_sid=track_sid))
            )

    def ask_for_sections(self, room: str, exclude: str = "") -> None:
        """A new audio track in the room: the clients subscribing to it need sections."""
        for other in in_room(self.sessions.values(), room):
            if other.identity != exclude:
                self.apply_subscriptions(other)

    def _connected(self, session: Session) -> None:
        """Its peer connection is up: the participant is ACTIVE (SDKs wait for that)."""
        if self.sessions.get((session.room, session.identity)) is not session:
            return
        with contextlib.suppress(ApiError):
            self.rooms.set_active(session.room, session.identity)
        self.runtime.commit()

    async def trickle(self, peer: RtcPeer, candidate_init: str) -> None:
        """A candidate the client trickled, added once any offer in hand is answered."""
        async with peer.lock:
            await peer.add_candidate(candidate_init)

    async def close(self, peer: RtcPeer) -> None:
        """A session's peer connection closed, its audio out of the room."""
        media = self.media
        for _, subscription in peer.sending.values():
            media.detach(subscription)
            self.audio_ended.update(subscription.counters())
        for track_sid, publication in peer.publications.items():
            media.detach(publication)
            if media.track_legs.get(track_sid) is publication:
                del media.track_legs[track_sid]
        await peer.close()

    def audio_samples(self) -> dict[str, int]:
        """WebRTC audio sent to clients, for /metrics: subscriptions open by codec, and packets
        forwarded, frames made and stale frames dropped, over all subscriptions ever."""
        totals = Counter(self.audio_ended)
        for session in self.sessions.values():
            if session.peer is None:
                continue
            for _, subscription in session.peer.sending.values():
                totals.update(subscription.counters())
                if subscription.room is not None:  # attached: audio flows
                    totals[f"subscriptions_{subscription.spec.name.lower()}"] += 1
        return dict(totals)
