"""What a node tells the others about itself every second (docs/cluster.md s2), sans-IO.

A node's heartbeat is one Redis string, `node:{id}`, written every `HEARTBEAT_S` with a TTL of
`NODE_TTL_S`: a node whose key expired is dead - found within `NODE_TTL_S` of its last beat by
any node that looks. The value is JSON (readable with `redis-cli GET`, and every field optional
when read, so that nodes of two versions can share a cluster during an upgrade).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

HEARTBEAT_S = 1.0
NODE_TTL_S = 5.0
MAX_NODE_INFO_BYTES = 4096  # a value larger than this is not a heartbeat of ours


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """One node's address, load and state, as of its last heartbeat."""

    id: str
    state: str = "serving"  # NodeState's value: serving, draining (stopped nodes leave)
    calls: int = 0  # SIP calls held, both directions
    max_calls: int = 0
    rooms: int = 0
    cpu: float = 0.0  # percent of one core the process used over the last heartbeat period
    sip: str = ""  # HOST:PORT of its SIP listener
    http: str = ""  # HOST:PORT of its API
    version: str = ""
    started_at: float = 0.0  # wall clock, seconds
    age: float = 0.0  # seconds since this was written (set by the reader, not stored)

    def to_json(self) -> bytes:
        data = asdict(self)
        del data["age"]
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, node_id: str, data: bytes, *, age: float = 0.0) -> NodeInfo:
        """The heartbeat of `node_id`; fields missing, unknown or of the wrong type are left
        at their defaults (a node of another version wrote it)."""
        try:
            raw = json.loads(data) if len(data) <= MAX_NODE_INFO_BYTES else {}
        except (ValueError, UnicodeDecodeError):
            raw = {}
        if not isinstance(raw, dict):
            raw = {}
        info = cls(id=node_id, age=max(0.0, age))
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in ("id", "age") or f.name not in raw:
                continue
            value, default = raw[f.name], getattr(info, f.name)
            if isinstance(default, float) and type(value) is int:
                value = float(value)
            if type(value) is type(default) and not (
                isinstance(value, float) and not math.isfinite(value)
            ):
                values[f.name] = value
        return replace(info, **values)

    def as_row(self) -> dict[str, Any]:
        """For `node list`: every field, CPU and age rounded for people."""
        row = asdict(self)
        row["cpu"] = round(self.cpu, 1)
        row["age"] = round(self.age, 1)
        return row


def cpu_percent(cpu_before: float, wall_before: float, cpu_now: float, wall_now: float) -> float:
    """The share of one core used between two samples of process CPU time and wall time (both
    in seconds), in percent; 0 for an empty or backward interval."""
    wall = wall_now - wall_before
    if wall <= 0:
        return 0.0
    return max(0.0, 100.0 * (cpu_now - cpu_before) / wall)
