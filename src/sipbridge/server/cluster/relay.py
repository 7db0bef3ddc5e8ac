"""A WebSocket join (`/rtc`, `/rtc/v1`) that lands on a node that does not own its room, relayed
to the owner (docs/cluster.md s3): LiveKit's "signal relay", as a WebSocket proxy.

The token is checked here (an unauthorised join is refused by this node, as on one node); the
room's owner is found, or this node claims a room nobody owns. A join for a room another live
node owns is opened there - the same path and query (token, join request), the same
`Authorization`, `X-Sipbridge-Hop` naming this node (signed) - and every message is passed both
ways unchanged until either side closes. The owner's offers, answers and trickled candidates name
its own ICE addresses, so media flows between the client and the owner directly: this node
carries signalling only, a few messages a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.typedefs import Handler

from sipbridge.errors import ApiError
from sipbridge.server.cluster.forward import http_address
from sipbridge.server.cluster.owners import RoomOwners
from sipbridge.server.rtc.join import authorize
from sipbridge.server.rtc.signal import MAX_SIGNAL_MESSAGE
from sipbridge.telephony.node_info import NodeInfo
from sipbridge.telephony.placement import HOP_HEADER, sign_hop, verify_hop

log = logging.getLogger(__name__)

RTC_PATHS = ("/rtc", "/rtc/v1")
CONNECT_TIMEOUT_S = 5.0


class SignalRelay:
    def __init__(self, owners: RoomOwners, keys: dict[str, str]) -> None:
        self.owners = owners
        self.keys = keys
        self.stats: Counter[str] = Counter()  # relayed, refused, failed
        self.relays: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            request.path.rstrip("/") not in RTC_PATHS
            or not self.owners.clustered
            or verify_hop(self.keys.values(), request.path, request.headers.get(HOP_HEADER))
            or request.headers.get("Upgrade", "").lower() != "websocket"
        ):
            return await handler(request)
        try:
            claims, _ = authorize(request, self.keys)
        except ApiError:
            return await handler(request)  # refused there, with its reason
        try:
            where = await self.owners.route(claims.room, claim=True)
        except ApiError as err:
            self.stats["refused"] += 1
            return web.Response(status=err.http_status, text=err.message)
        if where.local or where.node is None:
            try:
                return await handler(request)
            finally:
                if where.claimed:  # a join refused before it made its room leaves no key
                    self.owners.settle(claims.room)
        return await self.relay(request, where.node)

    async def close(self) -> None:
        for task in list(self.relays):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def relay(self, request: web.Request, node: NodeInfo) -> web.StreamResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        secret = next(iter(self.keys.values()))
        headers = {HOP_HEADER: sign_hop(secret, self.owners.node_id, request.path)}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        url = f"ws://{http_address(node)}{request.path_qs}"
        try:
            upstream = await self._session.ws_connect(
                url,
                headers=headers,
                max_msg_size=MAX_SIGNAL_MESSAGE,
                autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CONNECT_TIMEOUT_S),
            )
        except aiohttp.WSServerHandshakeError as exc:
            self.stats["refused"] += 1
            return web.Response(status=exc.status, text=exc.message)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.stats["failed"] += 1
            log.info("join relay to node %s failed: %s", node.id, exc)
            return web.Response(status=503, text=f"the room's node {node.id} did not answer")
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=MAX_SIGNAL_MESSAGE)
        await ws.prepare(request)
        self.stats["relayed"] += 1
        task = asyncio.current_task()
        assert task is not None
        self.relays.add(task)
        try:
            down = asyncio.create_task(_pump(upstream, ws), name="relay down")
            up = asyncio.create_task(_pump(ws, upstream), name="relay up")
            try:
                await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in (down, up):
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pump
        finally:
            self.relays.discard(task)
            await upstream.close()
            await ws.close()
        return ws


async def _pump(
    source: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
    sink: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
) -> None:
    async for msg in source:
        if msg.type == WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type == WSMsgType.TEXT:
            await sink.send_str(msg.data)
        else:
            break
