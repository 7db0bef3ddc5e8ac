"""The node heartbeat (docs/cluster.md s2), the asyncio side: every second this node's load -
calls, rooms, CPU over the last second, state - is sampled and, with Redis, written to
`node:{id}` (`store/redis_nodes.py`) with a 5 s TTL. Without Redis there is one node, this one,
and the sample is what `node list` shows.

A Redis that does not answer costs a warning (once per outage), never the node: the next beat
tries again, and other nodes count us dead only if no beat lands for 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import replace

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sipbridge.store.redis_nodes import RedisNodes
from sipbridge.telephony.node_info import HEARTBEAT_S, NODE_TTL_S, NodeInfo, cpu_percent

log = logging.getLogger(__name__)

STOP_WAIT_S = 2.0  # a beat under way when the node stops may take this long
Load = Callable[[NodeInfo], NodeInfo]  # this node's record with its current load filled in


def redis_nodes(client: aioredis.Redis, prefix: str) -> RedisNodes:
    """The cluster's nodes in Redis, their beats kept for `NODE_TTL_S`."""
    return RedisNodes(client, prefix, ttl_ms=int(NODE_TTL_S * 1000))


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Heartbeat:
    """Samples this node's load every `HEARTBEAT_S` and, given `nodes`, publishes it."""

    def __init__(self, info: NodeInfo, load: Load, nodes: RedisNodes | None = None) -> None:
        self.current = info  # the last sample
        self.load = load
        self.nodes = nodes
        self.beats = 0  # written to Redis
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._failing = False
        self._stopping = False
        self._cpu = (process_cpu_seconds(), time.monotonic())

    @property
    def node_id(self) -> str:
        return self.current.id

    async def start(self) -> None:
        """The first beat now (a node is listed as soon as it serves), then one a second."""
        await self._beat()
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    def beat_now(self) -> None:
        """Beat without waiting for the second to end (the node's state changed)."""
        self._wake.set()

    async def stop(self) -> None:
        """End the beats (a beat under way may finish: a cancelled Redis call may swallow the
        cancellation), then leave the node list."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            _, pending = await asyncio.wait({self._task}, timeout=STOP_WAIT_S)
            if pending:
                self._task.cancel()
            self._task = None
        if self.nodes is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.nodes.leave(self.node_id)

    async def list(self) -> list[NodeInfo]:
        """Every live node (with Redis), else this one, sampled now but for its CPU."""
        if self.nodes is not None:
            return [
                NodeInfo.from_json(node_id, record, age=age)
                for node_id, record, age in await self.nodes.list()
            ]
        return [replace(self.load(self.current), age=0.0)]

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_S):
                    await self._wake.wait()
            self._wake.clear()
            if not self._stopping:
                await self._beat()

    def sample(self) -> NodeInfo:
        cpu_then, wall_then = self._cpu
        self._cpu = cpu_now, wall_now = process_cpu_seconds(), time.monotonic()
        if wall_now - wall_then >= HEARTBEAT_S / 2:  # an early beat keeps the last figure
            cpu = cpu_percent(cpu_then, wall_then, cpu_now, wall_now)
        else:
            self._cpu = (cpu_then, wall_then)
            cpu = self.current.cpu
        self.current = replace(self.load(self.current), cpu=cpu)
        return self.current

    async def _beat(self) -> None:
        info = self.sample()
        if self.nodes is None:
            return
        try:
            await self.nodes.beat(info.id, info.to_json())
        except (RedisError, OSError) as exc:
            if not self._failing:
                log.warning("node %s: heartbeat not written to Redis: %s", info.id, exc)
            self._failing = True
            return
        if self._failing:
            log.info("node %s: heartbeat written to Redis again", info.id)
        self._failing = False
        self.beats += 1
