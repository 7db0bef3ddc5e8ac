"""The speaker and quality driver (rtc/room_stats.py) over the rooms model and a sans-IO RTP leg:
a phone's G.711 in, `speakers_changed` and `connection_quality` signal responses out."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast, get_args

import numpy as np
from livekit.protocol import models, rtc

from sipbridge.media import codecs
from sipbridge.media.leg import RtpLeg, StreamConfig
from sipbridge.media.room_audio import RoomAudio
from sipbridge.media.rtp import ReceiverReport, ReportBlock, RtpPacket, serialize_rtcp
from sipbridge.rooms import RoomRegistry
from sipbridge.rooms import events as ev
from sipbridge.server.api.webhooks import WebhookNotifier
from sipbridge.server.rtc.room_stats import RoomStats
from sipbridge.server.rtc.session import Session
from sipbridge.server.state.rooms_runtime import RoomsRuntime

PHONE = ("192.0.2.10", 4000)
Kind = models.ParticipantInfo.Kind


class Clock:
    def add(self, room: RoomAudio) -> None: ...

    def discard(self, room: RoomAudio) -> None: ...


def setup() -> tuple[RoomStats, RoomRegistry, RtpLeg, Session, str]:
    registry = RoomRegistry()
    runtime = RoomsRuntime(registry, WebhookNotifier([], "key", "secret" * 6), lambda: 0.0)
    media = SimpleNamespace(track_legs={})
    registry.create("r", 0.0)
    phone = registry.join("r", "phone", 0.0, kind=Kind.SIP, active=True)
    registry.join("r", "agent", 0.0, active=True)
    track = models.TrackInfo(type=models.TrackType.AUDIO, name="phone")
    track_sid = registry.publish_track("r", "phone", track)
    leg = RtpLeg(codecs.PCMU_SPEC, StreamConfig(audio_pt=0, remote=PHONE), ssrc=0xABCD)
    listener = RtpLeg(codecs.PCMU_SPEC, StreamConfig(audio_pt=0, remote=PHONE))
    room = RoomAudio("r", Clock())
    room.add(leg)
    room.add(listener)
    media.track_legs[track_sid] = leg
    session = Session(room="r", identity="agent", ws=cast(Any, None))
    sessions = {("r", "agent"): session}
    stats = RoomStats(runtime, cast(Any, media), sessions)
    return stats, registry, leg, session, phone.sid


def test_hears_only_joins_leaves_and_closes() -> None:
    """The room events it acts on; not every other one of every room (issue 18)."""
    runtime = RoomsRuntime(RoomRegistry(), WebhookNotifier([], "key", "secret" * 6), lambda: 0.0)
    stats = RoomStats(runtime, cast(Any, SimpleNamespace(track_legs={})), {})
    heard = {
        kind
        for kind in get_args(ev.RoomEvent)  # every kind of room event
        if stats.on_room_event in runtime._route(kind)
    }
    assert heard == {ev.ParticipantJoined, ev.ParticipantLeft, ev.RoomFinished}


def sent(session: Session) -> list[rtc.SignalResponse]:
    out = []
    while not session.outbox.empty():
        message = session.outbox.get_nowait()
        assert message is not None
        out.append(message)
    return out


class Talker:
    def __init__(self) -> None:
        self.sequence = 0

    def talk(self, leg: RtpLeg, amplitude: float, frames: int, start: float) -> float:
        now = start
        for _ in range(frames):
            t = (np.arange(160) + self.sequence * 160) / 8000
            pcm = (np.sin(2 * np.pi * 440 * t) * amplitude * 32767).astype(np.int16)
            packet = RtpPacket(
                payload_type=0,
                sequence_number=self.sequence,
                timestamp=self.sequence * 160,
                ssrc=0x1234,
                payload=codecs.ulaw_encode_array(pcm),
            )
            leg.receive(packet.serialize(), PHONE, now)
            self.sequence += 1
            now += 0.02
        return now


def test_the_phone_is_named_while_it_talks_and_not_once_silent() -> None:
    stats, _, leg, session, phone_sid = setup()
    talker = Talker()
    now = talker.talk(leg, 0.3, 21, 0.0)  # 400 ms after the probation packet
    stats.update_speakers("r", now)
    ((message,),) = [sent(session)]
    speakers = message.speakers_changed.speakers
    assert [(s.sid, s.active) for s in speakers] == [(phone_sid, True)]
    assert 0 < speakers[0].level <= 1
    now = talker.talk(leg, 0.3, 20, now)
    stats.update_speakers("r", now)
    sent(session)  # the level may rise an eighth
    now = talker.talk(leg, 0.0, 20, now)  # silence, still sent
    stats.update_speakers("r", now)
    ((message,),) = [sent(session)]
    assert [(s.sid, s.active, s.level) for s in message.speakers_changed.speakers] == [
        (phone_sid, False, 0.0)
    ]
    now = talker.talk(leg, 0.0, 20, now)
    stats.update_speakers("r", now)
    assert sent(session) == []
    stats.update_speakers("gone", now)  # a room that closed meanwhile: nothing
    assert stats.ticks == 0


async def test_quality_of_the_phone_and_the_client_when_new_and_when_it_changes() -> None:
    stats, registry, leg, session, phone_sid = setup()
    talker = Talker()
    now = talker.talk(leg, 0.3, 250, 0.0)
    await stats.update_quality("r", now)
    ((message,),) = [sent(session)]
    updates = {q.participant_sid: q.quality for q in message.connection_quality.updates}
    agent_sid = registry.participant("r", "agent").sid
    assert updates == {phone_sid: models.ConnectionQuality.EXCELLENT, agent_sid: 2}
    now = talker.talk(leg, 0.3, 250, now)
    await stats.update_quality("r", now)
    assert sent(session) == []  # no change
    # The phone reports losing a quarter of what we send it: POOR at once (scores fall fast).
    block = ReportBlock(ssrc=0xABCD, fraction_lost=64, cumulative_lost=60, jitter=16)
    leg.receive(serialize_rtcp([ReceiverReport(ssrc=0x1234, reports=(block,))]), PHONE, now)
    now = talker.talk(leg, 0.3, 250, now)
    await stats.update_quality("r", now)
    ((message,),) = [sent(session)]
    updates = {q.participant_sid: q.quality for q in message.connection_quality.updates}
    assert updates[phone_sid] == models.ConnectionQuality.POOR
    # Then nothing at all comes from the phone for a window: LOST.
    await stats.update_quality("r", now + 6)
    ((message,),) = [sent(session)]
    updates = {q.participant_sid: q.quality for q in message.connection_quality.updates}
    assert updates[phone_sid] == models.ConnectionQuality.LOST


def test_leaving_participants_and_closed_rooms_are_forgotten() -> None:
    stats, registry, leg, session, phone_sid = setup()
    now = Talker().talk(leg, 0.3, 21, 0.0)
    stats.update_speakers("r", now)
    sent(session)
    runtime_events = []
    registry.remove("r", "phone", now, models.DisconnectReason.CLIENT_INITIATED)
    while (event := registry.next_event()) is not None:
        runtime_events.append(event)
        stats.on_room_event(event)
    stats.update_speakers("r", now + 0.4)
    ((message,),) = [sent(session)]
    assert [(s.sid, s.active) for s in message.speakers_changed.speakers] == [(phone_sid, False)]
    stats.close()
