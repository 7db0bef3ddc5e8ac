"""A dropped signalling WebSocket (no `leave`) keeps the participant for a resume: the client
reconnects with `reconnect=true` and its participant sid and gets `reconnect` first (WIRE.md
s4, s6), the same participant in the room; without a resume it leaves after the grace period.
"""

from __future__ import annotations

import asyncio

from livekit import api
from livekit.protocol import models, room, rtc

from tests.harness import eventually
from tests.helpers import ServerProcess
from tests.signal_client import SignalClient

GRACE_S = 10.0  # server/rtc/signal.py RESUME_GRACE_S


async def participants(lk: api.LiveKitAPI, name: str) -> dict[str, models.ParticipantInfo]:
    listed = await lk.room.list_participants(room.ListParticipantsRequest(room=name))
    return {p.identity: p for p in listed.participants}


async def test_drop_and_resume_keeps_the_participant(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    alice = SignalClient(server.url, "resume", "alice")
    joined = await alice.connect()
    sid = joined.participant.sid
    await alice.drop()
    # The behaviour under test: 0.3 s after the drop (well inside the grace period) alice is
    # still there.
    await asyncio.sleep(0.3)
    assert (await participants(lk, "resume"))["alice"].sid == sid
    first = await alice.resume()
    assert first.WhichOneof("message") == "reconnect", first
    # then the room as it is now, which the SDK takes as the truth (participants absent from
    # it left while the link was down), and the room's info
    snapshot = await alice.wait_for("update")
    assert "alice" in {p.identity for p in snapshot.update.participants}
    await alice.wait_for("room_update")
    # the session works on the new WebSocket
    await alice.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=42)))
    pong = await alice.wait_for("pong_resp")
    assert pong.pong_resp.last_ping_timestamp == 42
    assert (await participants(lk, "resume"))["alice"].sid == sid
    await alice.close()  # leave

    async def left() -> bool:
        return "alice" not in await participants(lk, "resume")

    await eventually(left, "alice to leave", timeout=5)


async def test_resume_of_another_sid_is_a_fresh_join(server: ServerProcess) -> None:
    alice = SignalClient(server.url, "resume", "alice")
    await alice.connect()
    await alice.drop()
    bob = SignalClient(server.url, "resume", "alice")
    first = await bob.open(rtc.JoinRequest(reconnect=True, participant_sid="PA_other"), 5.0)
    assert first.WhichOneof("message") == "join", first
    await bob.close()


async def test_no_resume_within_the_grace_period_removes_the_participant(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    alice = SignalClient(server.url, "resume", "alice")
    await alice.connect()
    watcher = SignalClient(server.url, "resume", "bob")
    await watcher.connect()
    await alice.drop()
    await asyncio.sleep(GRACE_S - 2)  # the behaviour under test: most of the grace period
    assert "alice" in await participants(lk, "resume")
    update = None
    async with asyncio.timeout(6):
        while True:
            update = await watcher.wait_for("update")
            gone = [
                p
                for p in update.update.participants
                if p.identity == "alice" and p.state == models.ParticipantInfo.State.DISCONNECTED
            ]
            if gone:
                break
    assert gone[0].disconnect_reason == models.DisconnectReason.CONNECTION_TIMEOUT
    await watcher.close()
