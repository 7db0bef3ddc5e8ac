"""Agent workers (`/agent`, WIRE.md s5) and agent dispatch (`livekit.AgentDispatchService`).

`livekit-agents` workers connect over WebSocket with a token granting `agent`, register (our
first message is the register response), report their load and ping. A room gets agents by
dispatch: one per `RoomConfiguration.agents` entry of the room (a SIP dispatch rule's
`room_config`, CreateRoom's), one per `CreateDispatch`, or - when the room names none - one
for the workers registered without an agent name. A job is offered to the least loaded
available worker of that name (`availability`); on acceptance it gets the job's token and URL
(`assignment`), on refusal or silence the next worker is tried. When the room finishes, its
jobs are terminated. Dispatches wait for a worker while none of their name is registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from google.protobuf.message import DecodeError
from livekit.protocol import agent
from livekit.protocol import agent_dispatch as dispatch_proto

from sipbridge import ids
from sipbridge.errors import ApiError
from sipbridge.rooms import events as ev
from sipbridge.server.agent_dispatch import (
    DISPATCH_PREFIX,
    DispatchApi,
    DispatchRecords,
    job_token,
)
from sipbridge.server.api.auth import bearer_token, verify_token
from sipbridge.server.api.twirp import TwirpServer
from sipbridge.server.server_info import server_info
from sipbridge.server.state.rooms_runtime import RoomsRuntime

log = logging.getLogger(__name__)

AVAILABILITY_TIMEOUT_S = 7.5
JOIN_TIMEOUT_S = 10.0  # an assigned job's agent must be in the room by then
MAX_TRIES = 3  # workers offered one dispatch, per round
MAX_ROUNDS = 3  # rounds of offers for one dispatch (a new round when an agent never joined)
MAX_WORKER_MESSAGE = 1024 * 1024
WORKER_PREFIX = "AW_"
JOB_PREFIX = "AJ_"


@dataclass(eq=False, kw_only=True)
class Worker:
    id: str
    agent_name: str
    namespace: str
    job_type: int
    ws: web.WebSocketResponse
    outbox: asyncio.Queue[agent.ServerMessage | None] = field(default_factory=asyncio.Queue)
    load: float = 0.0
    available: bool = True
    jobs: set[str] = field(default_factory=set)

    def send(self, message: agent.ServerMessage) -> None:
        self.outbox.put_nowait(message)


@dataclass(eq=False, kw_only=True)
class RunningJob:
    job: agent.Job
    worker_id: str
    room: str
    identity: str  # the agent participant its token admits
    joined: bool = False
    deadline: asyncio.TimerHandle | None = None  # until its agent joins
    orphaned: bool = False  # its worker is gone; offered anew once its agent is out


class AgentService:
    """The `/agent` endpoint, the dispatch API, and jobs for rooms."""

    def __init__(self, runtime: RoomsRuntime, keys: dict[str, str], public_url: str) -> None:
        self.runtime = runtime
        self.rooms = runtime.registry
        self.keys = keys
        self.public_url = public_url  # the URL workers are told to connect jobs to ("" = theirs)
        self.workers: dict[str, Worker] = {}
        self.records = DispatchRecords()  # the dispatches by room, those waiting
        self.jobs: dict[str, RunningJob] = {}
        self.rounds: dict[str, int] = {}  # dispatch id -> offers made again after a no-show
        self._answers: dict[str, asyncio.Future[agent.AvailabilityResponse]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats: dict[str, int] = {}
        # Workers on other nodes (server/cluster/agents.py): a dispatch is offered there (True:
        # taken, its job in `jobs`) when a worker there is less loaded than ours, `below` (any
        # when None); a job of theirs ended
        # here, or a job of a room there whose worker here is gone (True: its owner told).
        self.offer_elsewhere: Callable[[Any, Any, float | None], Awaitable[bool]] | None = None
        self.elsewhere_possible: Callable[[], bool] = lambda: self.offer_elsewhere is not None
        self.end_elsewhere: Callable[[RunningJob], None] | None = None
        self.lost_elsewhere: Callable[[RunningJob], bool] | None = None
        self.done_elsewhere: Callable[[str], None] | None = None  # its worker ended it here
        kinds = (ev.RoomStarted, ev.ParticipantJoined, ev.ParticipantLeft, ev.RoomFinished)
        runtime.listen(self.on_room_event, kinds)

    @property
    def dispatches(self) -> dict[str, dict[str, dispatch_proto.AgentDispatch]]:
        return self.records.by_room()  # by room

    @property
    def waiting(self) -> set[str]:
        return self.records.waiting()  # dispatch ids no worker anywhere could take

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/agent", self.handle)

    def register(self, twirp: TwirpServer) -> None:
        DispatchApi(self).register(twirp)

    # -- the worker connection -------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        try:
            token = bearer_token(header) if header else request.query.get("access_token", "")
            claims = verify_token(token, self.keys)
            if not claims.video_grant("agent"):
                raise ApiError("permission_denied", "token lacks the agent grant")
        except ApiError as err:
            return web.Response(status=err.http_status, text=err.message)
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=MAX_WORKER_MESSAGE)
        await ws.prepare(request)
        worker: Worker | None = None
        writer: asyncio.Task[None] | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    if msg.type == WSMsgType.TEXT:
                        continue
                    break
                try:
                    message = agent.WorkerMessage.FromString(msg.data)
                except DecodeError:
                    self._count("undecodable")
                    continue
                kind = message.WhichOneof("message")
                if worker is None:
                    if kind != "register":
                        self._count("unregistered_message")
                        break
                    worker = self._register(ws, message.register)
                    writer = asyncio.create_task(self._write(worker), name=f"agent {worker.id}")
                    continue
                self._on_message(worker, kind, message)
        finally:
            if worker is not None:
                self._unregister(worker)
                worker.outbox.put_nowait(None)
            if writer is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
            await ws.close()
        return ws

    def _register(self, ws: web.WebSocketResponse, req: agent.RegisterWorkerRequest) -> Worker:
        worker = Worker(
            id=ids.new_id(WORKER_PREFIX),
            agent_name=req.agent_name,
            namespace=req.namespace,
            job_type=int(req.type),
            ws=ws,
        )
        self.workers[worker.id] = worker
        worker.send(
            agent.ServerMessage(
                register=agent.RegisterWorkerResponse(
                    worker_id=worker.id,
                    server_info=server_info(),
                )
            )
        )
        self._count("registered")
        log.info("agent worker %s registered (agent_name %r)", worker.id, worker.agent_name)
        # Dispatches that waited for a worker of this name.
        for room, found in self.dispatches.items():
            for record in found.values():
                if record.agent_name == worker.agent_name and not self._has_job(record.id):
                    self._spawn(self._dispatch(room, record))
        return worker

    def _unregister(self, worker: Worker) -> None:
        self.workers.pop(worker.id, None)
        for job_id in list(worker.jobs):
            running = self.jobs.pop(job_id, None)
            if running is not None:
                log.info("agent job %s lost its worker", job_id)
                if running.deadline is not None:
                    running.deadline.cancel()
                if running.joined:
                    self.orphan(running)
                else:
                    self._redispatch(running)
        for job_id, answer in list(self._answers.items()):
            if not answer.done() and job_id.startswith(f"{worker.id}:"):
                answer.cancel()

    def _on_message(self, worker: Worker, kind: str | None, message: agent.WorkerMessage) -> None:
        if kind == "ping":
            worker.send(
                agent.ServerMessage(
                    pong=agent.WorkerPong(
                        last_timestamp=message.ping.timestamp,
                        timestamp=int(self.runtime.now() * 1000),
                    )
                )
            )
        elif kind == "update_worker":
            update = message.update_worker
            worker.load = update.load
            if update.HasField("status"):
                worker.available = update.status == agent.WorkerStatus.WS_AVAILABLE
        elif kind == "availability":
            answer = self._answers.get(f"{worker.id}:{message.availability.job_id}")
            if answer is not None and not answer.done():
                answer.set_result(message.availability)
        elif kind == "update_job":
            job_update = message.update_job
            running = self.jobs.get(job_update.job_id)
            if running is not None and job_update.status in (
                agent.JobStatus.JS_SUCCESS,
                agent.JobStatus.JS_FAILED,
            ):
                self.jobs.pop(job_update.job_id, None)
                worker.jobs.discard(job_update.job_id)
                if self.done_elsewhere is not None:  # (a job for a room on another node)
                    self.done_elsewhere(job_update.job_id)
                if job_update.status == agent.JobStatus.JS_FAILED:
                    log.info("agent job %s failed: %s", job_update.job_id, job_update.error)
        else:
            self._count(f"ignored_{kind}")

    async def _write(self, worker: Worker) -> None:
        while (message := await worker.outbox.get()) is not None:
            if worker.ws.closed:
                break
            try:
                await worker.ws.send_bytes(message.SerializeToString())
            except (ConnectionError, RuntimeError):
                break

    # -- dispatch ---------------------------------------------------------------------------

    def on_room_event(self, event: ev.RoomEvent) -> None:
        match event:
            case ev.RoomStarted(room=room):
                live = self.rooms.find(room.name)
                wanted = list(live.agents) if live is not None else []
                if not wanted and self._no_worker(""):  # the default dispatch, waiting: its
                    self.records.unmade[room.name] = None  # record made if ever looked at
                    return
                entries = [(a.agent_name, a.metadata) for a in wanted] or [("", "")]
                for agent_name, metadata in entries:
                    self.add_dispatch(room.name, agent_name, metadata)
            case ev.ParticipantJoined(room=room, participant=p):
                for running in self.jobs.values():
                    if running.room == room.name and running.identity == p.identity:
                        running.joined = True
                        if running.deadline is not None:
                            running.deadline.cancel()
                            running.deadline = None
            case ev.ParticipantLeft(room=room, participant=p):
                for running in list(self.jobs.values()):
                    if running.orphaned and (running.room, running.identity) == (
                        room.name,
                        p.identity,
                    ):
                        self._reoffer(running)
            case ev.RoomFinished(room=room):
                for dispatch_id in self.records.drop_room(room.name):
                    self.rounds.pop(dispatch_id, None)
                    self.records.waiting_ids.discard(dispatch_id)
                for job_id, running in list(self.jobs.items()):
                    if running.room == room.name:
                        self.terminate(job_id)
            case _:
                pass

    def add_dispatch(
        self, room: str, agent_name: str, metadata: str
    ) -> dispatch_proto.AgentDispatch:
        record = dispatch_proto.AgentDispatch(
            id=ids.new_id(DISPATCH_PREFIX), agent_name=agent_name, room=room, metadata=metadata
        )
        self.dispatches.setdefault(room, {})[record.id] = record
        if self.rooms.find(room) is None:
            return record
        if self._no_worker(agent_name):  # waits for a worker to register (`_register`), or
            self.waiting.add(record.id)  # for one on another node once clustered (`offer_waiting`)
            return record
        self._spawn(self._dispatch(room, record))
        return record

    def _no_worker(self, agent_name: str) -> bool:
        """No worker of this name here and no other node to ask (counted): what `_dispatch` finds
        on its first round, known now, without a task for every room (a room per call; issue 18)."""
        if self.elsewhere_possible() or any(
            w.agent_name == agent_name and w.available and w.job_type == agent.JobType.JT_ROOM
            for w in self.workers.values()
        ):
            return False
        self._count("no_worker")
        return True

    def offer_waiting(self, names: set[str]) -> None:
        """The dispatches that found no worker, offered again: a worker of one of `names`
        registered on another node."""
        for room, found in self.dispatches.items():
            for record in found.values():
                if record.id in self.waiting and record.agent_name in names:
                    self.waiting.discard(record.id)
                    self._spawn(self._dispatch(room, record))

    def _has_job(self, dispatch_id: str) -> bool:
        return any(r.job.dispatch_id == dispatch_id for r in self.jobs.values())

    async def _dispatch(
        self,
        room_name: str,
        record: dispatch_proto.AgentDispatch,
        exclude: frozenset[str] = frozenset(),
    ) -> None:
        """Offer the dispatch's job to workers of its name until one takes it (a round of at
        most MAX_TRIES offers, least loaded first, `exclude` never)."""
        tried: set[str] = set(exclude)
        for _ in range(MAX_TRIES):
            room = self.rooms.find(room_name)
            if room is None or record.id not in self.dispatches.get(room_name, {}):
                return
            if self._has_job(record.id):
                return
            candidates = sorted(
                (
                    w
                    for w in self.workers.values()
                    if w.agent_name == record.agent_name
                    and w.available
                    and w.job_type == agent.JobType.JT_ROOM
                    and w.id not in tried
                ),
                key=lambda w: w.load,
            )
            below = candidates[0].load if candidates else None  # a worker elsewhere below it?
            if self.offer_elsewhere is not None and await self.offer_elsewhere(room, record, below):
                return  # taken by a worker on another node
            if not candidates:
                self._count("no_worker")
                self.waiting.add(record.id)
                return  # waits for a worker of this name to register
            worker = candidates[0]
            tried.add(worker.id)
            job = agent.Job(
                id=ids.new_id(JOB_PREFIX),
                dispatch_id=record.id,
                type=agent.JobType.JT_ROOM,
                room=room.to_proto(),
                namespace=worker.namespace,
                metadata=record.metadata,
                agent_name=record.agent_name,
            )
            response = await self.ask_availability(worker, job)
            if response is None:
                continue
            if not response.available or worker.id not in self.workers:
                self._count("job_refused")
                continue
            self.assign(worker, job, response)
            return
        self._count("dispatch_failed")

    async def ask_availability(
        self, worker: Worker, job: agent.Job
    ) -> agent.AvailabilityResponse | None:
        """Offer `job` to `worker`: its answer, or None when none came in time."""
        key = f"{worker.id}:{job.id}"
        answer: asyncio.Future[agent.AvailabilityResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self._answers[key] = answer
        worker.send(agent.ServerMessage(availability=agent.AvailabilityRequest(job=job)))
        try:
            return await asyncio.wait_for(answer, AVAILABILITY_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            self._count("availability_timeout")
            return None
        finally:
            self._answers.pop(key, None)

    def assign(self, worker: Worker, job: agent.Job, response: agent.AvailabilityResponse) -> None:
        identity = response.participant_identity or f"agent-{job.id}"
        token = job_token(self.keys, job, response, identity)
        running = RunningJob(job=job, worker_id=worker.id, room=job.room.name, identity=identity)
        room = self.rooms.find(job.room.name)
        running.joined = room is not None and identity in room.participants
        if not running.joined:
            running.deadline = asyncio.get_running_loop().call_later(
                JOIN_TIMEOUT_S, self.join_timeout, job.id
            )
        self.jobs[job.id] = running
        worker.jobs.add(job.id)
        worker.send(
            agent.ServerMessage(
                assignment=agent.JobAssignment(job=job, token=token, url=self.public_url)
            )
        )
        self._count("assigned")
        log.info("agent job %s for room %s assigned to %s", job.id, job.room.name, worker.id)

    def join_timeout(self, job_id: str) -> None:
        """An assigned job whose agent never joined: ended at its worker, offered anew."""
        running = self.jobs.get(job_id)
        if running is None or running.joined:
            return
        running.deadline = None
        log.warning(
            "agent job %s: %s did not join room %s in %.0f s",
            job_id,
            running.identity,
            running.room,
            JOIN_TIMEOUT_S,
        )
        self._count("join_timeout")
        self.terminate(job_id)
        self._redispatch(running)

    def _redispatch(self, running: RunningJob) -> None:
        """Offer a job that never got its agent into the room again, to other workers."""
        record = self.dispatches.get(running.room, {}).get(running.job.dispatch_id)
        if record is None or self.rooms.find(running.room) is None:
            return
        rounds = self.rounds[record.id] = self.rounds.get(record.id, 0) + 1
        if rounds >= MAX_ROUNDS:
            self._count("dispatch_failed")
            return
        self._spawn(self._dispatch(running.room, record, frozenset({running.worker_id})))

    def orphan(self, running: RunningJob) -> None:
        """A job whose worker is gone after its agent joined (the worker's WebSocket closed, or
        its node died): offered anew, as LiveKit does, once its agent is out of the room (never
        two agents for one dispatch at once)."""
        if self.lost_elsewhere is not None and self.lost_elsewhere(running):
            return  # a job for a room on another node: its owner was told
        running.orphaned = True
        self.jobs[running.job.id] = running
        room = self.rooms.find(running.room)
        if room is None or running.identity not in room.participants:
            self._reoffer(running)

    def _reoffer(self, running: RunningJob) -> None:
        self.jobs.pop(running.job.id, None)
        record = self.dispatches.get(running.room, {}).get(running.job.dispatch_id)
        if record is not None and self.rooms.find(running.room) is not None:
            self._count("redispatched")
            self._spawn(self._dispatch(running.room, record, frozenset({running.worker_id})))

    def terminate(self, job_id: str) -> None:
        running = self.jobs.pop(job_id, None)
        if running is None:
            return
        if running.deadline is not None:
            running.deadline.cancel()
            running.deadline = None
        worker = self.workers.get(running.worker_id)
        if worker is not None:
            worker.jobs.discard(job_id)
            worker.send(agent.ServerMessage(termination=agent.JobTermination(job_id=job_id)))
        elif self.end_elsewhere is not None:
            self.end_elsewhere(running)
        self._count("terminated")

    # -- bookkeeping ------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for worker in list(self.workers.values()):
            with contextlib.suppress(Exception):
                await worker.ws.close()
