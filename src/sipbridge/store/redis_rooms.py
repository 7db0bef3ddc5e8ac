"""Room owners in Redis (docs/cluster.md s3): `room:{name}` names the node that hosts a room.

One Lua script answers "who owns this room" and, when asked to, claims it, at one instant:
- the key names this node: ours;
- it names a node whose heartbeat `node:{id}` exists: that node's, with its heartbeat (its
  addresses), in the same round trip;
- it is missing (a new room: `SET NX`'s case), or names a node whose heartbeat expired (a dead
  owner: the compare-and-set of a takeover, safe because the script runs alone): with `claim`,
  this node becomes the owner; without, nobody owns it.

Release deletes the key only while it still names this node (a node that lost the room to a
takeover while it was cut off must not delete the new owner's claim).
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

# KEYS[1]: room:{name}; ARGV[1]: this node; ARGV[2]: the heartbeat key prefix ("...node:");
# ARGV[3]: "1" to claim. Returns {owner or "", owner's heartbeat or "", claimed, took over}.
CLAIM_LUA = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then return {owner, '', 0, 0} end
if owner then
  local beat = redis.call('GET', ARGV[2] .. owner)
  if beat then return {owner, beat, 0, 0} end
end
if ARGV[3] ~= '1' then return {'', '', 0, 0} end
redis.call('SET', KEYS[1], ARGV[1])
if owner then return {ARGV[1], '', 1, 1} end
return {ARGV[1], '', 1, 0}
"""

# KEYS[1]: room:{name}; ARGV[1]: this node. 1 when deleted.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

Reply = list[bytes | str | int | None]


class RedisRooms:
    """The owners of one cluster's rooms (one key prefix)."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._claim = client.register_script(CLAIM_LUA)
        self._release = client.register_script(RELEASE_LUA)

    def room_key(self, name: str) -> str:
        return f"{self.prefix}room:{name}"

    async def owner(self, name: str, node_id: str, *, claim: bool) -> Reply:
        """The claim script's reply for room `name` as seen by `node_id`."""
        args = [node_id, f"{self.prefix}node:", "1" if claim else "0"]
        return cast(Reply, await self._claim(keys=[self.room_key(name)], args=args))

    async def release(self, name: str, node_id: str) -> bool:
        """The room ended on its owner `node_id`: its key goes, if still ours."""
        return bool(await self._release(keys=[self.room_key(name)], args=[node_id]))
