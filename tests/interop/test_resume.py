"""A dropped signalling WebSocket (no `leave`) keeps the participant for a resume: the client
reconnects with `reconnect=true` and its participant sid and gets `reconnect` first (WIRE.md
s4, s6), the same participant in the room; without a resume it leaves after the grace period.
"""

from __future__ import annotations

import asyncio

import aiohttp
from livekit import api
from livekit.protocol import models, room, rtc

from tests.harness import eventually
from tests.helpers import ServerProcess
from tests.signal_client import SignalClient, join_query

GRACE_S = 10.0  # server/rtc/signal.py RESUME_GRACE_S
PING_TIMEOUT_S = 15  # server/rtc/signal.py: the join response says so


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


async def test_a_client_silent_for_the_ping_timeout_is_taken_as_gone(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    """A peer that vanished without closing its TCP connection (a laptop lid shut, a NAT that
    forgot it) sends no ping: after PING_TIMEOUT_S the server ends its WebSocket as dropped, and
    after the grace the participant leaves, while a client that pings stays."""
    pinging = SignalClient(server.url, "silent", "bob")
    await pinging.connect()
    silent = SignalClient(server.url, "silent", "alice")  # for its token only
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"{silent.url}/rtc/v1?join_request={join_query(None)}",
            headers={"Authorization": f"Bearer {silent.token}"},
        ) as ws,
    ):
        joined = rtc.SignalResponse.FromString(await ws.receive_bytes(timeout=5))
        assert joined.join.ping_timeout == PING_TIMEOUT_S
        assert "alice" in await participants(lk, "silent")

        # nothing sent by us: the server ends the WebSocket after its ping timeout
        async with asyncio.timeout(PING_TIMEOUT_S + 10):
            while (await ws.receive()).type not in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
            ):
                pass
    assert (await asyncio.to_thread(server.metrics))["sipbridge_signal_silent_total"] == 1

    async def alice_left() -> bool:
        return "alice" not in await participants(lk, "silent")

    await eventually(alice_left, "alice to leave after the grace", timeout=GRACE_S + 5)
    assert "bob" in await participants(lk, "silent")  # pinged all along: still here
    await pinging.close()
