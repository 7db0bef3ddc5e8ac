"""Agent workers across nodes (issue 13, docs/cluster.md s5): three `sipbridge serve` nodes on
127.0.0.2-4 and one real redis-server, with workers speaking the `/agent` protocol by hand
(tests/interop/test_agent_protocol.py's FakeWorker) and their agents joining with the raw
signalling client:

- every node's heartbeat advertises its available workers (each agent name's least load), and
  the room's owner offers a dispatch to the least loaded worker of the whole cluster, read from
  the heartbeats: one offer, to that worker's node, none in vain; a job the worker ends is
  ended on the owner too;
- a worker on another node whose WebSocket closes after its agent joined: its node tells the
  owner, which offers the job anew to another node's worker once the agent has left the room;
- a worker's node killed with SIGKILL after its agent joined: the owner finds the node's
  heartbeat gone, the agent out of the room (its relayed WebSocket gone with the node) and
  offers the job to a worker on a live node.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import agent
from livekit.protocol import agent_dispatch as dispatch_proto
from livekit.protocol import room as room_proto

from tests.cluster import Cluster, Node, cluster, lk_client, node_list
from tests.harness import eventually, metric
from tests.interop.test_agent_protocol import FakeWorker, worker
from tests.redis_server import RedisServer, redis_server
from tests.signal_client import SignalClient

pytestmark = pytest.mark.timeout(120)

RELIST_S = 10.0  # a heartbeat lands every second; a busy machine may take longer


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def three(tmp_path: Path, redis: RedisServer) -> Iterator[Cluster]:
    with cluster(tmp_path, redis, 3) as nodes:
        yield nodes
        codes = nodes.stop()
    nodes.assert_clean(codes)


async def advertised(node: Node) -> dict[str, dict[str, float]]:
    """Each live node's advertised workers, as the node list through `node` shows them."""
    return {n["id"]: n["agents"] for n in await node_list(node)}


async def until_advertised(node: Node, expected: dict[str, dict[str, float]]) -> None:
    async def seen() -> bool:
        return await advertised(node) == expected

    await eventually(seen, f"heartbeats advertising {expected}", timeout=RELIST_S)


def agent_stats(node: Node) -> dict[str, float]:
    """`sipbridge_cluster_rooms_total{event="agent_..."}` of a node, by event."""
    prefix = 'sipbridge_cluster_rooms_total{event="agent_'
    return {
        k[len(prefix) :].split('"')[0]: v for k, v in node.metrics().items() if k.startswith(prefix)
    }


async def dispatch(owner: Node, room: str) -> None:
    async with lk_client(owner) as lk:
        await lk.agent_dispatch.create_dispatch(
            dispatch_proto.CreateAgentDispatchRequest(room=room, agent_name="helper")
        )


async def take(w: FakeWorker, room: str, identity: str, timeout: float = 10.0) -> Any:
    """The worker's next offer, for `room`, accepted: its assignment."""
    offer = (await w.receive("availability", timeout=timeout)).availability.job
    assert offer.room.name == room and offer.agent_name == "helper", offer
    await w.answer(offer, True, identity=identity)
    assignment = (await w.receive("assignment")).assignment
    assert assignment.job.id == offer.id and assignment.url == ""  # its own node's
    return assignment


async def join_as_agent(node: Node, room: str, assignment: Any) -> SignalClient:
    """The assigned agent joins `room` through `node` (its worker's) with the job's token."""
    joined = SignalClient(node.url, room, "unused")
    joined.token = assignment.token
    await joined.connect()
    return joined


async def _no_jobs(node: Node) -> bool:
    return await metric(node, "sipbridge_agent_jobs") == 0


async def participants(owner: Node, room: str) -> set[str]:
    async with lk_client(owner) as lk:
        listed = await lk.room.list_participants(room_proto.ListParticipantsRequest(room=room))
    return {p.identity for p in listed.participants}


async def test_a_dispatch_goes_to_the_least_loaded_worker_of_the_cluster(three: Cluster) -> None:
    a, b, c = three.nodes
    async with (
        worker(a, "helper", load=0.75) as on_a,
        worker(b, "helper", load=0.5),
        worker(c, "helper", load=0.25) as on_c,
    ):
        await until_advertised(
            a, {"n0": {"helper": 0.75}, "n1": {"helper": 0.5}, "n2": {"helper": 0.25}}
        )
        await dispatch(a, "desk")  # A's room: A dispatches
        assignment = await take(on_c, "desk", "agent-desk")
        assert agent_stats(a).get("offered") == 1  # C asked, nobody else
        assert agent_stats(a).get("taken_elsewhere") == 1 and agent_stats(c)["taken_here"] == 1
        agent_joined = await join_as_agent(c, "desk", assignment)
        try:
            assert "agent-desk" in await participants(a, "desk")
        finally:
            await agent_joined.close()
        # the worker ends the job: C tells A, which holds the job no more
        assert await metric(a, "sipbridge_agent_jobs") == 1
        await on_c.send(
            agent.WorkerMessage(
                update_job=agent.UpdateJobStatus(
                    job_id=assignment.job.id, status=agent.JobStatus.JS_SUCCESS
                )
            )
        )
        await eventually(lambda: _no_jobs(a), "A's job ended by C's worker")
        assert agent_stats(c).get("done_told") == 1
        # C's worker full: now A's own worker (0.75) is the least loaded but for B's (0.5)
        await on_c.send(
            agent.WorkerMessage(
                update_worker=agent.UpdateWorkerStatus(status=agent.WorkerStatus.WS_FULL, load=1)
            )
        )
        await until_advertised(a, {"n0": {"helper": 0.75}, "n1": {"helper": 0.5}, "n2": {}})
        await on_a.send(
            agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(load=0.125))
        )  # A's own worker the least loaded: it is offered the next job, no node asked
        await until_advertised(a, {"n0": {"helper": 0.125}, "n1": {"helper": 0.5}, "n2": {}})
        await dispatch(a, "desk-2")
        await take(on_a, "desk-2", "agent-desk-2")
        assert agent_stats(a).get("offered") == 1


async def test_a_job_whose_worker_hung_up_is_offered_again(three: Cluster) -> None:
    a, b, c = three.nodes
    async with contextlib.AsyncExitStack() as stack:
        on_c = await stack.enter_async_context(worker(c, "helper", load=0.5))
        async with worker(b, "helper", load=0.125) as on_b:
            await until_advertised(a, {"n0": {}, "n1": {"helper": 0.125}, "n2": {"helper": 0.5}})
            await dispatch(a, "line")
            assignment = await take(on_b, "line", "agent-line")
            agent_joined = await join_as_agent(b, "line", assignment)
            assert "agent-line" in await participants(a, "line")
        # B's worker gone, its agent still in the room: B tells A; nobody is offered the job
        # while the agent is there (never two agents for one dispatch)
        await eventually(lambda: agent_stats(a).get("worker_lost") == 1, "A told", timeout=10)
        assert agent_stats(b).get("lost_told") == 1
        assert "agent-line" in await participants(a, "line")
        await agent_joined.close()  # the agent leaves: the job goes to C's worker
        again = await take(on_c, "line", "agent-line-2", timeout=15)
        assert again.job.id != assignment.job.id
        assert again.job.dispatch_id == assignment.job.dispatch_id
        agent_joined = await join_as_agent(c, "line", again)
        try:
            assert "agent-line-2" in await participants(a, "line")
        finally:
            await agent_joined.close()


async def test_a_job_whose_workers_node_died_is_offered_again(three: Cluster) -> None:
    a, b, c = three.nodes
    async with contextlib.AsyncExitStack() as stack:
        on_c = await stack.enter_async_context(worker(c, "helper", load=0.5))
        on_b = await stack.enter_async_context(worker(b, "helper", load=0.125))
        await until_advertised(a, {"n0": {}, "n1": {"helper": 0.125}, "n2": {"helper": 0.5}})
        await dispatch(a, "hall")
        assignment = await take(on_b, "hall", "agent-hall")
        agent_joined = await join_as_agent(b, "hall", assignment)
        stack.push_async_callback(agent_joined.drop)
        assert "agent-hall" in await participants(a, "hall")
        b.kill()  # the worker's node: its WebSocket and its agent's relayed join go with it
        # A: B's heartbeat expires (5 s), the agent's join ends unresumed (10 s), the job
        # goes to C's worker
        again = await take(on_c, "hall", "agent-hall-2", timeout=30)
        assert again.job.dispatch_id == assignment.job.dispatch_id
        assert agent_stats(a).get("node_lost") == 1
        assert "agent-hall" not in await participants(a, "hall")
