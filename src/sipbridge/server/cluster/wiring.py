"""The cluster's room routing wired into one node (docs/cluster.md s3-s5): owners, the Twirp
forwarder (with egress by egress id), the WebSocket relay, the INVITE proxy and agent jobs.
Inert without Redis."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web

from sipbridge.server.agents import AgentService
from sipbridge.server.api.twirp import TwirpServer
from sipbridge.server.cluster.agents import ClusterAgents
from sipbridge.server.cluster.egress import EgressRouter
from sipbridge.server.cluster.forward import TwirpForwarder
from sipbridge.server.cluster.owners import RoomOwners
from sipbridge.server.cluster.relay import SignalRelay
from sipbridge.server.cluster.sip_proxy import CallRouter
from sipbridge.server.nodes import redis_nodes
from sipbridge.server.recording.service import EgressService
from sipbridge.server.sip.user_agent import SipUserAgent
from sipbridge.server.state.rooms_runtime import RoomsRuntime
from sipbridge.store.redis_rooms import RedisRooms


class ClusterRooms:
    def __init__(
        self,
        node_id: str,
        runtime: RoomsRuntime,
        *,
        keys: dict[str, str],
        twirp: TwirpServer,
        ua: SipUserAgent,
        agents: AgentService,
        egress: EgressService,
    ) -> None:
        self.owners = RoomOwners(node_id, runtime)
        self.forwarder = TwirpForwarder(self.owners, twirp)
        self.relay = SignalRelay(self.owners, keys)
        self.calls = CallRouter(self.owners, ua, keys)
        self.agents = ClusterAgents(self.owners, agents, keys)
        self.egress = EgressRouter(self.forwarder, egress)
        twirp.router = self.forwarder
        ua.on_invite = self.calls.vouching(ua.on_invite)

    def start(self, client: aioredis.Redis, prefix: str) -> None:
        self.owners.start(RedisRooms(client, prefix), redis_nodes(client, prefix))
        self.agents.start()

    def routes(self, app: web.Application) -> None:
        """Between nodes: agent jobs offered to this node's workers, and their end."""
        self.agents.routes(app)

    def samples(self) -> dict[str, int]:
        """For /metrics (`sipbridge_cluster_rooms_total{event}`): owners looked up (local,
        remote, claimed, took_over, released), Twirp calls forwarded (`forwarded`), joins
        relayed (`relayed`), INVITEs proxied and vouched for, failures."""
        out = {f"route_{k}": v for k, v in self.owners.stats.items()}
        out["forwarded"] = sum(v for k, v in self.forwarder.stats.items() if k != "failed")
        out["forward_failed"] = self.forwarder.stats["failed"]
        out.update({f"join_{k}": v for k, v in self.relay.stats.items()})
        out.update({f"invite_{k}": v for k, v in self.calls.stats.items()})
        out.update({f"agent_{k}": v for k, v in self.agents.stats.items()})
        return out

    async def stop(self) -> None:
        await self.calls.close()
        await self.agents.close()
        await self.relay.close()
        await self.forwarder.close()
        await self.owners.stop()
