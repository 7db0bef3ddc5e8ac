"""INVITEs for a room another node owns, proxied to that node (docs/cluster.md s4).

The inbound runner matches trunk and rule here (caches, no Redis), which names the room, then
asks `route`: a room held here is served at once; otherwise the room's owner is read from Redis
(or this node claims a room nobody owns) and the call is served here or its INVITE proxied to
the owner's SIP address - a stateful proxy of that one transaction, our Via on top, no
Record-Route (sip/ua/proxy.py): the owner answers with its own Contact and SDP, so the dialog and
its media live on the owner, and the owner's own requests of the dialog go straight to the
caller (below), so that this node's death costs no call the owner holds. The hop is TCP when
the caller's INVITE came over TCP or TLS (a large INVITE stays off UDP, s18.1.1), else UDP.
While the owner has not answered finally, its heartbeat is looked at every second (one Redis
read for all such INVITEs): an owner whose heartbeat expired gets the caller 503 with
Retry-After at once, not 408 after Timer B. A caller that sends the ACK or BYE of a proxied call
here instead of to the owner's Contact is sent on to the owner (sip/ua/proxy.py:
`ProxiedCalls`), as is what an owner without the caller's address sends here (the fallback).

The proxied INVITE carries `X-Sipbridge-Proxied` signed with the cluster's API secret: the
caller's address (host and port) as this node saw it, the trunk this node matched and
authenticated, and the caller's transport. The owner matches the call against that address
instead of ours and does not challenge again; it sends its BYE, re-INVITEs, UPDATEs and NOTIFYs
to that address (UDP) or to the caller's Contact port (TCP, TLS: `caller_target`), not here;
for a TLS caller its Contact names its own TLS listener (when it has one), so that the caller's
later requests to it stay on TLS although the hop was TCP; a signed INVITE is served where it
lands, never proxied on. An unsigned or badly signed header is ignored: the INVITE is treated
as any other, from where it came.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from redis.exceptions import RedisError

from sipbridge.errors import ApiError
from sipbridge.server.cluster.owners import RoomOwners
from sipbridge.server.loop_calls import stop_task
from sipbridge.server.sip.user_agent import IncomingCall, InviteHandler, SipUserAgent
from sipbridge.sip.endpoint import Peer
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.ua.proxy import ProxiedInvite, caller_target, forwarded_invite
from sipbridge.telephony.node_info import HEARTBEAT_S
from sipbridge.telephony.placement import (
    PROXIED_HEADER,
    Proxied,
    sign_proxied,
    verify_proxied,
)

log = logging.getLogger(__name__)


class CallRouter:
    def __init__(self, owners: RoomOwners, ua: SipUserAgent, keys: dict[str, str]) -> None:
        self.owners = owners
        self.ua = ua
        self.secrets = list(keys.values())
        self.stats: Counter[str] = Counter()  # proxied, vouched, forged, failed, owner_gone
        self._tasks: set[asyncio.Task[None]] = set()
        self.waiting: dict[ProxiedInvite, str] = {}  # proxied INVITEs not answered -> owner
        self._watch: asyncio.Task[None] | None = None

    def vouching(self, handler: InviteHandler) -> InviteHandler:
        """`handler` for new INVITEs, told first what a node that proxied one vouches for."""

        def on_invite(call: IncomingCall) -> None:
            value = call.request.headers.get(PROXIED_HEADER)
            if value is not None:
                vouched = verify_proxied(self.secrets, call.request.call_id, value)
                if vouched is None:
                    self.stats["forged"] += 1
                    call.request.headers.remove(PROXIED_HEADER)
                else:
                    self.stats["vouched"] += 1
                    call.vouched_source, call.vouched_trunk = vouched.source, vouched.trunk
                    if vouched.transport == "tls" and self.ua.listens("tls"):
                        call.session.contact_transport = "tls"  # the caller stays on TLS
                    # our own requests of the call go to the caller, not back through the
                    # node that proxied it (which may be gone by then)
                    call.session.target = caller_target(
                        call.request, vouched.transport, vouched.source, vouched.port
                    )
            handler(call)

        return on_invite

    def route(self, call: IncomingCall, room: str, trunk_id: str, here: Callable[[], None]) -> bool:
        """`CallServices.route_call`: False to serve the call here now; True when decided later
        (`here()` then, or the INVITE proxied)."""
        if (
            not self.owners.clustered
            or call.vouched_trunk is not None  # proxied to us: ours to serve
            or self.owners.runtime.registry.find(room) is not None
        ):
            return False
        task = asyncio.create_task(self._route(call, room, trunk_id, here))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _route(
        self, call: IncomingCall, room: str, trunk_id: str, here: Callable[[], None]
    ) -> None:
        try:
            where = await self.owners.route(room, claim=True)
        except ApiError as err:
            log.info("INVITE %s: %s", call.request.call_id, err.message)
            self.stats["failed"] += 1
            if not call.ended:
                call.reject(503, "Service Unavailable", {"Retry-After": "2"})
            return
        if call.ended:  # cancelled meanwhile
            return
        if where.local or where.node is None:
            try:
                here()
            except SipProtocolError as err:
                if not call.ended and not call.answered:
                    call.reject(err.status, err.reason)
            except Exception:
                log.exception("INVITE %s: setting up the call failed", call.request.call_id)
                if not call.ended and not call.answered:
                    call.reject(500, "Server Internal Error")
            if where.claimed:  # refused before its room was made: no key left behind
                self.owners.settle(room)
            return
        host, _, port = where.node.sip.rpartition(":")
        if not host or not port.isdigit():
            self.stats["failed"] += 1
            call.reject(503, "Service Unavailable", {"Retry-After": "2"})
            return
        hop = "tcp" if call.peer.transport in ("tcp", "tls") else "udp"
        target = Peer(hop, host.strip("[]"), int(port))
        facts = Proxied(
            source=call.peer.host,
            trunk=trunk_id,
            node=self.owners.node_id,
            transport=call.peer.transport,
            port=call.peer.port,
        )
        header = sign_proxied(self.secrets[0], call.request.call_id, facts)
        forwarded = forwarded_invite(call.request, self.ua.via(target), [(PROXIED_HEADER, header)])
        self.stats["proxied"] += 1
        log.info("INVITE %s: proxied to node %s (room %s)", call.request.call_id, where.owner, room)
        self.waiting[self.ua.proxy(call, forwarded, target)] = where.owner
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watching(), name="proxied INVITEs")

    async def _watching(self) -> None:
        """Every second while proxied INVITEs wait for their owners' final answers: those whose
        owner's heartbeat expired are answered 503 with Retry-After now."""
        while self.waiting:
            await asyncio.sleep(HEARTBEAT_S)
            for proxied in [p for p in self.waiting if p.final]:
                del self.waiting[proxied]
            if not self.waiting:
                break
            try:
                live = {n.id for n in await self.owners.live_nodes()}
            except (RedisError, OSError, TimeoutError):
                continue  # (not knowing is no reason to give up on a call)
            for proxied, owner in list(self.waiting.items()):
                if owner not in live and not proxied.final:
                    del self.waiting[proxied]
                    self.stats["owner_gone"] += 1
                    log.info("INVITE proxied to node %s: the node is gone, 503", owner)
                    self.ua.give_up(proxied)

    async def close(self) -> None:
        if self._watch is not None:
            await stop_task(self._watch)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
