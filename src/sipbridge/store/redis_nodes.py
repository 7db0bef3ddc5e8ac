"""Nodes in Redis (docs/cluster.md s2): each node's heartbeat and the set of node ids.

- `node:{id}`: the node's `NodeInfo` (JSON), written every second with a TTL of 5 s: a node whose
  key has expired is dead, seen so by every node within 5 s of its last beat;
- `nodes`: the set of node ids, for whoever lists them. A member whose `node:{id}` has expired
  and who left nothing for others to clean up (`node:{id}:calls`, the calls it held) is removed
  by the next listing; one with calls left stays until whoever ends them removes it.

A beat writes both keys in one MULTI/EXEC, so a listing never finds a member whose first beat
is missing. A listing is one Lua script: members, values and remaining TTLs read at one instant
(the age of a beat is taken from its TTL, so that clocks of different machines do not matter).
"""

from __future__ import annotations

import builtins
from typing import cast

import redis.asyncio as aioredis

DEFAULT_TTL_MS = 5000

# KEYS[1]: the `nodes` set; ARGV[1]: the key prefix. Returns id, value, PTTL for each live node.
LIST_NODES_LUA = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. 'node:' .. id
  local value = redis.call('GET', key)
  if value then
    table.insert(out, id)
    table.insert(out, value)
    table.insert(out, redis.call('PTTL', key))
  elseif redis.call('EXISTS', key .. ':calls') == 0 then
    redis.call('SREM', KEYS[1], id)
  end
end
return out
"""


# KEYS[1]: the `nodes` set; ARGV[1]: the key prefix. The ids of members whose heartbeat expired
# and who left calls behind (`node:{id}:calls`): dead nodes whose calls nobody has ended yet.
DEAD_WITH_CALLS_LUA = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. 'node:' .. id
  if redis.call('EXISTS', key) == 0 and redis.call('EXISTS', key .. ':calls') == 1 then
    table.insert(out, id)
  end
end
return out
"""

REAPER_LOCK_MS = 30_000  # one node ends a dead node's calls; another may retry after this


class RedisNodes:
    """The nodes of one cluster (one key prefix) in one Redis; their records are opaque bytes
    here (`telephony/node_info.py` reads them)."""

    def __init__(self, client: aioredis.Redis, prefix: str, ttl_ms: int = DEFAULT_TTL_MS) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_ms = ttl_ms
        self.set_key = f"{prefix}nodes"
        self._list = client.register_script(LIST_NODES_LUA)
        self._dead = client.register_script(DEAD_WITH_CALLS_LUA)

    def node_key(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    async def beat(self, node_id: str, record: bytes) -> None:
        """Write a node's heartbeat (alive for `ttl_ms` more) and its membership."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.node_key(node_id), record, px=self.ttl_ms)
            pipe.sadd(self.set_key, node_id)
            await pipe.execute()

    async def leave(self, node_id: str) -> None:
        """A node stopping cleanly: gone from every listing at once."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.node_key(node_id))
            pipe.srem(self.set_key, node_id)
            await pipe.execute()

    async def list(self) -> list[tuple[str, bytes, float]]:
        """The live nodes by id: (id, record, seconds since it was written). Dead ones with
        nothing left to clean up are forgotten."""
        flat = cast(list[bytes | int], await self._list(keys=[self.set_key], args=[self.prefix]))
        nodes = []
        for i in range(0, len(flat) - 2, 3):
            node_id, value, pttl = flat[i], flat[i + 1], flat[i + 2]
            assert isinstance(node_id, bytes) and isinstance(value, bytes)
            age = max(0, self.ttl_ms - int(pttl)) / 1000 if int(pttl) >= 0 else 0.0
            nodes.append((node_id.decode(), value, age))
        return sorted(nodes)

    # -- the calls each node holds (docs/cluster.md s2, failure cases) ----------------------

    def calls_key(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}:calls"

    async def track_calls(
        self, node_id: str, added: builtins.list[str], removed: builtins.list[str]
    ) -> None:
        """The calls `node_id` took up and those that ended since the last time, in one
        round trip (a set left empty is gone: Redis removes empty sets)."""
        async with self.client.pipeline(transaction=True) as pipe:
            if added:
                pipe.sadd(self.calls_key(node_id), *added)
            if removed:
                pipe.srem(self.calls_key(node_id), *removed)
            await pipe.execute()

    async def dead_with_calls(self) -> builtins.list[str]:
        """Dead members (heartbeat expired) that left calls for someone to end."""
        ids = cast(builtins.list[bytes], await self._dead(keys=[self.set_key], args=[self.prefix]))
        return sorted(i.decode() for i in ids)

    async def claim(self, node_id: str, claimer: str, ttl_ms: int = REAPER_LOCK_MS) -> bool:
        """Whether `claimer` is the one node to end `node_id`'s calls (SET NX, for `ttl_ms`)."""
        key = f"{self.prefix}node:{node_id}:reaper"
        return bool(await self.client.set(key, claimer, nx=True, px=ttl_ms))

    async def calls_of(self, node_id: str) -> builtins.list[str]:
        ids = cast(set[bytes], await self.client.smembers(self.calls_key(node_id)))
        return sorted(i.decode() for i in ids)

    async def forget(self, node_id: str, call_ids: builtins.list[str]) -> None:
        """A dead node's calls were ended: out of its set (the next listing drops the node once
        its set is empty and gone)."""
        async with self.client.pipeline(transaction=True) as pipe:
            if call_ids:
                pipe.srem(self.calls_key(node_id), *call_ids)
            pipe.delete(f"{self.prefix}node:{node_id}:reaper")  # the next death is seen at once
            await pipe.execute()
