"""A node's calls in Redis (`server/node_calls.py`) with a real redis-server: the set follows the
call-log records (added with the first, removed with the one that ends the call), survives
Redis restarting (kept and written when it is back), and a dead node's calls are ended by the
node that takes the lock - not by a second one, and not calls that had already ended."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from livekit.protocol import sip

from sipbridge.server.node_calls import NodeCalls
from sipbridge.server.nodes import redis_nodes
from sipbridge.store import Record
from sipbridge.store.redis import RedisStore
from tests.harness import eventually
from tests.redis_server import comes_to, redis_server

pytestmark = pytest.mark.timeout(30)
S = sip.SIPCallStatus


def call(call_id: str, status: int) -> sip.SIPCallInfo:
    return sip.SIPCallInfo(call_id=call_id, call_status=status, started_at_ns=1)


async def test_the_set_follows_the_calls_through_a_redis_restart(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis", persistent=True) as redis:
        store = RedisStore(redis.url, prefix=f"nc{secrets.token_hex(3)}:")
        await store.open()
        nodes = redis_nodes(store.client, store.prefix)
        mine = NodeCalls("a", nodes, store, look_every=0.1)
        await mine.start()
        try:
            mine.record(call("SCL_1", S.SCS_CALL_INCOMING))
            mine.record(call("SCL_1", S.SCS_ACTIVE))  # still live: no change
            mine.record(call("SCL_2", S.SCS_ACTIVE))
            mine.record(sip.SIPCallInfo())  # no id yet: nothing to list
            await eventually(
                lambda: comes_to(nodes.calls_of("a"), ["SCL_1", "SCL_2"]), "both listed"
            )
            redis.stop()
            mine.record(call("SCL_1", S.SCS_DISCONNECTED))
            mine.record(call("SCL_3", S.SCS_ACTIVE))
            redis.start()
            await eventually(
                lambda: comes_to(nodes.calls_of("a"), ["SCL_2", "SCL_3"]), "after Redis"
            )
        finally:
            await mine.stop()
            await store.close()


async def test_a_dead_nodes_calls_are_ended_once_by_one_node(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as redis:
        store = RedisStore(redis.url, prefix=f"nc{secrets.token_hex(3)}:")
        await store.open()
        nodes = redis_nodes(store.client, store.prefix)
        records = [
            call("SCL_live", S.SCS_ACTIVE),
            call("SCL_ringing", S.SCS_PARTICIPANT_JOINED),
            call("SCL_done", S.SCS_DISCONNECTED),
        ]
        await store.put_many(
            [Record(kind="call", id=c.call_id, data=c.SerializeToString()) for c in records]
        )
        await nodes.beat("dead", b"{}")
        await nodes.track_calls("dead", [c.call_id for c in records] + ["SCL_never_written"], [])
        await store.client.delete(f"{store.prefix}node:dead")  # its heartbeat expired

        finder = NodeCalls("b", nodes, store, clock=lambda: 1_700_000_000.0, look_every=0.05)
        other = NodeCalls("c", nodes, store)
        await nodes.claim("dead", "c")  # c is ending them: b must leave them alone
        await finder.start()
        try:
            assert await other.end_calls_of("dead") == 0  # the lock is taken (SET NX)
            assert finder.reaped == 0
            await store.client.delete(f"{store.prefix}node:dead:reaper")  # c gave up
            await eventually(lambda: finder.reaped == 2, "b ending the dead node's calls")
            for call_id in ("SCL_live", "SCL_ringing"):
                stored = await store.get("call", call_id)
                assert stored is not None
                info = sip.SIPCallInfo.FromString(stored.data)
                assert info.call_status == S.SCS_ERROR and info.error.startswith("node lost: dead")
                assert info.ended_at_ns == 1_700_000_000 * 10**9
            done = await store.get("call", "SCL_done")
            assert done is not None and done.data == records[2].SerializeToString()
            assert await nodes.calls_of("dead") == []
            assert await nodes.dead_with_calls() == []
        finally:
            await finder.stop()
            await store.close()


async def test_a_node_restarted_under_its_old_id_ends_what_it_left(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as redis:
        store = RedisStore(redis.url, prefix=f"nc{secrets.token_hex(3)}:")
        await store.open()
        nodes = redis_nodes(store.client, store.prefix)
        left = call("SCL_old", S.SCS_ACTIVE)
        await store.put(Record(kind="call", id="SCL_old", data=left.SerializeToString()))
        await nodes.track_calls("a", ["SCL_old"], [])
        again = NodeCalls("a", nodes, store)
        await again.start()
        try:
            assert again.reaped == 1 and await nodes.calls_of("a") == []
        finally:
            await again.stop()
            await store.close()
