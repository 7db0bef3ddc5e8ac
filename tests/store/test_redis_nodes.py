"""Node heartbeats in a real redis-server (`store/redis_nodes.py`): a beat lists the node with
its load and an age from the key's TTL; an expired beat drops it from the list and from the set,
unless it left calls for others to end; a clean leave is seen at once."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from sipbridge.store.redis_nodes import RedisNodes
from tests.harness import eventually
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def raw(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis.url)
    yield client
    await client.aclose()


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
