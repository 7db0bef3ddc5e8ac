"""Node heartbeats in a real redis-server (`store/redis_nodes.py`): a beat lists the node with
its load and an age from the key's TTL; an expired beat drops it from the list and from the set,
unless it left calls for others to end; a clean leave is seen at once."""

from __future__ import annotations

import secrets

import pytest
import redis.asyncio as aioredis

from sipbridge.store.redis_nodes import RedisNodes
from tests.harness import eventually

pytestmark = pytest.mark.timeout(30)


async def test_beat_list_expire_and_leave(raw: aioredis.Redis) -> None:
    prefix = f"n{secrets.token_hex(4)}:"
    nodes = RedisNodes(raw, prefix, ttl_ms=5000)
    a = b'{"calls":2}'
    await nodes.beat("b", b'{"state":"draining"}')
    await nodes.beat("a", a)
    assert 0 < await raw.pttl(f"{prefix}node:a") <= 5000
    assert await raw.smembers(f"{prefix}nodes") == {b"a", b"b"}
    listed = await nodes.list()
    assert [(node_id, record) for node_id, record, _ in listed] == [
        ("a", a),
        ("b", b'{"state":"draining"}'),
    ]
    assert all(0 <= age < 1 for _, _, age in listed)

    # Dead: the key expired (shortened here from 5 s). With calls left to end, the member stays
    # in the set for whoever ends them; without, the listing forgets it.
    await raw.set(f"{prefix}node:a", a, px=50)
    await raw.sadd(f"{prefix}node:b:calls", "SCL_1")
    await raw.set(f"{prefix}node:b", b"{}", px=50)

    async def gone() -> bool:
        return await nodes.list() == []

    await eventually(gone, "both beats to expire", timeout=5)
    assert await raw.smembers(f"{prefix}nodes") == {b"b"}

    await nodes.beat("a", a)
    await nodes.leave("a")
    assert await nodes.list() == []
    assert await raw.exists(f"{prefix}node:a") == 0


async def test_calls_of_a_dead_node_claimed_once_then_forgotten(raw: aioredis.Redis) -> None:
    """`node:{id}:calls` as nodes keep it; a dead node with calls listed is found, claimed by
    exactly one node (SET NX), and once its calls are forgotten the listing drops it."""
    prefix = f"n{secrets.token_hex(4)}:"
    nodes = RedisNodes(raw, prefix, ttl_ms=5000)
    await nodes.beat("a", b"{}")
    await nodes.beat("b", b"{}")
    await nodes.track_calls("b", ["SCL_1", "SCL_2", "SCL_3"], [])
    await nodes.track_calls("b", ["SCL_4"], ["SCL_3"])
    assert await nodes.calls_of("b") == ["SCL_1", "SCL_2", "SCL_4"]
    assert await nodes.dead_with_calls() == []  # b beats

    await raw.delete(f"{prefix}node:b")  # b's beat expired
    assert await nodes.dead_with_calls() == ["b"]
    assert await nodes.claim("b", "a")
    assert not await nodes.claim("b", "c")  # one node ends them
    await nodes.forget("b", ["SCL_1", "SCL_2"])
    assert await nodes.calls_of("b") == ["SCL_4"]  # added meanwhile: left for the next look
    assert await nodes.claim("b", "c")  # the lock went with the forget
    await nodes.forget("b", ["SCL_4"])
    assert await nodes.dead_with_calls() == []
    assert [node_id for node_id, _, _ in await nodes.list()] == ["a"]
    assert await raw.smembers(f"{prefix}nodes") == {b"a"}
