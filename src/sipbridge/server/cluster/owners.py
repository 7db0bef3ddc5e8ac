"""Who owns a room (docs/cluster.md s3), the asyncio side of `store/redis_rooms.py`.

`route(name, claim=...)` answers whether a room is served here or by another live node. A room
this node holds in memory is its own without asking Redis (the fast path: a call or request for
a local room never waits for Redis). Without Redis every room is local.

Rooms this node creates are claimed, and rooms it closes released, in the order they happened,
by one task that follows the room events: whichever path created a room (a call, a join, the
API, an agent dispatch), its key names this node soon after - and a request routed before then
still claims it first (`route(..., claim=True)` is idempotent for the owner).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from sipbridge.errors import ApiError
from sipbridge.rooms import events as ev
from sipbridge.server.loop_calls import stop_task
from sipbridge.server.state.rooms_runtime import RoomsRuntime
from sipbridge.store.redis_nodes import RedisNodes
from sipbridge.store.redis_rooms import RedisRooms
from sipbridge.telephony.node_info import NodeInfo
from sipbridge.telephony.placement import RoomRoute, least_loaded, route_from_reply

log = logging.getLogger(__name__)

REDIS_WAIT_S = 2.0  # the design's bound on waiting for Redis before refusing


class RoomOwners:
    def __init__(self, node_id: str, runtime: RoomsRuntime) -> None:
        self.node_id = node_id
        self.runtime = runtime
        self.store: RedisRooms | None = None  # set by `start` on a Redis store
        self.nodes: RedisNodes | None = None
        self.stats: Counter[str] = Counter()  # local, remote, claimed, took_over, released
        self._changes: asyncio.Queue[tuple[bool, str]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        runtime.listen(self._on_room_event, (ev.RoomStarted, ev.RoomFinished))

    @property
    def clustered(self) -> bool:
        return self.store is not None

    def start(self, rooms: RedisRooms | None, nodes: RedisNodes | None) -> None:
        """With Redis: rooms routed by owner from now on (claimed for the rooms already here)."""
        self.store, self.nodes = rooms, nodes
        if rooms is not None:
            for room in self.runtime.registry.rooms():
                self._changes.put_nowait((True, room.name))
            self._task = asyncio.create_task(self._follow(), name="room owners")

    def reclaim(self) -> None:
        """Claim again every room held here (after Redis came back: it may have lost them)."""
        if self.store is None:
            return
        for room in self.runtime.registry.rooms():
            self._changes.put_nowait((True, room.name))
        self.stats["reclaimed"] += 1

    def settle(self, name: str) -> None:
        """A room claimed for a request that may have failed before making it: its key goes
        unless the room is held here by the time the claims queue gets to it."""
        if self.store is not None and self.runtime.registry.find(name) is None:
            self._changes.put_nowait((False, name))

    async def stop(self) -> None:
        """Release the rooms still held (their keys would name a dead node until taken over)."""
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        if self.store is not None:
            for room in self.runtime.registry.rooms():
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(REDIS_WAIT_S):
                        await self.store.release(room.name, self.node_id)

    async def route(self, name: str, *, claim: bool) -> RoomRoute:
        """Where requests for room `name` go; with `claim`, a room nobody (alive) owns becomes
        this node's. ApiError `unavailable` when Redis does not answer in time."""
        if self.store is None or self.runtime.registry.find(name) is not None:
            self.stats["local"] += 1
            return RoomRoute(owner=self.node_id, local=True)
        try:
            async with asyncio.timeout(REDIS_WAIT_S):
                reply = await self._ask(name, claim=claim)
        except (RedisError, OSError, TimeoutError) as exc:
            self.stats["redis_failed"] += 1
            raise ApiError("unavailable", f"cannot find the node of room {name!r}: {exc}") from None
        route = route_from_reply(self.node_id, reply)
        self.stats["remote" if not route.local else "local"] += 1
        if route.claimed:
            self.stats["claimed"] += 1
        if route.took_over:
            self.stats["took_over"] += 1
            log.info("room %s: taken over from a node that is gone", name)
        return route

    async def _ask(self, name: str, *, claim: bool) -> list[bytes | str | int | None]:
        """The claim script's reply, asked again once on a connection error (a pooled
        connection to a Redis that restarted fails once, then the pool reconnects)."""
        assert self.store is not None
        try:
            return await self.store.owner(name, self.node_id, claim=claim)
        except RedisConnectionError:
            self.stats["redis_retried"] += 1
            return await self.store.owner(name, self.node_id, claim=claim)

    async def live_nodes(self) -> list[NodeInfo]:
        if self.nodes is None:
            return []
        async with asyncio.timeout(REDIS_WAIT_S):
            listed = await self.nodes.list()
        return [NodeInfo.from_json(node_id, record, age=age) for node_id, record, age in listed]

    async def place(self, name: str) -> RoomRoute:
        """Where a new call for room `name` goes (CreateSIPParticipant): the room's owner if it
        has one alive, else the least-loaded serving node (this one on a tie, or when the node
        list cannot be read) - claimed here when that is this node."""
        route = await self.route(name, claim=False)
        if not route.local or route.owner == self.node_id:
            return route
        try:
            best = least_loaded(await self.live_nodes(), prefer=self.node_id)
        except (RedisError, OSError, TimeoutError):
            best = None
        if best is None or best.id == self.node_id:
            return await self.route(name, claim=True)
        self.stats["placed_remote"] += 1
        return RoomRoute(owner=best.id, local=False, node=best)

    # -- the rooms this node creates and closes ------------------------------------------------

    def _on_room_event(self, event: ev.RoomEvent) -> None:
        if self.store is None:
            return
        if isinstance(event, ev.RoomStarted):
            self._changes.put_nowait((True, event.room.name))
        elif isinstance(event, ev.RoomFinished):
            self._changes.put_nowait((False, event.room.name))

    async def _follow(self) -> None:
        assert self.store is not None
        while True:
            started, name = await self._changes.get()
            try:
                async with asyncio.timeout(REDIS_WAIT_S):
                    if started:
                        route = route_from_reply(self.node_id, await self._ask(name, claim=True))
                        if not route.local:
                            self.stats["split"] += 1
                            log.warning("room %s: created here but owned by %s", name, route.owner)
                    elif self.runtime.registry.find(name) is None and await self.store.release(
                        name, self.node_id
                    ):  # (not re-created meanwhile)
                        self.stats["released"] += 1
            except (RedisError, OSError, TimeoutError) as exc:
                what = "set" if started else "freed"
                log.warning("room %s: owner key not %s: %s", name, what, exc)
