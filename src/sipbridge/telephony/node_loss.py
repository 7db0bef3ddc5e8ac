"""A call whose node died (docs/cluster.md, failure cases), sans-IO: which calls a node must
list as its own, and the call-log record another node writes for a call lost with its node.

A node lists a call in `node:{id}:calls` from its first record until its record says it ended;
a node that finds another dead (heartbeat expired) rewrites each listed call that had not ended
as ended now, in error, by node loss - its media and its SIP dialog died with the process.
"""

from __future__ import annotations

from livekit.protocol import models
from livekit.protocol import sip as proto

ENDED = (proto.SIPCallStatus.SCS_DISCONNECTED, proto.SIPCallStatus.SCS_ERROR)
# The nearest LiveKit reason: the server that held the participant went away.
NODE_LOST_REASON = models.DisconnectReason.SERVER_SHUTDOWN


def has_ended(info: proto.SIPCallInfo) -> bool:
    return info.call_status in ENDED or info.ended_at_ns > 0


def node_lost_error(node_id: str) -> str:
    return f"node lost: {node_id} stopped (its heartbeat expired)"


def ended_by_node_loss(data: bytes, node_id: str, now_ns: int) -> bytes | None:
    """The record of a call held by dead `node_id`, ended at `now_ns` by node loss; None when
    the stored record already ended (or is not a call record we can read)."""
    try:
        info = proto.SIPCallInfo.FromString(data)
    except Exception:  # protobuf's DecodeError and friends: not ours to rewrite
        return None
    if has_ended(info):
        return None
    info.call_status = proto.SIPCallStatus.SCS_ERROR
    info.error = node_lost_error(node_id)
    info.disconnect_reason = NODE_LOST_REASON
    info.ended_at = now_ns // 1_000_000_000
    info.ended_at_ns = now_ns
    return info.SerializeToString(deterministic=True)
