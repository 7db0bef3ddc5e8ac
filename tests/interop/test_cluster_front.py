"""Kamailio in front of three nodes (issue 13, the SIP front; docs/cluster.md s7): Debian's
kamailio run from the committed docs/kamailio-dispatcher.cfg on a port of the test's own,
dispatching to three `sipbridge serve` nodes on 127.0.0.2-4 that share one real redis-server.

- sipp callers through Kamailio, one individual room each, are spread over all three nodes;
  each caller's `sip.*` attributes, read with livekit-api's ListParticipants on the node that
  holds it, are those of a call on one node;
- a node killed with SIGKILL loses only its own calls: the calls on the other nodes go on to
  their own BYE; the dispatcher's probe marks the dead node inactive, and new calls all land on
  the live nodes;
- a node draining (SIGTERM) is taken out by the probe (OPTIONS answered 503) before any new
  INVITE reaches it; new calls go to the others, and its own call goes on to its BYE;
- an INVITE a full node (--max-calls) answers 503 is tried on the next node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from livekit.protocol import sip

from tests.cluster import Cluster, Held, Node, answer, cluster, lk_client, sip_rooms, wait_all
from tests.harness import SippRun, eventually, kill_leftovers, run
from tests.harness import sipp as run_sipp
from tests.interop.test_inbound import CALLED
from tests.kamailio import Kamailio, kamailio
from tests.redis_server import RedisServer, redis_server

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not shutil.which("sipp"), reason="sipp comes with `make test`"),
]

ROOM_PREFIX = "front"
CALL_LIMIT_S = 40.0  # no caller here lasts longer


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def front(tmp_path: Path, redis: RedisServer) -> Iterator[tuple[Cluster, Kamailio]]:
    """Three nodes (a drain waits up to 20 s for calls) and Kamailio in front of them; all
    stopped at the end whatever happened. Nodes still running must stop cleanly (exit 0)."""
    with cluster(tmp_path, redis, 3, "--drain-timeout", "20") as nodes:
        try:
            with kamailio(tmp_path / "kamailio", [n.sip for n in nodes.nodes]) as kam:
                kam.wait_active()
                yield nodes, kam
        finally:
            kill_leftovers()
        nodes.assert_clean(nodes.stop())


async def trunk_and_rule(node: Node) -> tuple[str, str]:
    """An inbound trunk for CALLED and an individual rule (a room per caller), made on one node
    and in use on every node once listed there."""
    async with lk_client(node) as lk:
        trunk = await lk.sip.create_inbound_trunk(
            sip.CreateSIPInboundTrunkRequest(
                trunk=sip.SIPInboundTrunkInfo(
                    name="carrier",
                    numbers=[CALLED],
                    headers_to_attributes={"x-customer-id": "customer.id"},
                    include_headers=sip.SIPHeaderOptions.SIP_X_HEADERS,
                )
            )
        )
        rule = sip.SIPDispatchRule(
            dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix=ROOM_PREFIX)
        )
        made = await lk.sip.create_dispatch_rule(
            sip.CreateSIPDispatchRuleRequest(
                dispatch_rule=sip.SIPDispatchRuleInfo(rule=rule, attributes={"team": "front"})
            )
        )
    return trunk.sip_trunk_id, made.sip_dispatch_rule_id


async def everywhere(nodes: list[Node], rule_id: str) -> None:
    async def listed() -> bool:
        for node in nodes:
            async with lk_client(node) as lk:
                rules = await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())
                if rule_id not in {r.sip_dispatch_rule_id for r in rules.items}:
                    return False
        return True

    await eventually(listed, "the rule on every node", timeout=5)


def caller(front: Kamailio, number: str, hold_ms: int) -> asyncio.Task[SippRun]:
    """One sipp call to CALLED from `number` through Kamailio: rings until answered, holds
    `hold_ms`, then BYE."""
    return asyncio.create_task(
        run_sipp(
            "uac_inbound.xml",
            front.port,
            hold_ms=hold_ms,
            keys={"caller": number, "called": CALLED, "customer": f"cust-{number[-2:]}"},
            limit=CALL_LIMIT_S,
        )
    )


async def ringing(
    nodes: list[Node],
    numbers: list[str],
    kam: Kamailio,
    calls: dict[str, asyncio.Task[SippRun]],
) -> dict[str, Held]:
    """Each of `numbers` ringing in a room of its own on some node, by number."""

    async def all_there() -> dict[str, Held] | None:
        found = await sip_rooms(nodes)
        held = {n: found.get(f"sip_{n}") for n in numbers}
        if all(h is not None for h in held.values()):
            return {n: h for n, h in held.items() if h is not None}
        return None

    try:
        return await eventually(all_there, f"{len(numbers)} callers in their rooms", timeout=15)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{await seen(nodes, kam, calls)}") from None


async def seen(nodes: list[Node], kam: Kamailio, calls: dict[str, asyncio.Task[SippRun]]) -> str:
    """What each side saw, for a failure: the dispatcher's view of the nodes and its log, each
    node's log, and how each caller that has already ended ended."""
    try:
        targets = str(await asyncio.to_thread(kam.targets))
    except Exception as e:  # a failure's report must not fail: say why the view is missing
        targets = f"(no view: {e!r})"
    parts = [f"--- kamailio: {targets}\n{kam.log_tail(2000)}"]
    parts += [f"--- {n.node_id}\n{n.log_tail(1500)}" for n in nodes]
    for number, task in calls.items():
        if task.done() and not task.cancelled() and task.exception() is None:
            run = task.result()
            parts.append(f"--- caller {number} ended {run.code}\n{run.out[-1500:]}")
    return "\n".join(parts)


async def active(nodes: list[Node], numbers: list[str]) -> None:
    async def all_active() -> bool:
        found = await sip_rooms(nodes)
        return all(
            f"sip_{n}" in found
            and found[f"sip_{n}"].participant.attributes["sip.callStatus"] == "active"
            for n in numbers
        )

    await eventually(all_active, "the callers answered", timeout=10)


def check_attributes(held: Held, number: str, trunk_id: str, rule_id: str) -> None:
    """The attributes a call on one node has (tests/interop/test_inbound.py)."""
    p = held.participant
    attrs = dict(p.attributes)
    assert held.room.startswith(f"{ROOM_PREFIX}_{number}_"), held.room
    assert p.identity == f"sip_{number}" and p.name == f"Phone {number}"
    assert attrs["sip.callID"].startswith("SCL_")
    assert attrs["sip.callIDFull"] and attrs["sip.callTag"]
    assert attrs["sip.phoneNumber"] == number
    assert attrs["sip.trunkPhoneNumber"] == CALLED
    assert attrs["sip.hostname"] == "127.0.0.1"  # the address the carrier called: the front's
    assert attrs["sip.trunkID"] == trunk_id and attrs["sip.ruleID"] == rule_id
    assert attrs["sip.callStatus"] == "ringing"
    assert attrs["sip.twilio.accountSid"] == "AC0123456789abcdef0123456789abcdef"
    assert attrs["sip.twilio.callSid"].startswith("CA")
    assert attrs["sip.telnyx.callLegID"].startswith("leg-")
    assert attrs["sip.telnyx.callSessionID"].startswith("session-")
    assert attrs["sip.amazon.contactId"].startswith("contact-")
    assert attrs["customer.id"] == f"cust-{number[-2:]}"
    assert attrs["sip.h.x-customer-id"] == f"cust-{number[-2:]}"
    assert attrs["team"] == "front"


@contextlib.asynccontextmanager
async def agents() -> AsyncIterator[contextlib.AsyncExitStack]:
    async with contextlib.AsyncExitStack() as stack:
        yield stack


async def test_calls_spread_and_a_killed_node_loses_only_its_own(
    front: tuple[Cluster, Kamailio],
) -> None:
    nodes, kam = front
    trunk_id, rule_id = await trunk_and_rule(nodes.nodes[0])
    await everywhere(nodes.nodes, rule_id)
    first = [f"+1555030{i:02}" for i in range(6)]
    later = [f"+1555031{i:02}" for i in range(4)]
    calls = {n: caller(kam, n, hold_ms=8000) for n in first}
    try:
        async with agents() as stack:
            held = await ringing(nodes.nodes, first, kam, calls)
            spread = {h.node.node_id for h in held.values()}
            assert spread == {"n0", "n1", "n2"}, {n: h.node.node_id for n, h in held.items()}
            for number, h in held.items():
                check_attributes(h, number, trunk_id, rule_id)
            for h in held.values():
                await answer(h, stack)
            await active(nodes.nodes, first)

            victim = nodes.by_id("n1")
            lost = [n for n in first if held[n].node is victim]
            victim.kill()

            async def marked_down() -> bool:
                return "I" in (await asyncio.to_thread(kam.targets))[victim.sip]

            await eventually(marked_down, "the dispatcher to mark the killed node down", timeout=8)

            calls.update({n: caller(kam, n, hold_ms=1000) for n in later})
            held_later = await ringing(nodes.nodes, later, kam, calls)
            assert {h.node.node_id for h in held_later.values()} <= {"n0", "n2"}
            for h in held_later.values():
                await answer(h, stack)

            # The calls on the live nodes go on to their own BYE, answered 200.
            for number in first + later:
                if number in lost:
                    continue
                done = await calls[number]
                assert done.code == 0, (number, done.out[-3000:])
            # The killed node's callers get no answer to their BYE (Kamailio's 408).
            for number in lost:
                done = await calls[number]
                assert done.code != 0, (number, done.out[-3000:])
    finally:
        for task in calls.values():
            task.cancel()
        await wait_all(list(calls.values()), 10)


async def test_a_draining_node_is_taken_out_by_the_probe(front: tuple[Cluster, Kamailio]) -> None:
    nodes, kam = front
    _, rule_id = await trunk_and_rule(nodes.nodes[0])
    await everywhere(nodes.nodes, rule_id)
    first = [f"+1555040{i:02}" for i in range(3)]
    later = [f"+1555041{i:02}" for i in range(4)]
    calls = {n: caller(kam, n, hold_ms=5000) for n in first}
    try:
        async with agents() as stack:
            held = await ringing(nodes.nodes, first, kam, calls)
            for h in held.values():
                await answer(h, stack)
            await active(nodes.nodes, first)
            draining = held[first[0]].node
            assert all(flags.startswith("A") for flags in kam.targets().values()), kam.targets()

            draining.terminate()

            async def taken_out() -> bool:
                return "I" in (await asyncio.to_thread(kam.targets))[draining.sip]

            await eventually(taken_out, "the probe to take the draining node out", timeout=8)
            calls.update({n: caller(kam, n, hold_ms=500) for n in later})
            held_later = await ringing(nodes.nodes, later, kam, calls)
            assert draining not in {h.node for h in held_later.values()}
            for h in held_later.values():
                await answer(h, stack)
            for number in first + later:
                done = await calls[number]
                assert done.code == 0, (number, done.out[-3000:])
            # No INVITE met the draining node's 503: the probe had taken it out before.
            assert "failed (503)" not in kam.log.read_text(), kam.log_tail()
    finally:
        for task in calls.values():
            task.cancel()
        await wait_all(list(calls.values()), 10)
    assert draining.proc is not None
    assert await asyncio.to_thread(draining.proc.wait, 10) == 0  # idle: it exits 0


async def test_an_invite_refused_503_is_tried_on_the_next_node(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Two nodes of one call each (--max-calls 1; a full node still answers OPTIONS 200, so the
    probe keeps it in). A call holds the first node; a second lands on the other node and ends;
    round-robin sends the third INVITE to the full node, which answers 503, and Kamailio tries
    the other node, which takes the call."""
    with cluster(tmp_path, redis, 2, "--max-calls", "1") as nodes:
        try:
            with kamailio(tmp_path / "kamailio", [n.sip for n in nodes.nodes]) as kam:
                _, rule_id = await trunk_and_rule(nodes.nodes[0])
                await everywhere(nodes.nodes, rule_id)
                first, second, third = "+15550800", "+15550801", "+15550802"
                calls = {first: caller(kam, first, hold_ms=15_000)}
                try:
                    async with agents() as stack:
                        held = await ringing(nodes.nodes, [first], kam, calls)
                        await answer(held[first], stack)
                        calls[second] = caller(kam, second, hold_ms=300)
                        other = (await ringing(nodes.nodes, [second], kam, calls))[second]
                        assert other.node is not held[first].node  # round-robin: the other
                        await answer(other, stack)
                        assert (await calls[second]).code == 0
                        await eventually(
                            lambda: _no_participant(other.node, second), "the second call gone"
                        )
                        # Round-robin's next is the full node: 503, then the other node.
                        calls[third] = caller(kam, third, hold_ms=300)
                        moved = (await ringing(nodes.nodes, [third], kam, calls))[third]
                        assert moved.node is other.node
                        await answer(moved, stack)
                        assert (await calls[third]).code == 0
                        full = held[first].node
                        assert f"node sip:{full.sip} failed (503)" in kam.log.read_text()
                finally:
                    for task in calls.values():
                        task.cancel()
                    await wait_all(list(calls.values()), 10)
        finally:
            kill_leftovers()


async def _no_participant(node: Node, number: str) -> bool:
    return f"sip_{number}" not in await sip_rooms([node])


async def test_restarting_every_node_loses_no_trunk_rule_or_call(
    front: tuple[Cluster, Kamailio],
) -> None:
    """Calls through the front, then all three nodes stopped and started again on the same
    Redis: every node still has the trunk and the rule, and the call log (read with the CLI
    from Redis, as operators do) has every call with its final state."""
    nodes, kam = front
    trunk_id, rule_id = await trunk_and_rule(nodes.nodes[0])
    await everywhere(nodes.nodes, rule_id)
    numbers = [f"+1555032{i:02}" for i in range(3)]
    calls = {n: caller(kam, n, hold_ms=500) for n in numbers}
    try:
        async with agents() as stack:
            held = await ringing(nodes.nodes, numbers, kam, calls)
            call_ids = {h.participant.attributes["sip.callID"] for h in held.values()}
            for h in held.values():
                await answer(h, stack)
            for number in numbers:
                done = await calls[number]
                assert done.code == 0, (number, done.out[-3000:])
    finally:
        for task in calls.values():
            task.cancel()
        await wait_all(list(calls.values()), 10)

    codes = await asyncio.to_thread(nodes.stop)
    assert all(code == 0 for code in codes.values()), codes
    await asyncio.to_thread(nodes.start)
    for node in nodes.nodes:
        async with lk_client(node) as lk:
            trunks = await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
            rules = await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())
        assert trunk_id in {t.sip_trunk_id for t in trunks.items}, node.node_id
        assert rule_id in {r.sip_dispatch_rule_id for r in rules.items}, node.node_id
    first = nodes.nodes[0]
    args = ["call", "list", "--redis", first.redis_url, "--redis-prefix", first.prefix, "--json"]
    code, out = await run(sys.executable, "-m", "sipbridge", *args, timeout=20)
    assert code == 0, out
    logged = {entry["call_id"]: entry for entry in json.loads(out)}
    for call_id in call_ids:
        assert call_id in logged, (call_id, sorted(logged))
        assert logged[call_id]["call_status"] == "SCS_DISCONNECTED", logged[call_id]
