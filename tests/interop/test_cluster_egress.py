"""The Egress API on any node of a cluster (issue 13, docs/cluster.md s3), driven by the official
`livekit-api` client against two `sipbridge serve` nodes on 127.0.0.2-3 and one real
redis-server, each node recording into a directory of its own:

- a recording started through the node that does not own the room is made by the owner (its
  file in the owner's directory, none in the other's; a participant egress gets the owner's
  answer);
- ListEgress through either node lists the recordings of both, filters as on one node;
- StopEgress, UpdateLayout and UpdateStream through the other node reach the node that records
  (its answer, not a `not_found` of the node asked), found by the egress's stored record - and,
  with that record gone from Redis, by asking every node;
- an egress no node holds is `not_found` through any node.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from livekit import api
from livekit.protocol import egress
from livekit.protocol import room as room_proto

from tests.cluster import Cluster, Node, lk_client
from tests.harness import eventually
from tests.redis_server import RedisServer, redis_server
from tests.signal_client import SignalClient

pytestmark = pytest.mark.timeout(120)

Status = egress.EgressStatus


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def two(tmp_path: Path, redis: RedisServer) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path, redis, 2)
    for node in nodes.nodes:
        node.extra += ["--recordings-dir", str(recordings(node))]
    try:
        nodes.start()
        yield nodes
    finally:
        codes = nodes.stop()
    nodes.assert_clean(codes)


def recordings(node: Node) -> Path:
    return node.log.parent / "rec"


def composite(room: str, filepath: str) -> egress.RoomCompositeEgressRequest:
    return egress.RoomCompositeEgressRequest(
        room_name=room,
        audio_only=True,
        file_outputs=[egress.EncodedFileOutput(filepath=filepath)],
    )


async def listed(lk: api.LiveKitAPI, **fields: object) -> dict[str, egress.EgressInfo]:
    reply = await lk.egress.list_egress(egress.ListEgressRequest(**fields))  # type: ignore[arg-type]
    return {info.egress_id: info for info in reply.items}


async def code_of(call: object) -> str:
    with pytest.raises(api.TwirpError) as raised:
        await call  # type: ignore[misc]
    return str(raised.value.code)


async def test_egress_is_reached_through_any_node(two: Cluster, redis: RedisServer) -> None:
    a, b = two.nodes
    async with contextlib.AsyncExitStack() as stack:
        on_a = await stack.enter_async_context(lk_client(a))
        on_b = await stack.enter_async_context(lk_client(b))
        await on_a.room.create_room(room_proto.CreateRoomRequest(name="rec-a"))
        await on_b.room.create_room(room_proto.CreateRoomRequest(name="rec-b"))
        # someone in each room, so that the recordings complete (an empty room's is aborted)
        for node, name in ((a, "rec-a"), (b, "rec-b")):
            await stack.enter_async_context(SignalClient(node.url, name, "listener"))

        # Started through the node that does not own the room: made by the owner.
        on_a_rec = await on_b.egress.start_room_composite_egress(composite("rec-a", "a1.ogg"))
        on_b_rec = await on_a.egress.start_room_composite_egress(composite("rec-b", "b1.ogg"))
        assert on_a_rec.room_name == "rec-a" and on_b_rec.room_name == "rec-b"
        assert Path(on_a_rec.file_results[0].location) == recordings(a) / "a1.ogg"
        assert Path(on_b_rec.file_results[0].location) == recordings(b) / "b1.ogg"

        # The other starts go to the owner too: A's answer for A's room through B (its
        # listener publishes no audio), not B's not_found for a room B does not hold.
        participant = egress.ParticipantEgressRequest(
            room_name="rec-a",
            identity="listener",
            file_outputs=[egress.EncodedFileOutput(filepath="p.ogg")],
        )
        started = on_b.egress.start_participant_egress(participant)
        assert await code_of(started) == "failed_precondition"

        # Listed through either node: both; filters as on one node.
        both = {on_a_rec.egress_id, on_b_rec.egress_id}
        for lk in (on_a, on_b):
            assert set(await listed(lk)) == both
            assert set(await listed(lk, room_name="rec-a")) == {on_a_rec.egress_id}
            assert set(await listed(lk, egress_id=on_b_rec.egress_id)) == {on_b_rec.egress_id}
            assert set(await listed(lk, active=True)) == both

        # UpdateStream and UpdateLayout reach the recording node: its answer (audio files
        # have no stream or layout), not the not_found of a node that does not hold it.
        update = egress.UpdateStreamRequest(egress_id=on_a_rec.egress_id)
        assert await code_of(on_b.egress.update_stream(update)) == "unimplemented"
        layout = egress.UpdateLayoutRequest(egress_id=on_b_rec.egress_id, layout="grid")
        assert await code_of(on_a.egress.update_layout(layout)) == "unimplemented"

        # StopEgress through the other node stops it where it records.
        stopped = await on_b.egress.stop_egress(
            egress.StopEgressRequest(egress_id=on_a_rec.egress_id)
        )
        assert stopped.egress_id == on_a_rec.egress_id
        assert stopped.status in (Status.EGRESS_ENDING, Status.EGRESS_COMPLETE)

        async def complete(lk: api.LiveKitAPI, egress_id: str) -> bool:
            info = (await listed(lk, egress_id=egress_id)).get(egress_id)
            assert info is None or info.status != Status.EGRESS_FAILED, info
            return info is not None and info.status == Status.EGRESS_COMPLETE

        await eventually(lambda: complete(on_b, on_a_rec.egress_id), "A's recording complete")
        assert (recordings(a) / "a1.ogg").stat().st_size > 0
        assert not (recordings(b) / "a1.ogg").exists()
        # stopping it again: the recording node's own answer
        again = on_b.egress.stop_egress(egress.StopEgressRequest(egress_id=on_a_rec.egress_id))
        assert await code_of(again) == "failed_precondition"

        # The egress's stored record gone (not written yet, or lost): every node is asked.
        raw = aioredis.Redis.from_url(redis.url)
        try:
            assert await raw.hdel(f"{two.prefix}rec:egress", on_b_rec.egress_id) == 1
        finally:
            await raw.aclose()
        stopped = await on_a.egress.stop_egress(
            egress.StopEgressRequest(egress_id=on_b_rec.egress_id)
        )
        assert stopped.egress_id == on_b_rec.egress_id
        await eventually(lambda: complete(on_a, on_b_rec.egress_id), "B's recording complete")
        assert (recordings(b) / "b1.ogg").stat().st_size > 0

        # An egress no node holds: not_found through either.
        for lk in (on_a, on_b):
            unknown = lk.egress.stop_egress(egress.StopEgressRequest(egress_id="EG_unknown"))
            assert await code_of(unknown) == "not_found"
            unknown = lk.egress.update_stream(egress.UpdateStreamRequest(egress_id="EG_unknown"))
            assert await code_of(unknown) == "not_found"
        assert set(await listed(on_b, active=True)) == set()
        assert set(await listed(on_b)) == both
