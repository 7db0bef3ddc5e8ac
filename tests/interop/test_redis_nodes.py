"""Two `sipbridge serve` nodes on one real redis-server (issue 13, the store slice): a trunk or
dispatch rule made through one node's API serves the INVITEs and list calls of the other within
100 ms; Redis unreachable at start stops a node with a clear error; Redis restarting while the
nodes run loses no configuration, and a node that missed changes while away reloads them.

Driven as users drive it: the official `livekit-api` client, hand-written INVITEs over UDP."""

from __future__ import annotations

import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from livekit import api
from livekit.protocol import sip

from tests.harness import all_served, eventually, run
from tests.helpers import API_KEY, API_SECRET, ServerProcess, free_port, free_sip_port
from tests.interop.test_inbound import CALLED
from tests.interop.test_inbound_cases import invite, status_of, udp_transaction
from tests.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.timeout(60)

# The design's bound (docs/cluster.md): a change on one node seen by the others within this.
PROPAGATION_S = 0.1


class Node(ServerProcess):
    """A `sipbridge serve` on a Redis store, with its SIP port known."""

    def __init__(self, tmp: Path, redis: RedisServer, prefix: str) -> None:
        self.sip_port = free_sip_port()
        self.redis_url, self.prefix = redis.url, prefix
        super().__init__(
            tmp,
            "--redis",
            redis.url,
            "--redis-prefix",
            prefix,
            "--sip",
            f"127.0.0.1:{self.sip_port}",
            "--reveal-numbers",  # an unknown number: 404, so that "no trunk" is visible
        )


@asynccontextmanager
async def client(node: ServerProcess) -> AsyncIterator[api.LiveKitAPI]:
    async with api.LiveKitAPI(url=node.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        yield lk


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory, redis: RedisServer
) -> Iterator[tuple[Node, Node]]:
    prefix = f"nodes{secrets.token_hex(4)}:"
    a = Node(tmp_path_factory.mktemp("node-a"), redis, prefix)
    b = Node(tmp_path_factory.mktemp("node-b"), redis, prefix)
    with all_served(a, b):
        yield a, b


async def answer_to_invite(node: Node) -> int:
    """The final status a hand-written INVITE to CALLED gets from `node`."""
    tag = secrets.token_hex(6)
    request = invite(node.sip_port, call_id=f"redis-{tag}@127.0.0.1", branch=f"z9hG4bK{tag}")
    replies = await udp_transaction(node.sip_port, request)
    assert replies, "no answer to the INVITE"
    return status_of(replies[-1])


async def _known_on(lk: api.LiveKitAPI, trunk: str, rule: str) -> bool:
    return trunk in await trunk_ids(lk) and rule in await rules(lk)


async def trunk_ids(lk: api.LiveKitAPI) -> set[str]:
    listed = await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
    return {t.sip_trunk_id for t in listed.items}


async def rules(lk: api.LiveKitAPI) -> dict[str, str]:
    listed = await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())
    return {r.sip_dispatch_rule_id: r.name for r in listed.items}


async def create_trunk(lk: api.LiveKitAPI, name: str = "carrier", number: str = CALLED) -> str:
    info = sip.SIPInboundTrunkInfo(
        name=name, numbers=[number], auth_username="carrier", auth_password="secret-pass"
    )
    created = await lk.sip.create_inbound_trunk(sip.CreateSIPInboundTrunkRequest(trunk=info))
    return created.sip_trunk_id


async def create_rule(lk: api.LiveKitAPI, name: str, number: str = CALLED) -> str:
    rule = sip.SIPDispatchRule(dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name=name))
    info = sip.SIPDispatchRuleInfo(rule=rule, name=name, numbers=[number])
    created = await lk.sip.create_dispatch_rule(
        sip.CreateSIPDispatchRuleRequest(dispatch_rule=info)
    )
    return created.sip_dispatch_rule_id


async def test_changes_on_one_node_serve_calls_and_lists_on_the_other(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    async with client(a) as on_a, client(b) as on_b:
        assert await answer_to_invite(b) == 404
        trunk = await create_trunk(on_a)
        # The trunk asks for a password: B's 407 shows it matched the INVITE to the new trunk.
        await eventually(
            lambda: _is(answer_to_invite(b), 407), "B matching the trunk made on A", timeout=5
        )
        assert await trunk_ids(on_b) == {trunk}

        rule = await create_rule(on_a, "lobby")
        await eventually(lambda: _is(rules(on_b), {rule: "lobby"}), "the rule listed on B")
        await on_a.sip.update_dispatch_rule_fields(rule, name="hall")
        await eventually(lambda: _is(rules(on_b), {rule: "hall"}), "the renamed rule on B")
        # and the other way round: a change on B reaches A
        await on_b.sip.delete_dispatch_rule(
            sip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule)
        )
        await eventually(lambda: _is(rules(on_a), {}), "the rule deleted on B gone from A")

        await on_a.sip.delete_trunk(sip.DeleteSIPTrunkRequest(sip_trunk_id=trunk))
        await eventually(lambda: _is(answer_to_invite(b), 404), "B no longer matching the trunk")
        assert await trunk_ids(on_b) == set()


async def test_a_change_reaches_the_other_node_within_100_ms(nodes: tuple[Node, Node]) -> None:
    """From sending a create to node A until node B lists it, ten times; the median within
    the design's 100 ms (each one within a second: a shared 2-core machine can stall)."""
    a, b = nodes
    delays: list[float] = []
    async with client(a) as on_a, client(b) as on_b:
        for i in range(10):
            started = time.perf_counter()
            rule = await create_rule(on_a, f"timed-{i}", f"+1555010{i:04}")
            await eventually(
                lambda rule=rule: _has(rules(on_b), rule),  # type: ignore[misc]
                "the rule on B",
                timeout=1,
                interval=0.002,
            )
            delays.append(time.perf_counter() - started)
        for rule in await rules(on_a):
            await on_a.sip.delete_dispatch_rule(
                sip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule)
            )
    median = statistics.median(delays)
    slowest = max(delays)
    print(f"\ncreate on A -> listed on B: median {median * 1e3:.1f} ms, max {slowest * 1e3:.1f} ms")
    assert median < PROPAGATION_S, delays


async def test_a_call_on_one_node_is_in_the_shared_call_log(nodes: tuple[Node, Node]) -> None:
    """A call B answers (rings out after a second) is in the log in Redis: `sipbridge call
    list --redis` finds it, filtered by its room in Redis, with the other nodes' calls."""
    a, b = nodes
    async with client(a) as on_a, client(b) as on_b:
        info = sip.SIPInboundTrunkInfo(
            name="ringing", numbers=[CALLED], ringing_timeout=Duration(seconds=1)
        )
        trunk = await on_a.sip.create_inbound_trunk(sip.CreateSIPInboundTrunkRequest(trunk=info))
        rule = await create_rule(on_a, "logged-room")
        try:
            # B knows both before the call (else its 404, with no room, would be the answer)
            await eventually(
                lambda: _known_on(on_b, trunk.sip_trunk_id, rule), "the trunk and rule on B"
            )
            assert await eventually(lambda: answer_to_invite(b), "a final answer") >= 400

            async def logged() -> list[dict[str, Any]]:
                args = ["call", "list", "--redis", b.redis_url, "--redis-prefix", b.prefix]
                code, out = await run(
                    sys.executable, "-m", "sipbridge", *args, "--room", "logged-room", "--json"
                )
                assert code == 0, out
                entries: list[dict[str, Any]] = json.loads(out)
                return [e for e in entries if int(e.get("ended_at_ns", 0)) > 0]

            entries = await eventually(logged, "the ended call in the Redis call log")
            assert [e["room_name"] for e in entries] == ["logged-room"]
            assert entries[0]["to"] == CALLED
        finally:
            await on_a.sip.delete_trunk(sip.DeleteSIPTrunkRequest(sip_trunk_id=trunk.sip_trunk_id))
            await on_a.sip.delete_dispatch_rule(
                sip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule)
            )


def test_redis_unreachable_at_start_is_a_clear_error_and_exit_1(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    args = [sys.executable, "-m", "sipbridge", "serve", "--dev", "--redis", url]
    args += ["--http", f"127.0.0.1:{free_port()}", "--sip", f"127.0.0.1:{free_sip_port()}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    done = subprocess.run(
        args, check=False, capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path
    )
    assert done.returncode == 1, done.stderr
    assert f"sipbridge serve: cannot reach Redis at {url}" in done.stderr
    assert "Traceback" not in done.stderr


async def test_redis_restarting_loses_nothing_and_a_node_that_missed_changes_reloads(
    tmp_path: Path,
) -> None:
    """Redis (with its append-only file, as an operator runs it) restarts under two nodes.
    While it is down, A still answers INVITEs and lists from its cache. B is paused (SIGSTOP)
    across the restart and a change made on A meanwhile, so that B's subscription cannot have
    carried it: once resumed, B reconnects, reloads, and has both the old and the new trunk."""
    with redis_server(tmp_path / "redis", persistent=True) as redis:
        prefix = f"restart{secrets.token_hex(4)}:"
        a = Node(tmp_path / "a", redis, prefix)
        b = Node(tmp_path / "b", redis, prefix)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a.start()
        b.start()
        assert b.proc is not None
        try:
            async with client(a) as on_a, client(b) as on_b:
                first = await create_trunk(on_a, "first")
                await eventually(lambda: _is(trunk_ids(on_b), {first}), "the trunk on B")

                b.proc.send_signal(signal.SIGSTOP)
                redis.stop()
                assert await trunk_ids(on_a) == {first}  # from the cache, Redis down
                assert await answer_to_invite(a) == 407
                with pytest.raises(api.TwirpError):  # a write cannot be made: refused
                    await create_trunk(on_a, "refused", "+15550108888")
                assert await trunk_ids(on_a) == {first}
                redis.start()

                second = await eventually(
                    lambda: _attempt(create_trunk(on_a, "second", "+15550109999")),
                    "a write after the restart",
                )
                b.proc.send_signal(signal.SIGCONT)
                await eventually(
                    lambda: _is(trunk_ids(on_b), {first, second}), "B reloaded after reconnecting"
                )
                assert await trunk_ids(on_a) == {first, second}
                # and B follows changes again
                await on_a.sip.delete_trunk(sip.DeleteSIPTrunkRequest(sip_trunk_id=first))
                await eventually(lambda: _is(trunk_ids(on_b), {second}), "the delete on B")
        finally:
            if b.proc is not None:
                b.proc.send_signal(signal.SIGCONT)
            for node in (b, a):
                assert node.stop() == 0, node.log_tail()
        assert "resubscribing" in b.log.read_text()


async def _is(awaitable: object, expected: object) -> bool:
    return await awaitable == expected  # type: ignore[misc]


async def _has(awaitable: object, item: object) -> bool:
    return item in await awaitable  # type: ignore[misc,operator]


async def _attempt(awaitable: object) -> object:
    """The awaitable's result, or None when it failed (to be retried by `eventually`)."""
    try:
        return await awaitable  # type: ignore[misc]
    except api.TwirpError:
        return None
