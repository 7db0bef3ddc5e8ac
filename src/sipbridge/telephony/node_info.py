"""What a node tells the others about itself every second (docs/cluster.md s2), sans-IO.

A node's heartbeat is one Redis string, `node:{id}`, written every `HEARTBEAT_S` with a TTL of
`NODE_TTL_S`: a node whose key expired is dead - found within `NODE_TTL_S` of its last beat by
any node that looks. The value is JSON (readable with `redis-cli GET`, and every field optional
when read, so that nodes of two versions can share a cluster during an upgrade).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

HEARTBEAT_S = 1.0
NODE_TTL_S = 5.0
MAX_NODE_INFO_BYTES = 4096  # a value larger than this is not a heartbeat of ours
MAX_AGENT_NAMES = 32  # agent names a heartbeat advertises (the least loaded first)
MAX_AGENT_NAME = 64  # characters; a longer name is not advertised (its node is still asked)

Agents = tuple[tuple[str, float], ...]  # (agent name, lowest load of its available workers)


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
    agents: Agents = ()  # its available agent workers: each name's least load (advertise())
    age: float = 0.0  # seconds since this was written (set by the reader, not stored)

    def to_json(self) -> bytes:
        data = asdict(self)
        del data["age"]
        data["agents"] = dict(self.agents)
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
            if f.name == "agents":
                values["agents"] = _agents(raw["agents"])
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
        row["agents"] = dict(self.agents)
        return row

    def agent_load(self, name: str) -> float | None:
        """The least load of its available workers of agent `name`; None when it has none."""
        return next((load for agent, load in self.agents if agent == name), None)


def advertise(workers: Iterable[tuple[str, float]]) -> Agents:
    """What a heartbeat says of a node's available workers, given (agent name, load) of each:
    each name once, with its least load, the least loaded names first (MAX_AGENT_NAMES)."""
    best: dict[str, float] = {}
    for name, load in workers:
        if len(name) <= MAX_AGENT_NAME and math.isfinite(load):
            best[name] = min(load, best.get(name, load))
    return tuple(sorted(best.items(), key=lambda item: (item[1], item[0]))[:MAX_AGENT_NAMES])


def _agents(value: Any) -> Agents:
    """A heartbeat's `agents` ({name: load}) as written; entries of the wrong type left out."""
    if not isinstance(value, dict):
        return ()
    return advertise(
        (name, float(load))
        for name, load in list(value.items())[:MAX_AGENT_NAMES]
        if isinstance(name, str) and type(load) in (int, float)
    )


def cpu_percent(cpu_before: float, wall_before: float, cpu_now: float, wall_now: float) -> float:
    """The share of one core used between two samples of process CPU time and wall time (both
    in seconds), in percent; 0 for an empty or backward interval."""
    wall = wall_now - wall_before
    if wall <= 0:
        return 0.0
    return max(0.0, 100.0 * (cpu_now - cpu_before) / wall)
