"""Hostile signalling input on `/rtc/v1`: each refused with the protocol's own answer, the room
and the server unharmed (the issue's bad-input list for WebRTC)."""

from __future__ import annotations

import contextlib

from livekit import api
from livekit.protocol import models, room, rtc

from tests.harness import eventually
from tests.helpers import ServerProcess
from tests.signal_client import SignalClient


async def identities(lk: api.LiveKitAPI, name: str) -> set[str]:
    listed = await lk.room.list_participants(room.ListParticipantsRequest(room=name))
    return {p.identity for p in listed.participants}


async def test_an_unusable_offer_gets_a_leave_and_others_stay(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    async with SignalClient(server.url, "bad", "steady"):
        mallory = SignalClient(server.url, "bad", "mallory")
        offer = rtc.SessionDescription(type="offer", sdp="v=0\r\nthis is no sdp\r\n", id=1)
        first = await mallory.open(rtc.JoinRequest(publisher_offer=offer), 5.0)
        assert first.WhichOneof("message") == "join"
        leave = await mallory.wait_for("leave")
        assert leave.leave.reason == models.DisconnectReason.SIGNAL_CLOSE
        await mallory.drop()

        async def mallory_gone() -> bool:
            return "mallory" not in await identities(lk, "bad")

        await eventually(mallory_gone, "mallory to leave", timeout=5)
        assert await identities(lk, "bad") == {"steady"}


async def test_garbage_frames_are_ignored_and_data_to_nobody_is_harmless(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    async with SignalClient(server.url, "noise", "alice") as alice:
        assert alice.ws is not None
        await alice.ws.send_bytes(b"\xff\x00garbage\x13")
        await alice.ws.send_str("not protobuf either")
        await alice.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=9)))
        assert (await alice.wait_for("pong_resp")).pong_resp.last_ping_timestamp == 9
        # SendData to identities that are not in the room: accepted, delivered to no one
        await lk.room.send_data(
            room.SendDataRequest(
                room="noise",
                data=b"x",
                kind=models.DataPacket.Kind.RELIABLE,
                destination_identities=["ghost"],
            )
        )
        assert await identities(lk, "noise") == {"alice"}


async def test_an_oversized_frame_closes_only_that_connection(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    async with SignalClient(server.url, "big", "steady"):
        bulky = SignalClient(server.url, "big", "bulky")
        await bulky.connect()
        assert bulky.ws is not None
        try:
            # The server may close the connection while the frame is still being written (it
            # refuses it from its header): then the send itself fails, which is the point.
            with contextlib.suppress(ConnectionError):
                await bulky.ws.send_bytes(b"\x00" * (2 * 1024 * 1024))
            ws = bulky.ws
            await eventually(
                lambda: ws.closed, "the oversized frame's connection to close", timeout=5
            )
            assert bulky.ws.closed
        finally:
            await bulky.drop()
        assert "steady" in await identities(lk, "big")
