"""A room's agent dispatch on a node that cannot offer it elsewhere (a single node: the cluster's
agents are wired but no Redis) waits at once when no worker of its name is here, counted
`no_worker`, without a task per room (issue 18: a room per call started one each); clustered,
it is still offered to the other nodes, through a task."""

from __future__ import annotations

from typing import cast

from sipbridge.rooms import RoomRegistry
from sipbridge.server.agents import AgentService
from sipbridge.server.api.webhooks import WebhookNotifier
from sipbridge.server.cluster.agents import ClusterAgents
from sipbridge.server.cluster.owners import RoomOwners
from sipbridge.server.state.rooms_runtime import RoomsRuntime
from sipbridge.store.redis_rooms import RedisRooms

KEYS = {"key": "secret-secret-secret-secret-secret"}


def single_node() -> tuple[RoomsRuntime, AgentService, ClusterAgents]:
    runtime = RoomsRuntime(RoomRegistry(), WebhookNotifier([], "key", KEYS["key"]), lambda: 1.0)
    agents = AgentService(runtime, KEYS, public_url="")
    cluster = ClusterAgents(RoomOwners("node-a", runtime), agents, KEYS)
    return runtime, agents, cluster


async def test_a_rooms_dispatch_with_no_worker_waits_at_once_on_a_single_node() -> None:
    runtime, agents, cluster = single_node()
    assert not cluster.may_offer()
    for n in range(3):
        runtime.registry.create(f"call-{n}", 1.0)
        runtime.commit()
    assert agents._tasks == set()
    assert agents.stats.get("no_worker") == 3
    waiting = {d.id for room in agents.dispatches.values() for d in room.values()}
    assert len(waiting) == 3 and agents.waiting == waiting


async def test_clustered_a_rooms_dispatch_is_still_offered_elsewhere() -> None:
    runtime, agents, cluster = single_node()
    offered: list[str] = []

    async def offer(room: object, record: object, below: float | None) -> bool:
        offered.append(getattr(room, "name", ""))
        return True  # taken by a worker on another node

    agents.offer_elsewhere = offer
    cluster.owners.store = cast(RedisRooms, object())  # clustered (what `start` sets)
    assert cluster.may_offer()
    runtime.registry.create("call-x", 1.0)
    runtime.commit()
    assert len(agents._tasks) == 1
    await next(iter(agents._tasks))
    assert offered == ["call-x"] and "no_worker" not in agents.stats


async def test_a_rooms_waiting_default_dispatch_is_made_when_looked_at() -> None:
    """Its record (an id, a message) is made only when the records are looked at (issue 18: a
    room per call, most never looked at); as if made at once when they are, and never once the
    room is gone."""
    runtime, agents, _ = single_node()
    for n in range(3):
        runtime.registry.create(f"call-{n}", 1.0)
        runtime.commit()
    assert list(agents.records.unmade) == ["call-0", "call-1", "call-2"]
    assert agents.records.made == {} and agents.records.waiting_ids == set()
    runtime.registry.delete("call-1", 2.0)
    runtime.commit()
    assert list(agents.records.unmade) == ["call-0", "call-2"]
    found = agents.dispatches
    assert sorted(found) == ["call-0", "call-2"] and not agents.records.unmade
    for room, records in found.items():
        (record,) = records.values()
        assert record.room == room and record.agent_name == "" and record.id.startswith("AD_")
        assert record.id in agents.waiting
    assert agents.stats.get("no_worker") == 3
    runtime.registry.delete("call-0", 2.0)
    runtime.commit()
    assert sorted(agents.dispatches) == ["call-2"] and len(agents.waiting) == 1
