"""Where a room lives in a cluster, and where a new call goes (docs/cluster.md s3-s4), sans-IO.

Each room has one owner, the node named by `room:{name}` in Redis. One Lua script
(`store/redis_rooms.py`) reads that key and the owner's heartbeat at one instant and, when asked
to claim, makes this node the owner if the room has none or its owner's heartbeat expired (a
compare-and-set against the dead owner). Its reply is read here into a `RoomRoute`: serve here,
or send to a live node (whose heartbeat gives its addresses).

A new room with no owner is placed by load: `least_loaded` takes LiveKit's SIP affinity,
`1 - calls/max_calls`, among serving nodes under the CPU ceiling.

A request one node hands to another carries `HOP_HEADER`: the sender's node id, signed with the
cluster's API secret over the request's path (`sign_hop` / `verify_hop`). A handed request is
served where it lands, never handed on, so that two nodes that disagree for a moment cannot
bounce a request between them; a header that does not verify (a client's) is ignored, so no
client can make a node serve a room another node owns.

An INVITE one node proxies to a room's owner carries `PROXIED_HEADER`: the caller's address
(host, port and transport), the trunk the first node matched and authenticated, signed with the
cluster's API secret over every field (`sign_proxied` / `verify_proxied`), so the owner matches
the call as if it had come to it directly, does not challenge again a caller the first node
authenticated, and sends its own requests of the call straight to the caller.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from sipbridge.telephony.node_info import NodeInfo

HOP_HEADER = "X-Sipbridge-Hop"
PROXIED_HEADER = "X-Sipbridge-Proxied"
CPU_CEILING = 90.0  # percent of one core: above it a node takes no new room (LiveKit: 429)
MAX_PROXIED_HEADER = 512


@dataclass(frozen=True, slots=True)
class RoomRoute:
    """Where requests for one room go: `local` (this node owns it, or nobody does and this
    node did not claim it), else `node`, the live owner. `claimed`: this node became the owner
    by this lookup; `took_over`: from a dead node."""

    owner: str  # "" when the room has no owner
    local: bool
    node: NodeInfo | None = None
    claimed: bool = False
    took_over: bool = False


def route_from_reply(me: str, reply: list[bytes | str | int | None]) -> RoomRoute:
    """The claim script's reply: [owner, owner's heartbeat or "", claimed 0/1, took over 0/1]."""
    owner = _text(reply[0]) if reply else ""
    record = reply[1] if len(reply) > 1 else b""
    claimed = len(reply) > 2 and _flag(reply[2])
    took_over = len(reply) > 3 and _flag(reply[3])
    if not owner or owner == me:
        return RoomRoute(owner=owner, local=True, claimed=claimed, took_over=took_over)
    data = record.encode() if isinstance(record, str) else record
    if not isinstance(data, bytes) or not data:
        # The owner's heartbeat is gone and we did not claim (a lookup): nobody serves it.
        return RoomRoute(owner="", local=True)
    return RoomRoute(owner=owner, local=False, node=NodeInfo.from_json(owner, data))


def _text(value: bytes | str | int | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else ""


def _flag(value: bytes | str | int | None) -> bool:
    return value in (1, b"1", "1")


def affinity(node: NodeInfo) -> float:
    """LiveKit's SIP affinity: the share of a node's call capacity still free (1 with no
    limit and no calls; an unlimited node loses a little per call, so load still spreads)."""
    if node.max_calls > 0:
        return 1.0 - node.calls / node.max_calls
    return 1.0 / (1.0 + node.calls)


def least_loaded(
    nodes: Iterable[NodeInfo], *, cpu_ceiling: float = CPU_CEILING, prefer: str = ""
) -> NodeInfo | None:
    """The serving node with the most free capacity, CPU under the ceiling and a free call slot;
    ties go to `prefer` (this node: no hop), then by id. None when no node may take a call."""
    best: tuple[float, int, str] | None = None
    chosen = None
    for node in nodes:
        if node.state != "serving" or node.cpu >= cpu_ceiling:
            continue
        if node.max_calls > 0 and node.calls >= node.max_calls:
            continue
        key = (affinity(node), 1 if node.id == prefer else 0, node.id)
        if best is None or key[:2] > best[:2] or (key[:2] == best[:2] and key[2] < best[2]):
            best, chosen = key, node
    return chosen


def workers_elsewhere(
    nodes: Iterable[NodeInfo], agent_name: str, *, below: float | None, me: str
) -> list[NodeInfo]:
    """The other serving nodes whose heartbeat advertises an available worker of `agent_name`
    less loaded than `below` (this node's least loaded one; None: it has none), the least
    loaded worker first, then the node with the most free capacity."""
    found = []
    for node in nodes:
        load = node.agent_load(agent_name)
        if node.id == me or node.state != "serving" or load is None:
            continue
        if below is None or load < below:
            found.append((load, -affinity(node), node.id, node))
    return [node for *_, node in sorted(found, key=lambda item: item[:3])]


# -- an INVITE proxied to the room's owner -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proxied:
    """What the node that proxied an INVITE vouches for: where the caller is, the trunk it
    matched and authenticated ("" when no trunk), and which node it is."""

    source: str  # the caller's IP address, as the first node saw it
    trunk: str
    node: str
    transport: str = ""  # the caller's: the owner's Contact names it (tls) when it can
    port: int = 0  # the caller's source port, as the first node saw it (0: not said)


def _mac(secret: str, call_id: str, fields: str) -> str:
    message = f"{call_id}\n{fields}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def sign_proxied(secret: str, call_id: str, proxied: Proxied) -> str:
    """The `X-Sipbridge-Proxied` value for an INVITE of `call_id`."""
    fields = f"source={proxied.source};trunk={proxied.trunk};node={proxied.node}"
    if proxied.transport:
        fields += f";transport={proxied.transport}"
    if proxied.port:
        fields += f";port={proxied.port}"
    return f"{fields};sig={_mac(secret, call_id, fields)}"


def verify_proxied(secrets: Iterable[str], call_id: str, value: str) -> Proxied | None:
    """The vouched-for facts of a signed header, or None when it is malformed or its signature
    is not one of ours (then the INVITE is treated as any other, from where it came)."""
    if len(value) > MAX_PROXIED_HEADER:
        return None
    fields, sep, sig = value.strip().rpartition(";sig=")
    if not sep:
        return None
    params: dict[str, str] = {}
    for part in fields.split(";"):
        name, eq, val = part.partition("=")
        if not eq or name in params:
            return None
        params[name] = val
    if set(params) - {"transport", "port"} != {"source", "trunk", "node"}:
        return None
    port = params.get("port", "0")
    if not port.isdigit() or len(port) > 5 or int(port) > 65535:
        return None
    if not any(hmac.compare_digest(_mac(s, call_id, fields), sig) for s in secrets):
        return None
    return Proxied(
        source=params["source"],
        trunk=params["trunk"],
        node=params["node"],
        transport=params.get("transport", ""),
        port=int(port),
    )


# -- a request handed to another node --------------------------------------------------------------


def sign_hop(secret: str, node: str, path: str) -> str:
    """The `X-Sipbridge-Hop` value for a request to `path` handed on by `node`."""
    return f"{node};sig={_mac(secret, path, f'hop={node}')}"


def verify_hop(secrets: Iterable[str], path: str, value: str | None) -> str | None:
    """The node that handed on a request to `path`, or None when the header is absent,
    malformed or not signed with one of our secrets."""
    if not value or len(value) > MAX_PROXIED_HEADER:
        return None
    node, sep, sig = value.strip().rpartition(";sig=")
    if not sep or not node:
        return None
    if not any(hmac.compare_digest(_mac(s, path, f"hop={node}"), sig) for s in secrets):
        return None
    return node
