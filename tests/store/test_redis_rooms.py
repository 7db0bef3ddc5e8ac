"""Room owners in a real redis-server (`store/redis_rooms.py`): the first claim wins and the
others see the winner with its heartbeat; a lookup never claims; a dead owner's room is taken
over by the next claim, once, even when several race; release deletes only its own claim."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis.asyncio as aioredis

from sipbridge.store.redis_nodes import RedisNodes
from sipbridge.store.redis_rooms import RedisRooms
from sipbridge.telephony.placement import route_from_reply

pytestmark = pytest.mark.timeout(30)


async def test_claim_lookup_takeover_release(raw: aioredis.Redis) -> None:
    prefix = f"r{secrets.token_hex(4)}:"
    rooms, nodes = RedisRooms(raw, prefix), RedisNodes(raw, prefix)
    await nodes.beat("a", b'{"http":"127.0.0.2:7880"}')
    await nodes.beat("b", b'{"http":"127.0.0.3:7880"}')

    # Nobody owns "lobby": a lookup says so and claims nothing.
    assert route_from_reply("b", await rooms.owner("lobby", "b", claim=False)).owner == ""
    assert await raw.get(f"{prefix}room:lobby") is None

    won = route_from_reply("a", await rooms.owner("lobby", "a", claim=True))
    assert (won.local, won.claimed, won.took_over, won.owner) == (True, True, False, "a")
    again = route_from_reply("a", await rooms.owner("lobby", "a", claim=True))
    assert (again.local, again.claimed) == (True, False)

    # B sees A's claim and A's address, claim or not.
    for claim in (False, True):
        seen = route_from_reply("b", await rooms.owner("lobby", "b", claim=claim))
        assert not seen.local and seen.owner == "a"
        assert seen.node is not None and seen.node.http == "127.0.0.2:7880"
    assert await raw.get(f"{prefix}room:lobby") == b"a"

    # B cannot release A's room; A can.
    assert not await rooms.release("lobby", "b")
    assert await rooms.release("lobby", "a")
    assert await raw.get(f"{prefix}room:lobby") is None

    # A dies (its heartbeat expires): a lookup finds nobody, a claim takes the room over.
    await rooms.owner("hall", "a", claim=True)
    await raw.delete(f"{prefix}node:a")
    assert route_from_reply("b", await rooms.owner("hall", "b", claim=False)).owner == ""
    assert await raw.get(f"{prefix}room:hall") == b"a"
    taken = route_from_reply("b", await rooms.owner("hall", "b", claim=True))
    assert (taken.local, taken.claimed, taken.took_over) == (True, True, True)
    assert await raw.get(f"{prefix}room:hall") == b"b"


async def test_racing_claims_make_one_owner(raw: aioredis.Redis) -> None:
    """Ten nodes claim one new room and then one whose owner died, all at once: one owner each
    time, and every other node routes to it."""
    prefix = f"r{secrets.token_hex(4)}:"
    rooms, nodes = RedisRooms(raw, prefix), RedisNodes(raw, prefix)
    names = [f"n{i}" for i in range(10)]
    for name in names:
        await nodes.beat(name, b"{}")
    for room in ("new", "orphan"):
        if room == "orphan":
            await raw.set(f"{prefix}room:orphan", "gone")  # a node with no heartbeat
        replies = await asyncio.gather(*(rooms.owner(room, n, claim=True) for n in names))
        routes = [route_from_reply(n, r) for n, r in zip(names, replies, strict=True)]
        winners = [n for n, r in zip(names, routes, strict=True) if r.local]
        assert len(winners) == 1, routes
        assert all(r.owner == winners[0] for r in routes)
        assert sum(r.took_over for r in routes) == (1 if room == "orphan" else 0)
