"""Participant updates gathered over one commit of the room model (server/rtc/updates.py): a
participant that joins and publishes in one commit reaches the room's clients as one update with
its track, its unpublish and leave as one update saying it left; whatever else the commit says
(data) comes after the updates before it; a duplicate identity's old and new participants are
two in the update; the leaver itself is not told of its own leave."""

from __future__ import annotations

from typing import cast

from aiohttp import web
from livekit.protocol import models, rtc

from sipbridge.rooms import RoomRegistry
from sipbridge.server.api.webhooks import WebhookNotifier
from sipbridge.server.rtc.session import Encoded, Outgoing, Session
from sipbridge.server.rtc.signal import SignalServer
from sipbridge.server.state.rooms_runtime import RoomsRuntime

ROOM = "updates"
KEYS = {"key": "secret-secret-secret-secret-secret"}
State = models.ParticipantInfo.State


def drain(session: Session) -> list[rtc.SignalResponse]:
    out: list[rtc.SignalResponse] = []
    while not session.outbox.empty():
        item: Outgoing | None = session.outbox.get_nowait()
        assert item is not None
        out.append(item.message if isinstance(item, Encoded) else item)
    return out


def setup() -> tuple[RoomsRuntime, SignalServer, Session]:
    runtime = RoomsRuntime(RoomRegistry(), WebhookNotifier([], "key", KEYS["key"]), lambda: 1.0)
    signal = SignalServer(runtime, KEYS)
    runtime.registry.create(ROOM, 1.0)
    runtime.registry.join(ROOM, "agent", 1.0)
    agent = Session(room=ROOM, identity="agent", ws=cast(web.WebSocketResponse, None))
    signal.sessions[(ROOM, "agent")] = agent
    runtime.commit()
    drain(agent)
    return runtime, signal, agent


def phone_joins(runtime: RoomsRuntime, identity: str = "phone") -> None:
    registry = runtime.registry
    registry.join(ROOM, identity, 1.0, kind=models.ParticipantInfo.Kind.SIP, active=True)
    registry.publish_track(
        ROOM, identity, models.TrackInfo(type=models.TrackType.AUDIO, name="phone")
    )


async def test_a_join_and_its_track_in_one_commit_are_one_update() -> None:
    runtime, _, agent = setup()
    phone_joins(runtime)
    runtime.commit()
    (message,) = drain(agent)
    (phone,) = message.update.participants
    assert (phone.identity, phone.state, len(phone.tracks)) == ("phone", State.ACTIVE, 1)

    registry = runtime.registry
    registry.update_participant(ROOM, "phone", attributes={"sip.callStatus": "hangup"})
    runtime.commit()
    (message,) = drain(agent)
    assert message.update.participants[0].attributes["sip.callStatus"] == "hangup"

    registry.remove(ROOM, "phone", 2.0, models.DisconnectReason.CLIENT_INITIATED)
    runtime.commit()
    (message,) = drain(agent)
    (gone,) = message.update.participants
    assert (gone.identity, gone.state) == ("phone", State.DISCONNECTED)


async def test_data_after_a_join_follows_its_update() -> None:
    runtime, _, agent = setup()
    phone_joins(runtime)
    runtime.registry.send_data(ROOM, models.DataPacket(user=models.UserPacket(payload=b"hi")))
    runtime.commit()
    kinds = [m.WhichOneof("message") for m in drain(agent)]
    assert kinds[0] == "update"


async def test_a_duplicate_identity_is_two_participants_in_the_update() -> None:
    runtime, _, agent = setup()
    phone_joins(runtime)
    runtime.commit()
    drain(agent)
    phone_joins(runtime)  # the same identity again: the first is replaced
    runtime.commit()
    (message,) = drain(agent)
    old, new = message.update.participants
    assert old.identity == new.identity == "phone"
    assert old.sid != new.sid
    assert (old.state, new.state) == (State.DISCONNECTED, State.ACTIVE)


async def test_the_leaver_is_not_told_of_its_own_leave() -> None:
    runtime, signal, agent = setup()
    phone_joins(runtime)
    runtime.commit()
    phone = Session(room=ROOM, identity="phone", ws=cast(web.WebSocketResponse, None))
    signal.sessions[(ROOM, "phone")] = phone
    drain(agent)
    runtime.registry.remove(ROOM, "phone", 2.0, models.DisconnectReason.CLIENT_INITIATED)
    runtime.commit()
    assert drain(phone) == []
    (message,) = drain(agent)
    assert message.update.participants[0].state == State.DISCONNECTED
