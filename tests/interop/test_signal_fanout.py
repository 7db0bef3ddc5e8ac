"""A room's updates reach every signalling client in it, each the same message (the server
serialises a participant update or a room update once for all of them): a participant that
joins, publishes, changes and leaves, and the room's metadata changed through the official API,
as three clients over `/rtc/v1` see them."""

from __future__ import annotations

from livekit import api
from livekit.protocol import models, room, rtc

from tests.helpers import ServerProcess
from tests.signal_client import SignalClient

ROOM = "fanout"


async def updates_until_gone(client: SignalClient, identity: str) -> list[rtc.SignalResponse]:
    """The participant updates about `identity` up to the one saying it left (at most 20)."""
    seen: list[rtc.SignalResponse] = []
    for _ in range(20):
        msg = await client.wait_for("update")
        about = [p for p in msg.update.participants if p.identity == identity]
        if about:
            seen.append(msg)
            if about[0].state == models.ParticipantInfo.State.DISCONNECTED:
                break
    return seen


async def test_every_client_gets_the_same_updates(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    async with (
        SignalClient(server.url, ROOM, "alice") as alice,
        SignalClient(server.url, ROOM, "bob") as bob,
    ):
        carol = SignalClient(server.url, ROOM, "carol")
        await carol.connect()
        await carol.publish_audio()
        await lk.room.update_participant(
            room.UpdateParticipantRequest(room=ROOM, identity="carol", metadata="busy")
        )
        await carol.close()
        # joined, track published, metadata, left: the same messages to each of the others
        alice_saw = await updates_until_gone(alice, "carol")
        bob_saw = await updates_until_gone(bob, "carol")
        assert alice_saw == bob_saw
        states = [m.update.participants[0].state for m in alice_saw]
        assert states[0] != models.ParticipantInfo.State.DISCONNECTED
        assert states[-1] == models.ParticipantInfo.State.DISCONNECTED
        assert any(m.update.participants[0].tracks for m in alice_saw)
        assert any(m.update.participants[0].metadata == "busy" for m in alice_saw)

        await lk.room.update_room_metadata(
            room.UpdateRoomMetadataRequest(room=ROOM, metadata="second")
        )
        for client in (alice, bob):
            changed = await client.wait_for("room_update")
            assert (changed.room_update.room.name, changed.room_update.room.metadata) == (
                ROOM,
                "second",
            )
