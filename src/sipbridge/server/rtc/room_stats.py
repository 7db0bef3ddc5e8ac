"""Speaker and connection-quality updates to the clients of each room: the driver of
`rooms/speakers.py` and `rooms/quality.py`.

Every 400 ms (`AudioLevelConfig.update_interval`), for each room with a signalling session:
the levels of each participant's audio sources (`MediaService.track_legs`: a phone's RTP leg,
measured by table from its G.711; a client's publication, measured on its decoded audio) go to
the room's `ActiveSpeakers`, and a `SpeakersChanged` it returns goes to every session of the
room. Every 5 s (`quality.UPDATE_INTERVAL`), each ACTIVE participant's streams are scored:
a phone's from our RTP receiver (what it sends us) and its RTCP reports (what we send it, and
the round-trip time); a client's from aiortc's statistics of its peer connection (inbound RTP
of what it publishes, the remote-inbound reports of what it receives). A
`ConnectionQualityUpdate` goes to every session of the room when a participant is new or its
quality changed. One timer for all rooms, running while any session is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Protocol

from livekit.protocol import models, rtc

from sipbridge.media.leg import RtpLeg
from sipbridge.media.room_audio import AudioLeg
from sipbridge.rooms import events as ev
from sipbridge.rooms.model import Participant
from sipbridge.rooms.quality import (
    LOSS_WEIGHT_G711,
    LOSS_WEIGHT_OPUS_FEC,
    UPDATE_INTERVAL,
    ConnectionQualities,
    ConnectionQualityChanged,
    StreamWindow,
)
from sipbridge.rooms.speakers import DEFAULT_CONFIG, ActiveSpeakers, SpeakersChanged
from sipbridge.server.media.leg_driver import G711
from sipbridge.server.rtc.session import Session, in_room
from sipbridge.server.state.rooms_runtime import RoomsRuntime

log = logging.getLogger(__name__)

SPEAKER_INTERVAL = DEFAULT_CONFIG.update_interval
QUALITY_EVERY = round(UPDATE_INTERVAL / SPEAKER_INTERVAL)  # speaker ticks per quality update
ACTIVE = models.ParticipantInfo.State.ACTIVE
# The room events `RoomStats` hears of (not every event of every room: 10-11 a call with a
# room each, issue 18).
ROOM_STATS_EVENTS = (ev.ParticipantJoined, ev.ParticipantLeft, ev.RoomFinished)


def speakers_message(update: SpeakersChanged) -> rtc.SignalResponse:
    return rtc.SignalResponse(
        speakers_changed=rtc.SpeakersChanged(
            speakers=[
                models.SpeakerInfo(sid=s.sid, level=s.level, active=s.active)
                for s in update.speakers
            ]
        )
    )


def quality_message(update: ConnectionQualityChanged) -> rtc.SignalResponse:
    return rtc.SignalResponse(
        connection_quality=rtc.ConnectionQualityUpdate(
            updates=[
                rtc.ConnectionQualityInfo(
                    participant_sid=q.sid,
                    quality=int(q.quality),  # type: ignore[arg-type]
                    score=q.score,
                )
                for q in update.updates
            ]
        )
    )


class TrackSources(Protocol):
    """What the stats read of the media service (`MediaService`): the leg giving each room
    track its audio. (A protocol: compiled, an argument's declared class is checked at the
    call, and the tests hand in a stand-in.)"""

    @property
    def track_legs(self) -> Mapping[str, AudioLeg]: ...


class RoomStats:
    """Speaker and quality updates for the sessions (`sessions`, by (room, identity))."""

    def __init__(
        self,
        runtime: RoomsRuntime,
        media: TrackSources,
        sessions: Mapping[tuple[str, str], Session],
    ) -> None:
        self.rooms = runtime.registry
        self.media = media
        self.sessions = sessions
        self.speakers: dict[str, ActiveSpeakers] = {}
        self.qualities: dict[str, ConnectionQualities] = {}
        self.ticks = 0
        self.sent_speakers = 0
        self.sent_quality = 0
        self._timer: asyncio.TimerHandle | None = None
        self._scoring: asyncio.Task[None] | None = None
        runtime.listen(self.on_room_event, ROOM_STATS_EVENTS)

    # -- the timer ------------------------------------------------------------------------

    def on_room_event(self, event: ev.RoomEvent) -> None:
        match event:
            case ev.ParticipantJoined():
                self._ensure_timer()
            case ev.ParticipantLeft(room=room, participant=p):
                if (speakers := self.speakers.get(room.name)) is not None:
                    speakers.remove(p.sid)
                if (qualities := self.qualities.get(room.name)) is not None:
                    qualities.remove(p.sid)
            case ev.RoomFinished(room=room):
                self.speakers.pop(room.name, None)
                self.qualities.pop(room.name, None)
            case _:
                pass

    def _ensure_timer(self) -> None:
        if self._timer is None:
            with contextlib.suppress(RuntimeError):  # no loop: nothing to drive
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(SPEAKER_INTERVAL, self._tick)

    def _tick(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        rooms = {session.room for session in self.sessions.values()}
        if not rooms:
            return  # the next join starts it again
        self._timer = loop.call_later(SPEAKER_INTERVAL, self._tick)
        self.ticks += 1
        now = loop.time()
        for name in rooms:
            try:
                self.update_speakers(name, now)
            except Exception:
                log.exception("speaker update failed in room %s", name)
        if self.ticks % QUALITY_EVERY == 0 and (self._scoring is None or self._scoring.done()):
            self._scoring = loop.create_task(self._score_all(rooms, now), name="room quality")

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._scoring is not None:
            self._scoring.cancel()

    def _send(self, room: str, message: rtc.SignalResponse) -> None:
        for session in in_room(self.sessions, room):
            session.send(message)

    # -- speakers -------------------------------------------------------------------------

    def update_speakers(self, name: str, now: float) -> None:
        """Read the levels of the room's sources, send a `SpeakersChanged` when one is due."""
        room = self.rooms.find(name)
        if room is None:
            return
        speakers = self.speakers.get(name)
        if speakers is None:
            speakers = self.speakers[name] = ActiveSpeakers()
        for participant in room.participants.values():
            for track in participant.tracks.values():
                source = self.media.track_legs.get(track.sid)
                if source is not None:
                    source.sync(levels=True)  # a relay engine's counters and levels
                levels = source.levels if source is not None else None
                if levels is None:
                    continue
                observed = levels.read()
                if observed and not track.muted and not participant.permission.hidden:
                    speakers.observe(participant.sid, observed, now)
        update = speakers.update(now)
        if update is not None:
            self.sent_speakers += 1
            self._send(name, speakers_message(update))

    # -- connection quality ---------------------------------------------------------------

    async def _score_all(self, rooms: set[str], now: float) -> None:
        for name in rooms:
            try:
                await self.update_quality(name, now)
            except Exception:
                log.exception("quality update failed in room %s", name)

    async def update_quality(self, name: str, now: float) -> None:
        """Score the streams of the room's ACTIVE participants; send an update when due."""
        room = self.rooms.find(name)
        if room is None:
            return
        qualities = self.qualities.get(name)
        if qualities is None:
            qualities = self.qualities[name] = ConnectionQualities()
        active = [
            p for p in room.participants.values() if p.state == ACTIVE and not p.permission.hidden
        ]
        for participant in active:
            session = self.sessions.get((name, participant.identity))
            if session is not None and (session.peer or session.subscriber) is not None:
                await self._score_peer(qualities, participant, session, now)
            else:
                self._score_legs(qualities, participant, now)
        if self.rooms.find(name) is not room:
            return  # the room closed while aiortc's statistics were read
        present = {p.sid for p in room.participants.values()}
        update = qualities.update([p.sid for p in active if p.sid in present])
        if update is not None:
            self.sent_quality += 1
            self._send(name, quality_message(update))

    def _score_legs(
        self, qualities: ConnectionQualities, participant: Participant, now: float
    ) -> None:
        """A phone: what it sends us (our receiver), what we send it (its reports), the RTT."""
        names = []
        for track in participant.tracks.values():
            leg = self.media.track_legs.get(track.sid)
            if not isinstance(leg, RtpLeg):
                continue
            leg.sync()
            weight = LOSS_WEIGHT_G711 if leg.spec in G711 else LOSS_WEIGHT_OPUS_FEC
            report = leg.remote_report
            rtt = report.rtt if report is not None else None
            if leg.receiving:  # a phone on hold sends nothing: nothing to score
                stats = leg.receiver.stats
                heard = (
                    leg.last_packet_at is not None and now - leg.last_packet_at < UPDATE_INTERVAL
                )
                qualities.stream(participant.sid, f"{track.sid}/up", weight).add_totals(
                    expected=stats.packets + max(0, stats.lost),
                    lost=stats.lost,
                    jitter=stats.jitter_seconds,
                    rtt=rtt,
                    heard=heard,
                )
                names.append(f"{track.sid}/up")
            if report is not None and now - report.at < UPDATE_INTERVAL:
                # Its report covers its last interval (RFC 3550 s6.4.1): the fraction lost in
                # it, as a window of 256 packets.
                qualities.stream(participant.sid, f"{track.sid}/down", weight).add(
                    StreamWindow(
                        packets=256,
                        lost=round(report.fraction_lost * 256),
                        jitter=report.jitter,
                        rtt=rtt,
                    )
                )
            if report is not None:
                names.append(f"{track.sid}/down")
        qualities.keep_only(participant.sid, names)

    async def _score_peer(
        self,
        qualities: ConnectionQualities,
        participant: Participant,
        session: Session,
        now: float,
    ) -> None:
        """A client: its publications (aiortc's inbound RTP) and what it receives from us
        (the remote-inbound reports of our senders, with their round-trip times). In two-PC
        mode what it receives is on the subscriber connection, what it publishes on the other."""
        down, up = session.downlink, session.peer
        names: list[str] = []
        rtt = None
        sending = down.sending if down is not None and not down.closed else {}
        for track_sid, (transceiver, subscription) in list(sending.items()):
            report = await transceiver.sender.getStats()
            clock = subscription.spec.rtp_clock
            weight = LOSS_WEIGHT_G711 if subscription.spec in G711 else LOSS_WEIGHT_OPUS_FEC
            for stats in report.values():
                if getattr(stats, "type", "") != "remote-inbound-rtp":
                    continue
                rtt = stats.roundTripTime
                qualities.stream(participant.sid, f"{track_sid}/down", weight).add_totals(
                    expected=stats.packetsReceived + max(0, stats.packetsLost),
                    lost=stats.packetsLost,
                    jitter=stats.jitter / clock,
                    rtt=stats.roundTripTime,
                )
                names.append(f"{track_sid}/down")
        receiving = up.pc.getTransceivers() if up is not None and not up.closed else []
        for transceiver in receiving:
            track = transceiver.receiver.track
            if transceiver.kind != "audio" or track is None or transceiver.direction == "sendonly":
                continue
            report = await transceiver.receiver.getStats()
            for stats in report.values():
                if getattr(stats, "type", "") != "inbound-rtp":
                    continue
                name = f"{transceiver.mid}/up"
                qualities.stream(participant.sid, name, LOSS_WEIGHT_OPUS_FEC).add_totals(
                    expected=stats.packetsReceived + max(0, stats.packetsLost),
                    lost=stats.packetsLost,
                    jitter=stats.jitter / 48000,  # Opus: the only codec clients publish in
                    rtt=rtt,
                )
                names.append(name)
        qualities.keep_only(participant.sid, names)
