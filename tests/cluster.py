"""Several `sipbridge serve` nodes on one real redis-server, each on a loopback address of its
own (127.0.0.2, .3, .4: SIP, API and RTP there), for the cluster tests and bench/cluster.py.

`Cluster` starts and stops them all (a node a test killed or drained is not stopped twice);
`sip_rooms` finds which node holds which caller's room; `answer` answers a ringing caller as an
agent would: a participant joins the room on the node that holds it and subscribes to the
caller's audio through that node's RoomService.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from livekit import api
from livekit.protocol import models, room
from redis.exceptions import RedisError

from tests.harness import sipp_port
from tests.helpers import API_KEY, API_SECRET, ServerProcess, token
from tests.redis_server import RedisServer
from tests.signal_client import SignalClient

ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SIP = models.ParticipantInfo.Kind.SIP


class Node(ServerProcess):
    """A `sipbridge serve` named `node_id` on `host`, on Redis."""

    def __init__(
        self, tmp: Path, node_id: str, host: str, redis: RedisServer, prefix: str, *extra: str
    ) -> None:
        self.node_id = node_id
        self.host = host
        self.redis_url, self.prefix = redis.url, prefix
        self.sip_port = sipp_port()
        super().__init__(
            tmp,
            "--redis",
            redis.url,
            "--redis-prefix",
            prefix,
            "--node-id",
            node_id,
            "--sip",
            f"{host}:{self.sip_port}",
            "--sip-rate",
            "1000000",  # every INVITE comes from one address, the front's
            *extra,
            http_host=host,
        )

    @property
    def sip(self) -> str:
        return f"{self.host}:{self.sip_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye, no BYE, no cleanup."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)
        self.proc = None

    def terminate(self) -> None:
        """SIGTERM: the node drains (docs/cluster.md s6)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def finish(self, timeout: float = 15) -> int | None:
        """Stop the node whatever state it is in: SIGTERM, a second SIGTERM (hang up what is
        left) after 3 s, SIGKILL past `timeout`; its exit code (None if it was not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code


class Cluster:
    """`count` nodes on ADDRESSES sharing `redis` under a key prefix of their own."""

    def __init__(self, tmp: Path, redis: RedisServer, count: int = 3, *extra: str) -> None:
        self.prefix = f"cluster{secrets.token_hex(3)}:"
        self.nodes = [
            Node(tmp / f"n{i}", f"n{i}", ADDRESSES[i], redis, self.prefix, *extra)
            for i in range(count)
        ]

    def start(self) -> None:
        for node in self.nodes:
            node.log.parent.mkdir(parents=True, exist_ok=True)
            node.start()

    def stop(self) -> dict[str, int | None]:
        return {node.node_id: node.finish() for node in self.nodes}

    def assert_clean(self, codes: dict[str, int | None]) -> None:
        """`codes` (what `stop` returned) each 0, or None for a node stopped before; and no node
        logged a Traceback."""
        assert all(code in (None, 0) for code in codes.values()), codes
        for node in self.nodes:
            assert "Traceback" not in node.log.read_text(), node.log_tail()

    def by_id(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)


@contextlib.contextmanager
def cluster(tmp: Path, redis: RedisServer, count: int = 3, *extra: str) -> Iterator[Cluster]:
    nodes = Cluster(tmp, redis, count, *extra)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


def lk_client(node: Node) -> api.LiveKitAPI:
    return api.LiveKitAPI(url=node.url, api_key=API_KEY, api_secret=API_SECRET)


async def node_list(node: ServerProcess) -> list[dict[str, Any]]:
    """Every live node as the node list (their heartbeats) through `node` shows it:
    `GET /sipbridge/v1/nodes` with an admin token."""
    auth = "Bearer " + token(sip=api.SIPGrants(admin=True))
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{node.url}/sipbridge/v1/nodes", headers={"Authorization": auth}) as reply,
    ):
        listed = await reply.json()
    nodes: list[dict[str, Any]] = listed["nodes"]
    return nodes


@dataclass(frozen=True)
class Held:
    """A SIP caller found in a room on a node."""

    node: Node
    room: str
    participant: models.ParticipantInfo


async def sip_rooms(nodes: Sequence[Node]) -> dict[str, Held]:
    """Every SIP participant in the rooms the running `nodes` own, by identity: where it is
    held. (Any node lists every node's rooms and forwards ListParticipants to a room's owner:
    the owner is read from Redis, `room:{name}`.)"""
    found: dict[str, Held] = {}
    running = {node.node_id: node for node in nodes if node.running}
    if not running:
        return found
    first = next(iter(running.values()))
    owners = aioredis.Redis.from_url(first.redis_url)
    try:
        async with lk_client(first) as lk:
            rooms = await lk.room.list_rooms(room.ListRoomsRequest())
            for r in rooms.rooms:
                try:
                    owner = await owners.get(f"{first.prefix}room:{r.name}")
                    node = running.get(owner.decode()) if owner else None
                except RedisError:  # Redis away (a test stopped it): a lone node holds its own
                    node = first if len(running) == 1 else None
                if node is None:
                    continue
                async with lk_client(node) as on_owner:
                    listed = await on_owner.room.list_participants(
                        room.ListParticipantsRequest(room=r.name)
                    )
                for p in listed.participants:
                    if p.kind == SIP:
                        found[p.identity] = Held(node, r.name, p)
    finally:
        await owners.aclose()
    return found


async def answer(held: Held, agents: contextlib.AsyncExitStack) -> None:
    """Answer a ringing caller: "agent" joins its room on its node (kept in `agents` until
    that closes) and subscribes to the caller's audio there."""
    agent = SignalClient(held.node.url, held.room, "agent")
    await agents.enter_async_context(agent)
    async with lk_client(held.node) as lk:
        await lk.room.update_subscriptions(
            room.UpdateSubscriptionsRequest(
                room=held.room,
                identity="agent",
                track_sids=[held.participant.tracks[0].sid],
                subscribe=True,
            )
        )


async def wait_all(tasks: Sequence[asyncio.Task[object]], timeout: float) -> None:
    """Every task done within `timeout` (they are bounded themselves: this is the backstop)."""
    if tasks:
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout)
