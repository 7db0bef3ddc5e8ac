"""livekit.RoomService through the official client, with participants that joined over `/rtc/v1`
signalling (tests/signal_client.py speaks the official protobuf messages)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from livekit import api
from livekit.protocol import models, room, rtc

from tests.harness import eventually, leave_clean, module_server
from tests.helpers import ServerProcess, token, twirp
from tests.interop.test_sip_api import expect_error
from tests.signal_client import SignalClient

Reason = models.DisconnectReason


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module (a start costs more than most tests here)."""
    yield from module_server(tmp_path_factory, "room-api", clean_log=True)


@pytest.fixture
async def server(shared_server: ServerProcess) -> AsyncIterator[ServerProcess]:
    """The module's server (and `lk`'s), its rooms deleted after each test: each finds none."""
    yield shared_server
    await leave_clean(shared_server)


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    await eventually(predicate, "the condition", timeout=timeout)


async def test_create_list_delete_rooms(lk: api.LiveKitAPI) -> None:
    r = await lk.room.create_room(
        room.CreateRoomRequest(name="r1", metadata="m", max_participants=5)
    )
    assert r.sid.startswith("RM_") and r.name == "r1"
    assert (r.empty_timeout, r.departure_timeout, r.max_participants) == (300, 20, 5)
    assert r.metadata == "m" and r.creation_time > 0 and r.num_participants == 0
    again = await lk.room.create_room(room.CreateRoomRequest(name="r1"))
    assert again.sid == r.sid  # creating an existing room returns it
    await lk.room.create_room(room.CreateRoomRequest(name="r2", empty_timeout=60))

    everything = await lk.room.list_rooms(room.ListRoomsRequest())
    assert sorted(x.name for x in everything.rooms) == ["r1", "r2"]
    some = await lk.room.list_rooms(room.ListRoomsRequest(names=["r2", "nope"]))
    assert [x.name for x in some.rooms] == ["r2"]
    assert some.rooms[0].empty_timeout == 60

    await lk.room.delete_room(room.DeleteRoomRequest(room="r1"))
    assert [x.name for x in (await lk.room.list_rooms(room.ListRoomsRequest())).rooms] == ["r2"]
    await expect_error("not_found", lk.room.delete_room(room.DeleteRoomRequest(room="r1")))
    await expect_error("invalid_argument", lk.room.create_room(room.CreateRoomRequest(name="")))

    updated = await lk.room.update_room_metadata(
        room.UpdateRoomMetadataRequest(room="r2", metadata="new")
    )
    assert updated.metadata == "new" and updated.name == "r2"
    await expect_error(
        "not_found",
        lk.room.update_room_metadata(room.UpdateRoomMetadataRequest(room="r9", metadata="x")),
    )
    # one server, no second node to hand a participant to: the README says so
    await expect_error(
        "unimplemented",
        lk.room.forward_participant(
            room.ForwardParticipantRequest(room="r2", identity="a", destination_room="r3")
        ),
    )
    await expect_error(
        "unimplemented",
        lk.room.move_participant(
            room.MoveParticipantRequest(room="r2", identity="a", destination_room="r3")
        ),
    )


async def test_participants_listed_updated_and_removed(
    lk: api.LiveKitAPI, server: ServerProcess
) -> None:
    async with (
        SignalClient(server.url, "talk", "alice", name="Alice", attributes={"a": "1"}) as alice,
        SignalClient(server.url, "talk", "bob", can_update_own_metadata=True) as bob,
    ):
        assert alice.join is not None and bob.join is not None
        assert alice.join.room.name == "talk" and alice.join.participant.identity == "alice"
        assert alice.join.ping_interval > 0 and alice.join.ping_timeout > 0
        # the LiveKit release whose protocol we speak, as semver (SDKs gate RPC on >= 1.8.0)
        info = alice.join.server_info
        assert alice.join.server_version == info.version == "1.9.0" and info.protocol == 16
        assert info.debug_info.startswith("sipbridge ")
        assert [p.identity for p in bob.join.other_participants] == ["alice"]
        joined = await alice.wait_for("update")
        assert joined.update.participants[0].identity == "bob"

        listed = await lk.room.list_participants(room.ListParticipantsRequest(room="talk"))
        by_identity = {p.identity: p for p in listed.participants}
        assert set(by_identity) == {"alice", "bob"}
        a = by_identity["alice"]
        assert a.sid.startswith("PA_") and a.name == "Alice"
        assert dict(a.attributes) == {"a": "1"}
        assert a.kind == models.ParticipantInfo.Kind.STANDARD
        got = await lk.room.get_participant(
            room.RoomParticipantIdentity(room="talk", identity="bob")
        )
        assert got.sid == by_identity["bob"].sid
        await expect_error(
            "not_found",
            lk.room.get_participant(room.RoomParticipantIdentity(room="talk", identity="carol")),
        )
        # As LiveKit: the participants of a room that does not exist are an empty list.
        nobody = await lk.room.list_participants(room.ListParticipantsRequest(room="nope"))
        assert list(nobody.participants) == []
        rooms = (await lk.room.list_rooms(room.ListRoomsRequest())).rooms
        assert [r.name for r in rooms] == ["talk"]  # and listing created no room

        updated = await lk.room.update_participant(
            room.UpdateParticipantRequest(
                room="talk",
                identity="alice",
                metadata='{"vip":true}',
                name="Alice A.",
                attributes={"a": "", "b": "2"},
                permission=models.ParticipantPermission(can_subscribe=True, can_publish_data=True),
            )
        )
        assert updated.metadata == '{"vip":true}' and updated.name == "Alice A."
        assert dict(updated.attributes) == {"b": "2"}
        assert not updated.permission.can_publish and updated.version > a.version
        seen = await bob.wait_for("update")
        assert seen.update.participants[0].metadata == '{"vip":true}'
        mine = await alice.wait_for("update")
        assert dict(mine.update.participants[0].attributes) == {"b": "2"}

        # A client updating its own attributes: RequestResponse OK and an update echo.
        await bob.send(
            rtc.SignalRequest(
                update_metadata=rtc.UpdateParticipantMetadata(
                    attributes={"lk.agent.state": "listening"}, request_id=7
                )
            )
        )
        reply = await bob.wait_for("request_response")
        assert reply.request_response.request_id == 7
        assert reply.request_response.reason == rtc.RequestResponse.Reason.OK
        echo = await bob.wait_for("update")
        assert echo.update.participants[0].attributes["lk.agent.state"] == "listening"
        # Without canUpdateOwnMetadata: refused.
        await alice.send(
            rtc.SignalRequest(
                update_metadata=rtc.UpdateParticipantMetadata(metadata="x", request_id=8)
            )
        )
        refused = await alice.wait_for("request_response")
        assert refused.request_response.reason == rtc.RequestResponse.Reason.NOT_ALLOWED

        await lk.room.remove_participant(room.RoomParticipantIdentity(room="talk", identity="bob"))
        leave = await bob.wait_for("leave")
        assert leave.leave.reason == Reason.PARTICIPANT_REMOVED
        await wait_until(lambda: _closed(bob))
        gone = await alice.wait_for("update")
        assert gone.update.participants[0].identity == "bob"
        assert gone.update.participants[0].state == models.ParticipantInfo.State.DISCONNECTED
        listed = await lk.room.list_participants(room.ListParticipantsRequest(room="talk"))
        assert [p.identity for p in listed.participants] == ["alice"]
        await expect_error(
            "not_found",
            lk.room.remove_participant(room.RoomParticipantIdentity(room="talk", identity="bob")),
        )


async def send_data_raw(
    server: ServerProcess, room_name: str, nonce: bytes
) -> tuple[int, str, bytes]:
    req = room.SendDataRequest(room=room_name, data=b"x", nonce=nonce)
    auth = "Bearer " + token(api.VideoGrants(room_admin=True, room=room_name))
    return await twirp(
        server.url, "livekit.RoomService", "SendData", req.SerializeToString(), auth=auth
    )


async def _closed(client: SignalClient) -> bool:
    return client.closed


async def test_tracks_mute_subscriptions_and_data(
    lk: api.LiveKitAPI, server: ServerProcess
) -> None:
    async with (
        SignalClient(server.url, "media", "caller") as caller,
        SignalClient(server.url, "media", "agent") as agent,
    ):
        track = await caller.publish_audio()
        assert track.sid.startswith("TR_") and track.type == models.TrackType.AUDIO
        info = await lk.room.get_participant(
            room.RoomParticipantIdentity(room="media", identity="caller")
        )
        assert [t.sid for t in info.tracks] == [track.sid]

        muted = await lk.room.mute_published_track(
            room.MuteRoomTrackRequest(
                room="media", identity="caller", track_sid=track.sid, muted=True
            )
        )
        assert muted.track.sid == track.sid and muted.track.muted
        await expect_error(
            "not_found",
            lk.room.mute_published_track(
                room.MuteRoomTrackRequest(
                    room="media", identity="caller", track_sid="TR_x", muted=True
                )
            ),
        )

        await lk.room.update_subscriptions(
            room.UpdateSubscriptionsRequest(
                room="media", identity="agent", track_sids=[track.sid], subscribe=True
            )
        )
        await expect_error(
            "not_found",
            lk.room.update_subscriptions(
                room.UpdateSubscriptionsRequest(
                    room="media", identity="agent", track_sids=["TR_nope"], subscribe=True
                )
            ),
        )

        await lk.room.send_data(
            room.SendDataRequest(
                room="media",
                data=b"hello",
                kind=models.DataPacket.Kind.RELIABLE,
                destination_identities=["agent"],
                topic="greeting",
            )
        )
        await expect_error(
            "not_found", lk.room.send_data(room.SendDataRequest(room="nope", data=b"x"))
        )
        # A topic-only packet (empty data) is allowed, as in LiveKit.
        await lk.room.send_data(
            room.SendDataRequest(
                room="media",
                data=b"",
                kind=models.DataPacket.Kind.RELIABLE,
                destination_identities=["agent"],
                topic="ping",
            )
        )
        # A nonce, when given, is exactly 16 bytes (the official client always sends 16, so
        # these go raw).
        for nonce in (b"", bytes(range(16))):
            got, _, body = await send_data_raw(server, "media", nonce)
            assert got == 200, body
        for nonce in (b"short", bytes(15), bytes(17)):
            got, _, body = await send_data_raw(server, "media", nonce)
            doc = json.loads(body)
            assert (got, doc["code"]) == (400, "invalid_argument"), body
            assert "nonce" in doc["msg"], doc

        # Deleting the room disconnects everyone in it.
        await lk.room.delete_room(room.DeleteRoomRequest(room="media"))
        for client in (caller, agent):
            leave = await client.wait_for("leave")
            assert leave.leave.reason == Reason.ROOM_DELETED


async def test_client_leave_ping_and_duplicate_identity(
    lk: api.LiveKitAPI, server: ServerProcess
) -> None:
    first = SignalClient(server.url, "dup", "same")
    await first.connect()
    await first.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=1234, rtt=5)))
    pong = await first.wait_for("pong_resp")
    assert pong.pong_resp.last_ping_timestamp == 1234 and pong.pong_resp.timestamp > 0

    async with SignalClient(server.url, "dup", "same") as second:
        leave = await first.wait_for("leave")
        assert leave.leave.reason == Reason.DUPLICATE_IDENTITY
        listed = await lk.room.list_participants(room.ListParticipantsRequest(room="dup"))
        assert [p.sid for p in listed.participants] == [second.join.participant.sid]  # type: ignore[union-attr]
        await first.close()
        # The old connection closing does not remove the new participant: the behaviour under
        # test, checked after the server had 0.2 s to (wrongly) remove it.
        await asyncio.sleep(0.2)
        listed = await lk.room.list_participants(room.ListParticipantsRequest(room="dup"))
        assert len(listed.participants) == 1

        await second.send(rtc.SignalRequest(leave=rtc.LeaveRequest(reason=Reason.CLIENT_INITIATED)))

        async def empty() -> bool:
            res = await lk.room.list_participants(room.ListParticipantsRequest(room="dup"))
            return not res.participants

        await wait_until(empty)


async def test_refused_duplicate_join_leaves_no_ghost(
    lk: api.LiveKitAPI, server: ServerProcess
) -> None:
    first = SignalClient(server.url, "ghost", "A")
    await first.connect()
    # The same identity again, with attributes the room refuses (an empty attribute name): the
    # join fails, and the first connection must stay the one that owns "A".
    second = SignalClient(server.url, "ghost", "A", attributes={"": "x"})
    with pytest.raises(AssertionError):
        await second.connect()
    await second.close()
    listed = await lk.room.list_participants(room.ListParticipantsRequest(room="ghost"))
    assert [p.sid for p in listed.participants] == [first.join.participant.sid]  # type: ignore[union-attr]
    # The first connection was not told to leave and still works.
    await first.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=99)))
    while (msg := await first.next()).WhichOneof("message") != "pong_resp":
        assert msg.WhichOneof("message") != "leave", msg
    assert msg.pong_resp.last_ping_timestamp == 99

    # When it closes, "A" leaves: no participant is left behind.
    await first.close()

    async def empty() -> bool:
        res = await lk.room.list_participants(room.ListParticipantsRequest(room="ghost"))
        return not res.participants

    await wait_until(empty)


async def test_rooms_close_after_their_timeouts(lk: api.LiveKitAPI, server: ServerProcess) -> None:
    await lk.room.create_room(room.CreateRoomRequest(name="brief", empty_timeout=1))
    await lk.room.create_room(room.CreateRoomRequest(name="visited", departure_timeout=1))
    async with SignalClient(server.url, "visited", "v"):
        pass

    async def names() -> set[str]:
        return {r.name for r in (await lk.room.list_rooms(room.ListRoomsRequest())).rooms}

    assert await names() <= {"brief", "visited"}

    async def both_gone() -> bool:
        return not await names()

    await wait_until(both_gone, timeout=5)


async def test_max_participants_and_join_grants(lk: api.LiveKitAPI, server: ServerProcess) -> None:
    await lk.room.create_room(room.CreateRoomRequest(name="solo", max_participants=1))
    async with SignalClient(server.url, "solo", "one"):
        second = SignalClient(server.url, "solo", "two")
        with pytest.raises(AssertionError):
            await second.connect()
        await second.close()
        listed = await lk.room.list_participants(room.ListParticipantsRequest(room="solo"))
        assert [p.identity for p in listed.participants] == ["one"]
    # A token without roomJoin cannot open a signalling connection.
    import aiohttp  # noqa: PLC0415

    tok = api.AccessToken("testkey", _secret()).with_identity("x")
    tok.with_grants(api.VideoGrants(room="solo", room_join=False))
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{server.url}/rtc/v1/validate", headers={"Authorization": f"Bearer {tok.to_jwt()}"}
        ) as resp,
    ):
        assert resp.status == 403


def _secret() -> str:
    from tests.helpers import API_SECRET  # noqa: PLC0415

    return API_SECRET


async def test_metrics_count_requests_and_errors(lk: api.LiveKitAPI, server: ServerProcess) -> None:
    import aiohttp  # noqa: PLC0415

    async def scrape() -> dict[str, float]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{server.url}/metrics") as resp,
        ):
            text = await resp.text()
        samples = (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
        return {key: float(value) for key, value in samples}

    # The server is the module's: its counters are read as what this test added to them.
    before = await scrape()
    await lk.room.create_room(room.CreateRoomRequest(name="counted"))
    await expect_error("not_found", lk.room.delete_room(room.DeleteRoomRequest(room="missing")))
    lines = await scrape()
    requests = lines["sipbridge_api_requests_total"]
    assert requests - before["sipbridge_api_requests_total"] >= 2
    not_found = 'sipbridge_api_errors_total{code="not_found"}'
    assert lines[not_found] - before.get(not_found, 0) == 1
    assert lines["sipbridge_rooms"] == 1
    deleted = 'sipbridge_api_request_seconds_count{method="livekit.RoomService/DeleteRoom"}'
    assert lines[deleted] - before.get(deleted, 0) == 1
