"""The Egress API on any node (docs/cluster.md s3): recordings are made by the node that owns
the room, and reached from every node.

- The starts (StartRoomCompositeEgress, StartParticipantEgress, StartTrackEgress) name a room:
  forward.py hands them to the room's owner like any room request.
- ListEgress asks every live node for its own recordings (in parallel, each handed the request,
  2 s each) and answers with all of them, this node's first; a node that does not answer in
  time is left out.
- StopEgress, UpdateLayout and UpdateStream name an egress: served here when this node holds it;
  else handed to the node that recorded it - named in the egress's stored record
  (`rec:egress`, written by `recording/records.py` on every status change) when that node is
  alive - or, when the record is not written yet or names a node that is gone, to every live
  node at once: the one that holds it answers, the others say `not_found`. Nobody holds it:
  served here (`not_found`, or the stored record's state for an egress of a dead node).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from google.protobuf.message import DecodeError, Message
from livekit.protocol import egress as proto
from redis.exceptions import RedisError

from sipbridge.server.api.auth import Claims
from sipbridge.server.api.twirp import encode
from sipbridge.server.cluster.forward import LIST_TIMEOUT_S, Special, TwirpForwarder
from sipbridge.server.recording.records import KIND
from sipbridge.server.recording.records import decode as decode_record
from sipbridge.server.recording.service import SERVICE, EgressService
from sipbridge.telephony.node_info import NodeInfo

log = logging.getLogger(__name__)

LIST = f"{SERVICE}/ListEgress"
BY_EGRESS_ID = tuple(f"{SERVICE}/{name}" for name in ("StopEgress", "UpdateLayout", "UpdateStream"))
ASK_TIMEOUT_S = 5.0  # a node asked whether it holds an egress
RECORD_WAIT_S = 2.0


class EgressRouter:
    def __init__(self, forwarder: TwirpForwarder, egress: EgressService) -> None:
        self.forwarder = forwarder
        self.egress = egress
        forwarder.special[LIST] = self.list_egress
        for route in BY_EGRESS_ID:
            forwarder.special[route] = self._by_egress_id(route)

    async def list_egress(
        self, message: Message, claims: Claims, request: web.Request, _: bytes
    ) -> web.Response:
        """Every live node's recordings, this node's first."""
        assert isinstance(message, proto.ListEgressRequest)
        mine = await self.egress.list_egress(message, claims)
        nodes = await self.forwarder.others()
        replies = await asyncio.gather(
            *(self.forwarder.ask(n, message, request, LIST_TIMEOUT_S) for n in nodes)
        )
        seen = {info.egress_id for info in mine.items}
        for node, reply in zip(nodes, replies, strict=True):
            if reply is None:
                continue
            status, payload = reply[0], reply[1]
            try:
                if status != 200:
                    raise DecodeError(f"status {status}")
                items = proto.ListEgressResponse.FromString(payload).items
            except DecodeError as exc:
                self.forwarder.stats["failed"] += 1
                log.info("ListEgress: node %s left out: %s", node.id, exc)
                continue
            for info in items:
                if info.egress_id not in seen:
                    seen.add(info.egress_id)
                    mine.items.append(info)
        self.forwarder.stats[LIST] += len(nodes)
        return encode(mine, request.content_type.lower())

    def _by_egress_id(self, route: str) -> Special:
        async def routed(
            message: Message, _: Claims, request: web.Request, body: bytes
        ) -> web.Response | None:
            egress_id = getattr(message, "egress_id", "")
            if not egress_id or egress_id in self.egress.egresses:
                return None  # (an egress held here, or one no node can hold)
            nodes = await self.forwarder.others()
            recorder = await self._recorder(egress_id)
            named = next((n for n in nodes if n.id == recorder), None)
            if named is not None:
                return await self.forwarder.forward(route, named, request, body)
            return await self._ask_all(route, nodes, request, body)

        return routed

    async def _recorder(self, egress_id: str) -> str:
        """The node named in the egress's stored record ("" when there is none yet)."""
        records = self.egress.records
        if records is None:
            return ""
        try:
            async with asyncio.timeout(RECORD_WAIT_S):
                record = await records.store.get(KIND, egress_id)
            return decode_record(record.data)[1] if record is not None else ""
        except (RedisError, OSError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            log.info("egress %s: its record could not be read: %s", egress_id, exc)
            return ""

    async def _ask_all(
        self, route: str, nodes: list[NodeInfo], request: web.Request, body: bytes
    ) -> web.Response | None:
        """The reply of the node that holds the egress (every other says not_found), as it
        came; None when no node holds it."""
        asks = [
            asyncio.create_task(self.forwarder.ask(n, body, request, ASK_TIMEOUT_S)) for n in nodes
        ]
        try:
            for done in asyncio.as_completed(asks):
                reply = await done
                if reply is not None and reply[0] != 404:
                    status, payload, content_type = reply
                    self.forwarder.stats[route] += 1
                    return web.Response(
                        status=status, body=payload, headers={"Content-Type": content_type}
                    )
        finally:
            for task in asks:
                task.cancel()
        return None
