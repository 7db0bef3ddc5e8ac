"""Faults of a cluster on one real redis-server (issue 13, docs/cluster.md failure cases), with
`sipbridge serve` nodes on 127.0.0.2-3, sipp callers and the official livekit-api client:

- Redis stopping and starting again under a call: its media goes on, a call made meanwhile is
  answered and its call-log records are written once Redis is back, no trunk or rule is lost;
- two nodes racing to create inbound trunks for one number: one passes, the other is refused;
- a node killed with SIGKILL while it holds a call: another node logs that call as ended by
  node loss within 10 s (read through the other node's sipbridge.CallLog/ListCalls), and a call
  on the live node is left as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import api
from livekit.protocol import sip

from tests.cluster import Cluster, Held, Node, answer, cluster, lk_client, sip_rooms, wait_all
from tests.harness import SippRun, eventually, kill_leftovers
from tests.harness import sipp as run_sipp
from tests.helpers import token, twirp
from tests.interop.test_call_media_cases import mulaw
from tests.interop.test_inbound import CALLED
from tests.redis_server import RedisServer, redis_server

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not shutil.which("sipp"), reason="sipp comes with `make test`"),
]

ENDED_WITHIN_S = 10.0  # docs/cluster.md: a dead node's calls logged as ended within 10 s


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def two(tmp_path: Path, redis: RedisServer) -> Iterator[Cluster]:
    """Two nodes; those still running at the end must stop cleanly, with no traceback."""
    with cluster(tmp_path, redis, 2) as nodes:
        try:
            yield nodes
        finally:
            kill_leftovers()
        nodes.assert_clean(nodes.stop())


async def individual_rule(node: Node, *, direct: str = "") -> None:
    """A trunk for CALLED and a rule: a room per caller, or every call into room `direct`."""
    async with lk_client(node) as lk:
        await lk.sip.create_inbound_trunk(
            sip.CreateSIPInboundTrunkRequest(
                trunk=sip.SIPInboundTrunkInfo(name="carrier", numbers=[CALLED])
            )
        )
        rule = sip.SIPDispatchRule(
            dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix="fault")
        )
        if direct:
            rule = sip.SIPDispatchRule(
                dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name=direct)
            )
        await lk.sip.create_dispatch_rule(
            sip.CreateSIPDispatchRuleRequest(dispatch_rule=sip.SIPDispatchRuleInfo(rule=rule))
        )


def call_to(node: Node, number: str, hold_ms: int) -> asyncio.Task[SippRun]:
    """A sipp caller straight to `node` (no front): rings until answered, holds, BYE."""
    return asyncio.create_task(
        run_sipp(
            "uac_inbound.xml",
            node.sip_port,
            host=node.host,
            hold_ms=hold_ms,
            keys={"caller": number, "called": CALLED, "customer": "c"},
            limit=30,
        )
    )


async def answered(nodes: list[Node], number: str, stack: contextlib.AsyncExitStack) -> Held:
    """The caller `number` ringing on some node, answered there; where it is held."""

    async def found() -> Held | None:
        return (await sip_rooms(nodes)).get(f"sip_{number}")

    held = await eventually(found, f"{number} ringing", timeout=10)
    await answer(held, stack)

    async def active() -> bool:
        now = (await sip_rooms(nodes)).get(f"sip_{number}")
        return now is not None and now.participant.attributes["sip.callStatus"] == "active"

    await eventually(active, f"{number} answered", timeout=10)
    return held


async def list_calls(node: Node, **query: Any) -> list[dict[str, Any]]:
    """sipbridge.CallLog/ListCalls (JSON) on `node`, as an admin."""
    auth = "Bearer " + token(sip=api.SIPGrants(admin=True))
    status, _, body = await twirp(
        node.url,
        "sipbridge.CallLog",
        "ListCalls",
        json.dumps(query),
        auth=auth,
        content_type="application/json",
    )
    assert status == 200, body
    items: list[dict[str, Any]] = json.loads(body).get("items", [])
    return items


async def test_a_killed_nodes_call_is_logged_ended_by_node_loss(two: Cluster) -> None:
    alive, victim = two.nodes
    await individual_rule(alive)
    calls = [call_to(victim, "+15550500", 20_000), call_to(alive, "+15550501", 20_000)]
    try:
        async with contextlib.AsyncExitStack() as stack:
            lost = await answered([victim], "+15550500", stack)
            kept = await answered([alive], "+15550501", stack)
            lost_id = lost.participant.attributes["sip.callID"]
            kept_id = kept.participant.attributes["sip.callID"]
            by_id = {c["call_id"]: c for c in await list_calls(alive)}
            assert by_id[lost_id]["call_status"] == "SCS_ACTIVE"

            victim.kill()
            killed = time.monotonic()

            async def ended() -> dict[str, Any] | None:
                for c in await list_calls(alive):
                    if c["call_id"] == lost_id and c.get("call_status") == "SCS_ERROR":
                        return c
                return None

            entry = await eventually(ended, "the lost call logged as ended", timeout=ENDED_WITHIN_S)
            took = time.monotonic() - killed
            assert took <= ENDED_WITHIN_S
            assert entry["error"].startswith("node lost: n1"), entry
            assert entry["disconnect_reason"] == "SERVER_SHUTDOWN"
            assert int(entry["ended_at_ns"]) > int(entry["started_at_ns"]) > 0
            print(f"\nSIGKILL -> the call logged as ended by node loss: {took:.1f} s")
            # The live node's call is as it was, and goes on.
            by_id = {c["call_id"]: c for c in await list_calls(alive)}
            assert by_id[kept_id]["call_status"] == "SCS_ACTIVE"
            assert "node n1 lost: 1 of its 1 call(s)" in alive.log.read_text()
    finally:
        for task in calls:
            task.cancel()
        await wait_all(calls, 10)


async def test_two_nodes_racing_to_create_one_number_let_one_pass(two: Cluster) -> None:
    """Inbound trunks for the same number created on both nodes at the same moment, ten times:
    each time exactly one is made and the other refused as a conflict (WATCH on rec:{kind}
    around each node's validate-and-write; without it both nodes' caches let both pass)."""
    a, b = two.nodes
    async with lk_client(a) as on_a, lk_client(b) as on_b:
        for i in range(10):
            number = f"+155507{i:04}"
            trunk = sip.SIPInboundTrunkInfo(name=f"race-{i}", numbers=[number])
            request = sip.CreateSIPInboundTrunkRequest(trunk=trunk)
            results = await asyncio.gather(
                on_a.sip.create_inbound_trunk(request),
                on_b.sip.create_inbound_trunk(request),
                return_exceptions=True,
            )
            made = [r for r in results if isinstance(r, sip.SIPInboundTrunkInfo)]
            refused = [r for r in results if isinstance(r, api.TwirpError)]
            assert len(made) == 1 and len(refused) == 1, results
            assert refused[0].code == "invalid_argument", refused[0]
        listed = await on_b.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
        assert len(listed.items) == 10


def packets_in(node: Node) -> float:
    return node.metrics().get('sipbridge_media{counter="rtp_packets_in"}', 0.0)


async def test_redis_restarting_under_a_call_keeps_its_media_and_queues_the_call_log(
    tmp_path: Path,
) -> None:
    """Redis (append-only file, as operators run it) stops under a call that streams RTP and
    starts again on the same data: the call's media goes on meanwhile (the node keeps counting
    its packets), a call made and ended while Redis is away into the room the node holds is
    answered and its call-log records kept, then written once Redis is back; the trunk and rule
    are still there; nothing is dropped."""
    t = np.arange(8000) / 8000
    (tmp_path / "tone.ul").write_bytes(mulaw((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)))
    with (
        redis_server(tmp_path / "redis", persistent=True) as redis,
        cluster(tmp_path, redis, 1) as nodes,
    ):
        (node,) = nodes.nodes
        await individual_rule(node, direct="outage")  # both calls in one room, held here
        up = asyncio.create_task(
            run_sipp(
                "uac_inbound_tone.xml",
                node.sip_port,
                host=node.host,
                hold_ms=12_000,
                keys={"caller": "+15550600", "called": CALLED, "customer": "c"},
                limit=40,
                cwd=tmp_path,
            )
        )
        during: list[asyncio.Task[SippRun]] = []
        try:
            async with contextlib.AsyncExitStack() as stack:
                held = await answered([node], "+15550600", stack)
                up_id = held.participant.attributes["sip.callID"]
                await eventually(lambda: packets_in(node) > 0, "RTP from the caller")

                redis.stop()
                before = await asyncio.to_thread(packets_in, node)
                # A call while Redis is away: matched from the node's cache, answered, ended.
                # A call while Redis is away, into the room this node holds: matched from the
                # node's cache, answered at once (another SIP participant is in the room).
                during.append(call_to(node, "+15550601", 2000))

                async def bridged() -> bool:
                    now = (await sip_rooms([node])).get("sip_+15550601")
                    return (
                        now is not None and now.participant.attributes["sip.callStatus"] == "active"
                    )

                await eventually(bridged, "the call during the outage answered")
                assert (await during[0]).code == 0, during[0].result().out[-3000:]

                async def media_goes_on() -> bool:  # a second of RTP, Redis still down
                    return await asyncio.to_thread(packets_in, node) >= before + 50

                await eventually(media_goes_on, "the call's RTP while Redis is down")
                assert (await sip_rooms([node]))["sip_+15550600"].participant.attributes[
                    "sip.callStatus"
                ] == "active"
                redis.start()

                async def logged() -> dict[str, dict[str, Any]] | None:
                    calls = {c["participant_identity"]: c for c in await list_calls(node)}
                    late = calls.get("sip_+15550601")
                    if late and late["call_status"] == "SCS_DISCONNECTED":
                        return calls
                    return None

                calls = await eventually(logged, "the call made while Redis was down, logged")
                assert calls["sip_+15550600"]["call_id"] == up_id
                assert calls["sip_+15550600"]["call_status"] == "SCS_ACTIVE"
                assert int(calls["sip_+15550601"]["ended_at_ns"]) > 0
                async with lk_client(node) as lk:
                    trunks = await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
                    rules = await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())
                assert len(trunks.items) == 1 and len(rules.items) == 1
                done = await up  # the call up across the restart ends with its own BYE
                assert done.code == 0, done.out[-3000:]
            metrics = await asyncio.to_thread(node.metrics)
            assert metrics.get("sipbridge_call_log_dropped_total", 0.0) == 0
            assert "call log: store back" in node.log.read_text()
        finally:
            up.cancel()
            for task in during:
                task.cancel()
            await wait_all([up, *during], 10)
