"""The nodes of the cluster over HTTP: `GET /sipbridge/v1/nodes` (JSON), for `sipbridge node
list`. A plain GET beside the trace API (`trace_api.py`) for the same reasons: no protobuf of
LiveKit's carries it. Authentication as the rest of the API: a LiveKit JWT as `Authorization:
Bearer`, with the `sip.admin` grant (the answer names every node's addresses). With Redis, every
live node (any node answers for all); without, this one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from sipbridge.errors import ApiError
from sipbridge.server.api.auth import bearer_token, sign_token, verify_token
from sipbridge.server.api.twirp import error_response
from sipbridge.telephony.node_info import NodeInfo

PATH = "/sipbridge/v1/nodes"


class NodeApi:
    def __init__(
        self, nodes: Callable[[], Awaitable[list[NodeInfo]]], keys: Mapping[str, str]
    ) -> None:
        self.nodes = nodes
        self.keys = keys

    def routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.list)

    async def list(self, request: web.Request) -> web.Response:
        try:
            claims = verify_token(bearer_token(request.headers.get("Authorization")), self.keys)
            if not claims.sip_grant("admin"):
                raise ApiError("permission_denied", "requires the sip.admin grant")
            try:
                nodes = await self.nodes()
            except (RedisError, OSError) as exc:
                raise ApiError("unavailable", f"cannot read the nodes from Redis: {exc}") from None
        except ApiError as err:
            return error_response(err)
        return web.json_response({"nodes": [n.as_row() for n in nodes]})


class NodeRequestError(Exception):
    """The server refused the request; the message says why (its code and text)."""


async def fetch_nodes(url: str, api_key: str, api_secret: str) -> list[dict[str, Any]]:
    """The node list of a server, as `sipbridge node list` asks for it."""
    import aiohttp  # noqa: PLC0415 - the server side needs only aiohttp.web

    base = url.rstrip("/")
    for ws, http in (("ws://", "http://"), ("wss://", "https://")):
        if base.startswith(ws):
            base = http + base[len(ws) :]
    token = sign_token(api_key, api_secret, ttl_s=60, sip={"admin": True})
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(base + PATH, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        body = await response.read()
        if response.status == 200:
            nodes: list[dict[str, Any]] = json.loads(body)["nodes"]
            return nodes
    try:
        error = json.loads(body)
        reason = f"{error['code']}: {error['msg']}"
    except (ValueError, KeyError, TypeError):
        reason = f"HTTP {response.status}: {body[:200].decode('utf-8', 'replace')}"
    raise NodeRequestError(reason)
