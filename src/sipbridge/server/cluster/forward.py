"""Twirp calls for a room another node owns, handed to that node (docs/cluster.md s3).

The request is authenticated here first (a stranger learns nothing of where rooms live), then
sent whole - the same body, content type, `Authorization` and `X-Twirp-Timeout-Ms` - over HTTP
to the owner's API address from its heartbeat, with `X-Sipbridge-Hop` naming this node (signed
with the API secret: telephony/placement.py); the owner's reply, error or not, is returned as
it came. A handed request is served where it lands; an unsigned hop header is ignored.

Why HTTP and not request/reply over Redis pub/sub: the owner already serves this exact API,
so there is nothing to encode, no second dispatcher and no reply channel to clean up; the hop
costs one loopback or LAN round trip, and Redis carries no request traffic. Webhooks follow:
a room's events happen only on its owner, so only the owner sends them, once.

`CreateSIPParticipant` for a room nobody owns goes to the least-loaded serving node, which then
owns the new room. `ListRooms` asks every live node for its own rooms (in parallel, each handed
the request) and answers with all of them; a node that does not answer in time is left out.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from google.protobuf.message import DecodeError, Message
from livekit.protocol import models
from livekit.protocol import room as room_proto
from redis.exceptions import RedisError

from sipbridge.errors import ApiError
from sipbridge.server.api.auth import Claims
from sipbridge.server.api.twirp import TwirpServer, encode
from sipbridge.server.cluster.owners import RoomOwners
from sipbridge.telephony.node_info import NodeInfo
from sipbridge.telephony.placement import HOP_HEADER, sign_hop, verify_hop

log = logging.getLogger(__name__)

CLAIM, LOOKUP, PLACE = "claim", "lookup", "place"
FORWARD_TIMEOUT_S = 120.0  # unless the caller's X-Twirp-Timeout-Ms says less
LIST_TIMEOUT_S = 2.0  # a node's own rooms for ListRooms
SETTLE_S = 10.0  # a room claimed for a request and not made by then loses its key
LIST_ROOMS = "livekit.RoomService/ListRooms"
PASSED_HEADERS = ("Authorization", "Content-Type", "X-Twirp-Timeout-Ms")

# "Service/Method" -> (the request's room field, how a room with no owner is handled)
ROUTED: dict[str, tuple[str, str]] = {
    "livekit.RoomService/CreateRoom": ("name", CLAIM),
    **{
        f"livekit.RoomService/{name}": ("room", LOOKUP)
        for name in (
            "DeleteRoom",
            "ListParticipants",
            "GetParticipant",
            "RemoveParticipant",
            "UpdateParticipant",
            "MutePublishedTrack",
            "UpdateRoomMetadata",
            "SendData",
            "UpdateSubscriptions",
        )
    },
    "livekit.SIP/CreateSIPParticipant": ("room_name", PLACE),
    "livekit.SIP/TransferSIPParticipant": ("room_name", LOOKUP),
    "livekit.AgentDispatchService/CreateDispatch": ("room", CLAIM),
    "livekit.AgentDispatchService/DeleteDispatch": ("room", LOOKUP),
    "livekit.AgentDispatchService/ListDispatch": ("room", LOOKUP),
    **{
        f"livekit.Egress/{name}": ("room_name", LOOKUP)
        for name in (
            "StartRoomCompositeEgress",
            "StartParticipantEgress",
            "StartTrackCompositeEgress",
            "StartTrackEgress",
        )
    },
}


# A method routed by its own rule (egress by egress id: cluster/egress.py): (the decoded request,
# its claims, the HTTP request, its body) -> the reply, or None to serve it here.
Special = Callable[[Message, Claims, web.Request, bytes], Awaitable[web.Response | None]]


def http_address(node: NodeInfo) -> str:
    """HOST:PORT to reach a node's API: its HTTP listener, or its SIP host when the API
    listens on every address."""
    host, _, port = node.http.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = node.sip.rpartition(":")[0] or "127.0.0.1"
    return f"{host}:{port}"


class TwirpForwarder:
    """`TwirpServer.router`: hands room requests to the room's owner."""

    def __init__(self, owners: RoomOwners, twirp: TwirpServer) -> None:
        self.owners = owners
        self.twirp = twirp
        self.secrets = list(twirp.keys.values())
        self.stats: Counter[str] = Counter()  # forwarded, by "Service/Method"; failed
        self.special: dict[str, Special] = {}  # "Service/Method" -> its own router
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __call__(
        self, route: str, message: Message, claims: Claims, request: web.Request, body: bytes
    ) -> web.Response | None:
        if not self.owners.clustered or self.handed(request):
            return None
        if route == LIST_ROOMS:
            assert isinstance(message, room_proto.ListRoomsRequest)
            return await self.list_rooms(message, claims, request)
        if route in self.special:
            return await self.special[route](message, claims, request, body)
        spec = ROUTED.get(route)
        if spec is None:
            return None
        field, mode = spec
        room = getattr(message, field, "")
        if not isinstance(room, str) or not room:
            return None
        if mode == PLACE:
            where = await self.owners.place(room)
        else:
            where = await self.owners.route(room, claim=mode == CLAIM)
        if where.local or where.node is None:
            if where.claimed:  # a request refused before it made its room leaves no key
                asyncio.get_running_loop().call_later(SETTLE_S, self.owners.settle, room)
            return None
        return await self.forward(route, where.node, request, body)

    def handed(self, request: web.Request) -> bool:
        """Whether another node of ours handed this request on (then it is served here)."""
        return verify_hop(self.secrets, request.path, request.headers.get(HOP_HEADER)) is not None

    def hop(self, path: str) -> str:
        return sign_hop(self.secrets[0], self.owners.node_id, path)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        return self._session

    async def list_rooms(
        self, req: room_proto.ListRoomsRequest, claims: Claims, request: web.Request
    ) -> web.Response:
        """Every live node's rooms: this node's own and the others', asked in parallel."""
        mine = await self.twirp.methods[LIST_ROOMS].handler(req, claims)
        assert isinstance(mine, room_proto.ListRoomsResponse)
        nodes = await self.others()
        replies = await asyncio.gather(*(self._rooms_of(n, req, request) for n in nodes))
        seen = {room.name for room in mine.rooms}
        for rooms in replies:
            for room in rooms:
                if room.name not in seen:
                    seen.add(room.name)
                    mine.rooms.append(room)
        self.stats[LIST_ROOMS] += len(nodes)
        return encode(mine, request.content_type.lower())

    async def _rooms_of(
        self, node: NodeInfo, req: room_proto.ListRoomsRequest, request: web.Request
    ) -> list[models.Room]:
        reply = await self.ask(node, req, request, LIST_TIMEOUT_S)
        if reply is None:
            return []
        if reply[0] != 200:
            self.stats["failed"] += 1
            log.info("ListRooms: node %s answered %d", node.id, reply[0])
            return []
        try:
            return list(room_proto.ListRoomsResponse.FromString(reply[1]).rooms)
        except DecodeError:
            self.stats["failed"] += 1
            return []

    async def others(self) -> list[NodeInfo]:
        """The other live nodes (none when Redis does not answer)."""
        try:
            return [n for n in await self.owners.live_nodes() if n.id != self.owners.node_id]
        except (RedisError, OSError, TimeoutError):
            return []

    async def ask(
        self,
        node: NodeInfo,
        req: Message | bytes,
        request: web.Request,
        wait_s: float,
    ) -> tuple[int, bytes, str] | None:
        """`req` handed to `node` on the path of `request`, with its credentials - a message
        as protobuf, or bytes as they came (in the request's content type): (HTTP status,
        body, content type), or None when the node did not answer in `wait_s`."""
        if isinstance(req, bytes):
            data, content_type = req, request.headers.get("Content-Type", "")
        else:
            data, content_type = req.SerializeToString(), "application/protobuf"
        headers = {
            HOP_HEADER: self.hop(request.path),
            "Content-Type": content_type,
            "Authorization": request.headers.get("Authorization", ""),
        }
        url = f"http://{http_address(node)}{request.path}"
        try:
            async with self._client().post(
                url, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=wait_s)
            ) as reply:
                return reply.status, await reply.read(), reply.headers.get("Content-Type", "")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.stats["failed"] += 1
            log.info("%s: node %s left out: %s", request.path, node.id, exc)
            return None

    async def forward(
        self, route: str, node: NodeInfo, request: web.Request, body: bytes
    ) -> web.Response:
        headers = {
            name: request.headers[name] for name in PASSED_HEADERS if name in request.headers
        }
        headers[HOP_HEADER] = self.hop(request.path)
        url = f"http://{http_address(node)}{request.path}"
        try:
            async with self._client().post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S),
            ) as reply:
                payload = await reply.read()
                self.stats[route] += 1
                return web.Response(
                    status=reply.status,
                    body=payload,
                    headers={"Content-Type": reply.headers.get("Content-Type", "")},
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.stats["failed"] += 1
            log.info("%s to node %s failed: %s", route, node.id, exc)
            raise ApiError("unavailable", f"the room's node {node.id} did not answer") from None
