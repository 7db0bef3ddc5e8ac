"""The cluster's room routing wired into one node (docs/cluster.md s3-s4): owners, the Twirp
forwarder, the WebSocket relay and the INVITE proxy. Inert without Redis."""

from __future__ import annotations

import redis.asyncio as aioredis

from sipbridge.server.api.twirp import TwirpServer
from sipbridge.server.cluster.forward import TwirpForwarder
from sipbridge.server.cluster.owners import RoomOwners
from sipbridge.server.cluster.relay import SignalRelay
from sipbridge.server.nodes import redis_nodes
from sipbridge.server.state.rooms_runtime import RoomsRuntime
from sipbridge.store.redis_rooms import RedisRooms


class ClusterRooms:
    def __init__(
        self, node_id: str, runtime: RoomsRuntime, keys: dict[str, str], twirp: TwirpServer
    ) -> None:
        self.owners = RoomOwners(node_id, runtime)
        self.forwarder = TwirpForwarder(self.owners)
        self.relay = SignalRelay(self.owners, keys)
        twirp.router = self.forwarder

    def start(self, client: aioredis.Redis, prefix: str) -> None:
        self.owners.start(RedisRooms(client, prefix), redis_nodes(client, prefix))

    async def stop(self) -> None:
        await self.relay.close()
        await self.forwarder.close()
        await self.owners.stop()
