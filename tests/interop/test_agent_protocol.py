"""The `/agent` worker protocol and AgentDispatchService, spoken by hand against a real server
(WIRE.md s5): registration, job offers to the least loaded worker, refusal going to the next,
assignment tokens, termination when the room ends, explicit dispatch through `livekit-api`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aiohttp
import jwt
import pytest
from livekit import api
from livekit.protocol import agent, room
from livekit.protocol import agent_dispatch as dispatch

from tests.harness import eventually, leave_clean, metric, module_server
from tests.helpers import API_SECRET, ServerProcess, token
from tests.signal_client import SignalClient

JOIN_TIMEOUT_S = 10.0  # server/agents.py


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module (a start costs more than most tests here)."""
    yield from module_server(tmp_path_factory, "agent-protocol")


@pytest.fixture
async def server(shared_server: ServerProcess) -> AsyncIterator[ServerProcess]:
    """The module's server (and `lk`'s). After each test its rooms are deleted, which ends
    their jobs, and no worker nor job is left: the next test's workers are offered only the
    rooms it makes."""
    yield shared_server
    await leave_clean(shared_server)

    async def idle() -> bool:
        return (
            await metric(shared_server, "sipbridge_agent_workers") == 0
            and await metric(shared_server, "sipbridge_agent_jobs") == 0
        )

    await eventually(idle, "no agent worker nor job left on the shared server")


class FakeWorker:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.worker_id = ""

    async def send(self, message: agent.WorkerMessage) -> None:
        await self.ws.send_bytes(message.SerializeToString())

    async def receive(self, kind: str, timeout: float = 5.0) -> agent.ServerMessage:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                message = agent.ServerMessage.FromString(msg.data)
                if message.WhichOneof("message") == kind:
                    return message

    async def answer(self, job: agent.Job, available: bool, identity: str = "") -> None:
        await self.send(
            agent.WorkerMessage(
                availability=agent.AvailabilityResponse(
                    job_id=job.id, available=available, participant_identity=identity
                )
            )
        )


@asynccontextmanager
async def worker(
    server: ServerProcess, agent_name: str = "", load: float = 0.0
) -> AsyncIterator[FakeWorker]:
    headers = {"Authorization": f"Bearer {token(api.VideoGrants(agent=True))}"}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{server.url}/agent", headers=headers) as ws,
    ):
        fake = FakeWorker(ws)
        await fake.send(
            agent.WorkerMessage(
                register=agent.RegisterWorkerRequest(
                    type=agent.JobType.JT_ROOM, agent_name=agent_name, version="test"
                )
            )
        )
        registered = await fake.receive("register")
        fake.worker_id = registered.register.worker_id
        assert fake.worker_id.startswith("AW_")
        await fake.send(
            agent.WorkerMessage(
                update_worker=agent.UpdateWorkerStatus(
                    status=agent.WorkerStatus.WS_AVAILABLE, load=load
                )
            )
        )
        # The server handles a worker's messages in order, one at a time: the pong to a ping sent
        # after the load update says the update is in.
        await fake.send(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=1)))
        assert (await fake.receive("pong")).pong.last_timestamp == 1
        yield fake


async def test_a_new_room_is_offered_to_the_unnamed_worker_then_terminated(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    async with worker(server) as w:
        await w.send(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=7)))
        assert (await w.receive("pong")).pong.last_timestamp == 7
        await lk.room.create_room(room.CreateRoomRequest(name="lobby"))
        offer = (await w.receive("availability")).availability.job
        assert offer.id.startswith("AJ_") and offer.room.name == "lobby"
        assert offer.type == agent.JobType.JT_ROOM and offer.dispatch_id.startswith("AD_")
        await w.answer(offer, True, identity="agent-lobby")
        assignment = (await w.receive("assignment")).assignment
        assert assignment.job.id == offer.id
        claims = jwt.decode(assignment.token, API_SECRET, algorithms=["HS256"])
        assert claims["sub"] == "agent-lobby" and claims["kind"] == "agent"
        assert claims["video"]["room"] == "lobby" and claims["video"]["agent"] is True
        assert claims["video"]["roomJoin"] is True
        await lk.room.delete_room(room.DeleteRoomRequest(room="lobby"))
        ended = await w.receive("termination")
        assert ended.termination.job_id == offer.id


async def test_a_refused_job_goes_to_the_next_least_loaded_worker(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    async with worker(server, load=0.1) as idle, worker(server, load=0.6) as busy:
        await lk.room.create_room(room.CreateRoomRequest(name="queue"))
        first = (await idle.receive("availability")).availability.job
        await idle.answer(first, False)
        second = (await busy.receive("availability")).availability.job
        assert second.room.name == "queue" and second.dispatch_id == first.dispatch_id
        await busy.answer(second, True)
        assert (await busy.receive("assignment")).assignment.job.id == second.id


async def test_an_agent_that_never_joins_is_ended_and_the_job_offered_again(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    """A worker accepts but its agent never joins: after the join timeout (10 s) its job is
    terminated and offered to another worker, whose agent does join (a signalling client
    with the assignment's token); the room and the participant in it are unharmed."""
    # the server is the module's: its counter is read as what this test added to it
    timeouts_before = await metric(server, 'sipbridge_agent_total{outcome="join_timeout"}')
    async with worker(server, load=0.0) as idle, worker(server, load=0.5) as other:
        await lk.room.create_room(room.CreateRoomRequest(name="noshow"))
        caller = SignalClient(server.url, "noshow", "caller")
        await caller.connect()
        first = (await idle.receive("availability")).availability.job
        await idle.answer(first, True, identity="ghost")
        assert (await idle.receive("assignment")).assignment.job.id == first.id
        # ... and nothing joins as "ghost"
        ended = await idle.receive("termination", timeout=15)
        assert ended.termination.job_id == first.id
        second = (await other.receive("availability", timeout=5)).availability.job
        assert second.dispatch_id == first.dispatch_id and second.id != first.id
        await other.answer(second, True, identity="real-agent")
        assignment = (await other.receive("assignment")).assignment
        agent_client = SignalClient(server.url, "noshow", "real-agent")
        agent_client.token = assignment.token  # joins as the job's agent
        await agent_client.connect()
        listed = await lk.room.list_participants(room.ListParticipantsRequest(room="noshow"))
        assert {p.identity for p in listed.participants} == {"caller", "real-agent"}
        # The behaviour under test: past the join timeout, the agent that joined is left alone.
        await asyncio.sleep(JOIN_TIMEOUT_S + 1)
        listed = await lk.room.list_participants(room.ListParticipantsRequest(room="noshow"))
        assert {p.identity for p in listed.participants} == {"caller", "real-agent"}
        await agent_client.close()
        await caller.close()
        metrics = await asyncio.to_thread(server.metrics)
        timeouts = metrics['sipbridge_agent_total{outcome="join_timeout"}'] - timeouts_before
        assert timeouts == 1, metrics


async def test_a_worker_gone_before_its_agent_joined_has_its_job_offered_again(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    async with worker(server, load=0.5) as other:
        async with worker(server, load=0.0) as leaving:
            await lk.room.create_room(room.CreateRoomRequest(name="crash"))
            first = (await leaving.receive("availability")).availability.job
            await leaving.answer(first, True)
            await leaving.receive("assignment")
        # its connection closed with the job assigned and no agent in the room
        second = (await other.receive("availability", timeout=5)).availability.job
        assert second.dispatch_id == first.dispatch_id and second.room.name == "crash"


async def test_a_worker_gone_after_its_agent_joined_has_its_job_offered_once_the_agent_left(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    """As LiveKit re-dispatches the job of a worker that disconnects - but not while its agent
    is still in the room (never two agents for one dispatch)."""
    async with worker(server, load=0.5) as other:
        async with worker(server, load=0.0) as leaving:
            await lk.room.create_room(room.CreateRoomRequest(name="orphan"))
            first = (await leaving.receive("availability")).availability.job
            await leaving.answer(first, True, identity="agent-orphan")
            assignment = (await leaving.receive("assignment")).assignment
            agent_in_room = SignalClient(server.url, "orphan", "unused")
            agent_in_room.token = assignment.token
            await agent_in_room.connect()
        # the worker gone, its agent still there: the job is kept, offered to nobody (what
        # the other worker gets up to the pong to a ping sent after the server saw it go)
        await eventually(
            lambda: _counted(server, "sipbridge_agent_workers", 1), "the worker to be gone"
        )
        await other.send(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=2)))
        assert await _kinds_until_pong(other) == []
        listed = await lk.room.list_participants(room.ListParticipantsRequest(room="orphan"))
        assert [p.identity for p in listed.participants] == ["agent-orphan"]
        await agent_in_room.close()  # the agent leaves: its job goes to the other worker
        second = (await other.receive("availability", timeout=5)).availability.job
        assert second.dispatch_id == first.dispatch_id and second.id != first.id
        assert second.room.name == "orphan"


async def _kinds_until_pong(w: FakeWorker) -> list[str | None]:
    kinds = []
    async with asyncio.timeout(5):
        while True:
            msg = await w.ws.receive()
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            kind = agent.ServerMessage.FromString(msg.data).WhichOneof("message")
            if kind == "pong":
                return kinds
            kinds.append(kind)


async def _counted(server: ServerProcess, name: str, value: float) -> bool:
    return await metric(server, name) == value


async def test_explicit_dispatch_through_the_api(server: ServerProcess, lk: api.LiveKitAPI) -> None:
    async with worker(server, agent_name="receptionist") as named:
        created = await lk.agent_dispatch.create_dispatch(
            dispatch.CreateAgentDispatchRequest(
                agent_name="receptionist", room="desk", metadata='{"lang":"en"}'
            )
        )
        assert created.id.startswith("AD_") and created.room == "desk"
        offer = (await named.receive("availability")).availability.job
        assert offer.agent_name == "receptionist" and offer.metadata == '{"lang":"en"}'
        assert offer.dispatch_id == created.id
        await named.answer(offer, True)
        await named.receive("assignment")
        listed = await lk.agent_dispatch.list_dispatch("desk")
        assert created.id in {d.id for d in listed}
        await lk.agent_dispatch.delete_dispatch(created.id, "desk")
        assert (await named.receive("termination")).termination.job_id == offer.id
        assert created.id not in {d.id for d in await lk.agent_dispatch.list_dispatch("desk")}


async def test_workers_without_the_grant_or_registration_are_refused(
    server: ServerProcess,
) -> None:
    async with aiohttp.ClientSession() as session:
        grant = api.VideoGrants(room_list=True)
        plain = {"Authorization": f"Bearer {token(grant, identity='someone')}"}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{server.url}/agent", headers=plain)
        assert refused.value.status == 403
        headers = {"Authorization": f"Bearer {token(api.VideoGrants(agent=True))}"}
        async with session.ws_connect(f"{server.url}/agent", headers=headers) as ws:
            # anything before `register` ends the connection
            await ws.send_bytes(
                agent.WorkerMessage(ping=agent.WorkerPing(timestamp=1)).SerializeToString()
            )
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
