"""The media of each signalling session: its peer connections (rtc/peer.py) driven.

Single-PC mode: the client's offers (in the join or after it) are answered with the room's
audio tracks on its free sections. Two-PC mode: its publisher connection's offers are answered,
and the subscriber connection is ours to offer - at the join, and again whenever the tracks it
hears change (one offer out at a time; a client that leaves one unanswered for
`ANSWER_TIMEOUT_S` leaves); our candidates are trickled with the connection's `target`. What a
client hears follows its subscriptions (auto-subscribe, its own `subscription` requests, the
API's UpdateSubscriptions) and the publishers' SubscriptionPermissions; what it publishes joins
the room's audio; a peer connection coming up makes it ACTIVE. Room audio sources are the media
service's (`MediaService.track_legs`), attached to and detached from a room's clock there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping

from livekit.protocol import models, rtc

from sipbridge.errors import ApiError
from sipbridge.server.media.leg_driver import AudioLeg
from sipbridge.server.media.service import MediaService
from sipbridge.server.rtc.audio import Publication
from sipbridge.server.rtc.peer import ForeignConnection, RtcPeer, split_candidates
from sipbridge.server.rtc.session import Session, in_room, leave_message
from sipbridge.server.state.rooms_runtime import RoomsRuntime

log = logging.getLogger(__name__)

DisconnectReason = models.DisconnectReason
ANSWER_TIMEOUT_S = 5.0  # a client that leaves our subscriber offer unanswered longer leaves


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
        self.answer_timeout_s = ANSWER_TIMEOUT_S
        self.refused: Counter[str] = Counter()  # negotiation input refused, by what it was

    def _new_peer(self, session: Session, *, offers: bool) -> RtcPeer:
        peer = RtcPeer(identity=session.identity, offers=offers)
        peer.published = session.published  # tracks the client added before this connection
        peer.on_data = lambda data, lossy: self._on_data(session, data, lossy)
        if offers:
            peer.on_connected = lambda: self._subscriber_up(session, peer)
        else:
            peer.on_connected = lambda: self._connected(session)
        return peer

    def offer_received(self, session: Session, offer: rtc.SessionDescription) -> None:
        """An offer of the client: the first one (in the join, or after it as Firefox and older
        clients send it) makes its connection - the only one in single-PC mode, the publisher
        in two-PC mode - and each is answered in turn; one that a newer offer overtook while
        it waited is not answered (the client only applies the answer to its newest)."""
        if session.peer is None:
            session.peer = self._new_peer(session, offers=False)
        session.peer.offers_seen += 1
        session.spawn(self.negotiate(session, offer, session.peer.offers_seen))

    def _refuse_session(self, session: Session, reason: int, why: str) -> None:
        """The session cannot go on: the client is told why (`leave`), the participant leaves."""
        name = DisconnectReason.Name(reason)
        log.info("signal %s: %s: leaves (%s)", session.identity, why, name)
        self._leave(session, reason)
        session.send(leave_message(reason))

    async def negotiate(self, session: Session, offer: rtc.SessionDescription, seq: int) -> None:
        """Answer an offer of the client, its room audio tracks on its free sections (single-PC;
        in two-PC mode our tracks go on the subscriber connection)."""
        peer = session.peer
        if peer is None:
            return
        async with peer.lock:
            if peer.closed:
                return
            if seq != peer.offers_seen:
                self.refused["offer_overtaken"] += 1
                log.info(
                    "signal %s: offer %d refused: overtaken by a newer one (glare)",
                    session.identity,
                    offer.id,
                )
                return
            wanted = {} if session.two_pc else self._wanted(session)
            try:
                sdp, mids, left = await peer.answer(
                    offer.sdp,
                    wanted,
                    lambda sid, publication: self._published(session, sid, publication),
                )
            except ForeignConnection as err:
                self.refused["offer_foreign"] += 1
                self._refuse_session(session, DisconnectReason.STATE_MISMATCH, f"offer: {err}")
                return
            except Exception as err:  # a bad offer must not take the server down
                self._refuse_session(session, DisconnectReason.SIGNAL_CLOSE, f"offer: {err}")
                return
            candidates: list[str] = []
            if session.two_pc:
                sdp, candidates = split_candidates(sdp)
            session.send(
                rtc.SignalResponse(
                    answer=rtc.SessionDescription(
                        type="answer", sdp=sdp, id=offer.id, mid_to_track_id=mids
                    )
                )
            )
            self._trickle_out(session, candidates, rtc.SignalTarget.PUBLISHER)
            if session.two_pc:
                return
            self.apply_subscriptions(session, ask=False)
            if left:
                session.send(
                    rtc.SignalResponse(
                        media_sections_requirement=rtc.MediaSectionsRequirement(
                            num_audios=len(left)
                        )
                    )
                )

    @staticmethod
    def _trickle_out(session: Session, candidates: list[str], target: int) -> None:
        for candidate in candidates:
            session.send(
                rtc.SignalResponse(
                    trickle=rtc.TrickleRequest(candidateInit=candidate, target=target)  # type: ignore[arg-type]
                )
            )

    # -- two-PC mode: the subscriber connection, ours to offer ------------------------------

    def start_subscriber(self, session: Session) -> None:
        """Two-PC mode: the subscriber connection made and offered at once (LiveKit's
        `subscriber_primary`), with the data channels the server sends on."""
        session.subscriber = self._new_peer(session, offers=True)
        self.offer_subscriber(session)

    def offer_subscriber(self, session: Session) -> None:
        """(Re)offer the subscriber connection: now, or once the offer out is answered."""
        sub = session.subscriber
        if sub is None or sub.closed:
            return
        # Not before the first offer's connection is up: aiortc starts a section's sender (and
        # the client's receiver) when a negotiation finds DTLS connected, and one that ends
        # while DTLS is still connecting never starts them - the new track would stay silent.
        if sub.offering or sub.pending_offer is not None or (sub.offer_id and not sub.up):
            sub.offer_again = True
            return
        sub.offering = True
        session.spawn(self._offer(session, sub))

    async def _offer(self, session: Session, sub: RtcPeer) -> None:
        try:
            async with sub.lock:
                if sub.closed:
                    return
                sub.offer_again = False
                sdp, mids = await sub.offer(self._wanted(session))
                sdp, candidates = split_candidates(sdp)
                sub.offer_id += 1
                sub.pending_offer = (sdp, mids, candidates)
        finally:
            sub.offering = False
        self.send_pending_offer(session)
        self.apply_subscriptions(session)  # the new sections' audio attached

    def send_pending_offer(self, session: Session) -> None:
        """Our offer out (again after a resume: the client may not have had it), and the
        deadline for its answer."""
        sub = session.subscriber
        if sub is None or sub.pending_offer is None:
            return
        sdp, mids, candidates = sub.pending_offer
        session.send(
            rtc.SignalResponse(
                offer=rtc.SessionDescription(
                    type="offer", sdp=sdp, id=sub.offer_id, mid_to_track_id=mids
                )
            )
        )
        self._trickle_out(session, candidates, rtc.SignalTarget.SUBSCRIBER)
        if sub.answer_deadline is not None:
            sub.answer_deadline.cancel()
        loop = asyncio.get_running_loop()
        sub.answer_deadline = loop.call_later(self.answer_timeout_s, self._unanswered, session, sub)

    def _subscriber_up(self, session: Session, sub: RtcPeer) -> None:
        """The subscriber connection is up: ACTIVE, and the offer held back for it goes."""
        sub.up = True
        self._connected(session)
        if sub.offer_again:
            self.offer_subscriber(session)

    def _unanswered(self, session: Session, sub: RtcPeer) -> None:
        sub.answer_deadline = None
        if sub.closed or sub.pending_offer is None or session.subscriber is not sub:
            return
        if session.ws.closed:
            return  # the WebSocket is down: the offer goes again on a resume
        self.refused["offer_unanswered"] += 1
        self._refuse_session(
            session,
            DisconnectReason.MEDIA_FAILURE,
            f"no answer to the subscriber offer within {self.answer_timeout_s:g} s",
        )

    def answer_received(self, session: Session, answer: rtc.SessionDescription) -> None:
        """The client's answer to our subscriber offer; with none pending (or to an older
        offer than the one out), a logged refusal."""
        sub = session.subscriber
        if sub is None or sub.pending_offer is None:
            self.refused["answer_without_offer"] += 1
            log.info("signal %s: answer refused: no offer of ours is pending", session.identity)
            return
        if answer.id and answer.id != sub.offer_id:
            self.refused["answer_stale"] += 1
            log.info(
                "signal %s: answer refused: it answers offer %d, ours out is %d",
                session.identity,
                answer.id,
                sub.offer_id,
            )
            return
        session.spawn(self._answered(session, sub, answer))

    async def _answered(
        self, session: Session, sub: RtcPeer, answer: rtc.SessionDescription
    ) -> None:
        async with sub.lock:
            if sub.closed or sub.pending_offer is None:
                return
            try:
                await sub.accept_answer(answer.sdp)
            except ForeignConnection as err:
                self.refused["answer_foreign"] += 1
                self._refuse_session(session, DisconnectReason.STATE_MISMATCH, f"answer: {err}")
                return
            except Exception as err:
                self._refuse_session(session, DisconnectReason.SIGNAL_CLOSE, f"answer: {err}")
                return
            sub.pending_offer = None
            if sub.answer_deadline is not None:
                sub.answer_deadline.cancel()
                sub.answer_deadline = None
        if sub.offer_again:
            self.offer_subscriber(session)

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
        room model follows; tracks still without a section are asked for (`ask`). In two-PC
        mode a track no longer wanted loses its section, and the subscriber connection is
        offered again when sections come or go."""
        peer, media = session.downlink, self.media
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
        if session.two_pc:
            gone = [track_sid for track_sid in peer.sending if track_sid not in wanted]
            for track_sid in gone:
                dropped = peer.drop(track_sid)
                if dropped is not None:
                    self.audio_ended.update(dropped.counters())
            if gone or any(track_sid not in peer.sending for track_sid in wanted):
                self.offer_subscriber(session)
            return
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
        for other in in_room(self.sessions, room):
            if other.identity != exclude:
                self.apply_subscriptions(other)

    def _connected(self, session: Session) -> None:
        """Its peer connection is up: the participant is ACTIVE (SDKs wait for that)."""
        if self.sessions.get((session.room, session.identity)) is not session:
            return
        with contextlib.suppress(ApiError):
            self.rooms.set_active(session.room, session.identity)
        self.runtime.commit()

    def trickle_received(self, session: Session, trickle: rtc.TrickleRequest) -> None:
        """A candidate the client trickled, for the connection its `target` names (in
        single-PC mode the one connection); for an unknown target or a connection not made,
        a logged refusal."""
        targets = {
            rtc.SignalTarget.PUBLISHER: session.peer,
            rtc.SignalTarget.SUBSCRIBER: session.subscriber if session.two_pc else session.peer,
        }
        if trickle.target not in targets:
            self.refused["trickle_unknown_target"] += 1
            log.info(
                "signal %s: trickle refused: unknown target %d", session.identity, trickle.target
            )
            return
        peer = targets[trickle.target]
        if peer is None:
            self.refused["trickle_no_connection"] += 1
            log.info(
                "signal %s: trickle refused: no %s connection negotiated",
                session.identity,
                rtc.SignalTarget.Name(trickle.target),
            )
            return
        session.spawn(self.trickle(peer, trickle.candidateInit))

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
            peer = session.downlink
            if peer is None:
                continue
            for _, subscription in peer.sending.values():
                totals.update(subscription.counters())
                if subscription.room is not None:  # attached: audio flows
                    totals[f"subscriptions_{subscription.spec.name.lower()}"] += 1
        return dict(totals)
