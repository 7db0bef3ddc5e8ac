"""Nodes and drain (issue 13 items 2 and 6, docs/cluster.md s2 and s6) with real processes: a
real redis-server, `sipbridge serve` nodes, sipp callers, and `sipbridge node list` as users run
it.

- node list on either of two nodes shows both with their load; a node killed with SIGKILL is
  gone from the other's list within 5 s (its heartbeat key expired);
- SIGTERM on a node with calls up: new INVITEs get 503 with Retry-After, OPTIONS 503 (Kamailio's
  dispatcher probe marks it down), CreateSIPParticipant `unavailable`, /healthz 503, `draining`
  in node list; the calls go on until sipp hangs up, then the node exits 0;
- with a short --drain-timeout, the calls still up get our BYE and the node exits 0.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import api
from livekit.protocol import sip

from tests.harness import eventually, kill_leftovers, run, sipp_port
from tests.helpers import API_KEY, API_SECRET, ServerProcess
from tests.interop.test_inbound import CALLED
from tests.interop.test_inbound_cases import (
    client,
    direct,
    dispatch_rule,
    finished,
    header_of,
    inbound_trunk,
    invite,
    sip_participants,
    sipp_task,
    status_of,
    udp_transaction,
)
from tests.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.timeout(60)

DEAD_WITHIN_S = 5.0  # docs/cluster.md: a dead node is seen so within 5 s
HOLD_MS = 4000  # how long the draining node's callers stay up (the checks take < 1 s)


class Node(ServerProcess):
    """A `sipbridge serve` named `node_id`, on Redis when given, with a SIP port sipp can use."""

    def __init__(
        self, tmp: Path, node_id: str, *extra: str, redis: RedisServer | None = None
    ) -> None:
        self.node_id = node_id
        self.sip_port = sipp_port()
        cluster = ["--redis", redis.url, "--redis-prefix", PREFIX] if redis else []
        super().__init__(
            tmp,
            *cluster,
            "--node-id",
            node_id,
            "--sip",
            f"127.0.0.1:{self.sip_port}",
            *extra,
        )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exit_code(self, timeout: float) -> int:
        """Wait for the process to end (bounded); its exit code."""
        assert self.proc is not None
        code = await asyncio.to_thread(self.proc.wait, timeout)
        self.proc = None
        return code

    def healthz(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return err.code


PREFIX = f"nodes{secrets.token_hex(3)}:"


def options(port: int) -> bytes:
    """An OPTIONS probe as a load balancer sends it, each in a transaction of its own."""
    tag = secrets.token_hex(4)
    return (
        f"OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{tag};rport\r\n"
        f"From: <sip:dispatcher@127.0.0.1>;tag={tag}\r\n"
        "To: <sip:ping@127.0.0.1>\r\n"
        f"Call-ID: probe-{tag}@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    """Nodes a test starts; any still running at the end must stop cleanly."""
    started: list[Node] = []
    yield started
    kill_leftovers()
    for node in started:
        if node.proc is not None:
            assert node.stop() == 0, node.log_tail()
        assert "Traceback" not in node.log.read_text(), node.log_tail()


def start(nodes: list[Node], tmp: Path, node_id: str, *extra: str, **kw: Any) -> Node:
    directory = tmp / node_id
    directory.mkdir()
    node = Node(directory, node_id, *extra, **kw)
    nodes.append(node)
    node.start()
    return node


async def node_list(node: Node) -> dict[str, dict[str, Any]]:
    """`sipbridge node list --json` against `node`, by node id."""
    args = ["--url", node.url, "--api-key", API_KEY, "--api-secret", API_SECRET, "--json"]
    code, out = await run(sys.executable, "-m", "sipbridge", "node", "list", *args, timeout=20)
    assert code == 0, out
    return {row["id"]: row for row in json.loads(out[out.index("[") :])}


async def test_node_list_on_either_node_then_a_killed_node_is_gone(
    redis: RedisServer, nodes: list[Node], tmp_path: Path
) -> None:
    alpha = start(nodes, tmp_path, "alpha", redis=redis)
    beta = start(nodes, tmp_path, "beta", redis=redis)
    for asked in (alpha, beta):
        listed = await node_list(asked)
        assert set(listed) == {"alpha", "beta"}, listed
        for node in (alpha, beta):
            row = listed[node.node_id]
            assert row["state"] == "serving" and row["calls"] == 0 and row["rooms"] == 0
            assert row["sip"] == f"127.0.0.1:{node.sip_port}"
            assert row["http"] == f"127.0.0.1:{node.port}"
            assert row["cpu"] >= 0 and 0 <= row["age"] <= 2  # beats every second
            assert row["max_calls"] == 1000

    # The table as people read it.
    args = ["--url", beta.url, "--api-key", API_KEY, "--api-secret", API_SECRET]
    code, out = await run(sys.executable, "-m", "sipbridge", "node", "list", *args, timeout=20)
    assert code == 0, out
    table = [line.split() for line in out.splitlines() if line.startswith(("ID", "alpha", "beta"))]
    assert table[0] == ["ID", "STATE", "CALLS", "ROOMS", "CPU", "AGE", "SIP", "HTTP"]
    assert [row[:3] for row in table[1:]] == [["alpha", "serving", "0"], ["beta", "serving", "0"]]

    assert beta.proc is not None
    beta.proc.kill()  # no goodbye: its heartbeat key must expire
    killed = time.monotonic()
    await beta.exit_code(5)

    async def beta_gone() -> bool:
        return set(await node_list(alpha)) == {"alpha"}

    await eventually(beta_gone, "the killed node gone from node list", timeout=DEAD_WITHIN_S + 2)
    assert time.monotonic() - killed <= DEAD_WITHIN_S + 1  # (+ the CLI's start-up)


async def two_callers(node: Node, lk: api.LiveKitAPI, room_name: str, scenario: str) -> list[Any]:
    """Two sipp callers in one room, each answered as the other joins; both active."""
    await inbound_trunk(lk)
    await dispatch_rule(lk, direct(room_name))
    calls = [
        sipp_task(node, scenario, caller=f"+1555001{i}", hold_ms=HOLD_MS, limit=20)  # type: ignore[arg-type]
        for i in (1, 2)
    ]

    async def both_active() -> bool:
        ps = await sip_participants(lk, room_name)
        return len(ps) == 2 and all(p.attributes["sip.callStatus"] == "active" for p in ps)

    await eventually(both_active, "both callers active", timeout=10)
    return calls


async def test_sigterm_refuses_new_calls_and_lets_the_calls_up_finish(
    redis: RedisServer, nodes: list[Node], tmp_path: Path
) -> None:
    node = start(nodes, tmp_path, "gamma", "--drain-timeout", "20", redis=redis)
    async with client(node) as lk:
        calls = await two_callers(node, lk, "draining", "uac_inbound.xml")
        assert (await node_list(node))["gamma"]["calls"] == 2
        assert await udp_transaction(node.sip_port, options(node.sip_port)) != []

        node.signal(signal.SIGTERM)
        signalled = time.monotonic()

        async def refused() -> bytes | None:
            replies = await udp_transaction(node.sip_port, options(node.sip_port), timeout=1)
            return replies[-1] if replies and status_of(replies[-1]) == 503 else None

        probe = await eventually(refused, "OPTIONS answered 503", timeout=5)
        assert header_of(probe, "Retry-After") == "20"
        replies = await udp_transaction(
            node.sip_port, invite(node.sip_port, call_id="after-sigterm@127.0.0.1")
        )
        assert [status_of(r) for r in replies] == [503], replies  # no 100: refused at once
        assert header_of(replies[0], "Retry-After") == "20"
        assert await asyncio.to_thread(node.healthz) == 503
        with pytest.raises(api.TwirpError) as refusal:
            await lk.sip.create_sip_participant(
                sip.CreateSIPParticipantRequest(
                    sip_trunk_id="ST_any", sip_call_to=CALLED, room_name="draining"
                )
            )
        assert refusal.value.code == "unavailable"
        row = (await node_list(node))["gamma"]
        assert (row["state"], row["calls"]) == ("draining", 2)

        # The calls up go on to their own BYE; then the node exits 0, well before 20 s.
        for call in calls:
            await finished(call)
    assert await node.exit_code(10) == 0
    assert time.monotonic() - signalled < 10
    assert "stopping (idle)" in node.log.read_text()


async def test_drain_timeout_hangs_up_the_calls_left(nodes: list[Node], tmp_path: Path) -> None:
    node = start(nodes, tmp_path, "delta", "--drain-timeout", "1")  # no Redis: single node
    listed = await node_list(node)
    assert list(listed) == ["delta"]
    async with client(node) as lk:
        calls = await two_callers(node, lk, "held", "uac_hung_up.xml")
        node.signal(signal.SIGTERM)
        signalled = time.monotonic()
        for call in calls:
            await finished(call)  # each got our BYE and answered it
    assert time.monotonic() - signalled >= 1.0  # not before the drain timeout
    assert await node.exit_code(10) == 0
    assert "stopping (timeout): hanging up the calls left" in node.log.read_text()
