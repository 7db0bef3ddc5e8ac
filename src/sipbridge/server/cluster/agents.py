"""Agent jobs for a room on one node, taken by workers connected to another (docs/cluster.md s5).

A `livekit-agents` worker registers on one node's `/agent`. Every node's heartbeat advertises
its available workers: each agent name with the least load of its workers (`advertised`). The
room's owner dispatches as on one node, except that a worker another node advertises as less
loaded than the owner's own least loaded one (or any, when the owner has none) is offered the
job first, least loaded first - read from the heartbeats, no node asked in vain. The offer is
an HTTP POST to that node (`/sipbridge/v1/cluster/jobs`, the Job as protobuf, a short-lived
token signed with the cluster's key), which offers it to its own workers (availability request,
least loaded first, as on one node) and, when one accepts, assigns it - the job's token names
the owner's room, its URL is the worker's own node, whose WebSocket relay (relay.py) takes the
agent to the owner. The owner keeps the job as its own (a deadline for the agent to join,
re-offered if it never does) and, when the room ends, tells the worker's node to end it
(`/sipbridge/v1/cluster/jobs/end`). A dispatch no worker anywhere could take is offered again
when a node starts advertising a worker of its name.

A worker that is gone after its agent joined - its WebSocket closed (its node tells the owner,
`/sipbridge/v1/cluster/jobs/lost`) or its node dead (its heartbeat expired: the owner looks
every second) - leaves its job orphaned on the owner, which offers it anew once the agent is
out of the room (`AgentService.orphan`), as LiveKit re-dispatches the job of a worker that
disconnects.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web
from google.protobuf.message import DecodeError
from livekit.protocol import agent
from redis.exceptions import RedisError

from sipbridge import ids
from sipbridge.errors import ApiError
from sipbridge.server.agents import (
    AVAILABILITY_TIMEOUT_S,
    JOB_PREFIX,
    JOIN_TIMEOUT_S,
    MAX_TRIES,
    AgentService,
    RunningJob,
)
from sipbridge.server.api.auth import Claims, bearer_token, sign_token, verify_token
from sipbridge.server.cluster.forward import http_address
from sipbridge.server.cluster.owners import RoomOwners
from sipbridge.server.loop_calls import stop_task
from sipbridge.telephony.node_info import HEARTBEAT_S, Agents, NodeInfo, advertise
from sipbridge.telephony.placement import workers_elsewhere

log = logging.getLogger(__name__)

JOBS_PATH = "/sipbridge/v1/cluster/jobs"
END_PATH = "/sipbridge/v1/cluster/jobs/end"
LOST_PATH = "/sipbridge/v1/cluster/jobs/lost"
MAX_ORIGINS = 10_000  # jobs taken here for rooms elsewhere whose owner is remembered
OFFER_TIMEOUT_S = AVAILABILITY_TIMEOUT_S * MAX_TRIES + 2.0
MAX_JOB_BYTES = 256 * 1024


class ClusterAgents:
    def __init__(self, owners: RoomOwners, agents: AgentService, keys: dict[str, str]) -> None:
        self.owners = owners
        self.agents = agents
        self.keys = keys
        self.stats: Counter[str] = Counter()  # offered, taken, refused, ended
        self.where: dict[str, NodeInfo] = {}  # job id -> the node whose worker runs it
        self.origin: dict[str, str] = {}  # job id taken here -> the room's node
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._closed = False
        self._advertised: set[str] = set()  # agent names other nodes advertised at the last look
        agents.offer_elsewhere = self.offer
        agents.elsewhere_possible = self.may_offer
        agents.end_elsewhere = self.end
        agents.lost_elsewhere = self.lost
        agents.done_elsewhere = self.done

    def routes(self, app: web.Application) -> None:
        app.router.add_post(JOBS_PATH, self.take)
        app.router.add_post(END_PATH, self.ended)
        app.router.add_post(LOST_PATH, self.worker_lost)

    def start(self) -> None:
        """With Redis: jobs of workers on dead nodes orphaned, waiting dispatches offered to
        workers that appear elsewhere (one look at the heartbeats a second, when needed)."""
        self._watch = asyncio.create_task(self._watching(), name="agent jobs elsewhere")

    def advertised(self) -> Agents:
        """This node's available workers, for its heartbeat."""
        return advertise(
            (w.agent_name, w.load)
            for w in self.agents.workers.values()
            if w.available and w.job_type == agent.JobType.JT_ROOM
        )

    async def close(self) -> None:
        self._closed = True  # (workers leaving as the node stops offer nothing elsewhere)
        if self._watch is not None:
            await stop_task(self._watch)
            self._watch = None
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self) -> dict[str, str]:
        key, secret = next(iter(self.keys.items()))
        token = sign_token(
            key, secret, ttl_s=60, sub=self.owners.node_id, video={"agent": True, "roomAdmin": True}
        )
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/protobuf"}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    # -- the room's owner ----------------------------------------------------------------------

    def may_offer(self) -> bool:
        """Whether `offer` may find a node: clustered (Redis) and not closing. A single node
        is not: its dispatches with no worker here wait at once, without a task each."""
        return self.owners.clustered and not self._closed

    async def offer(self, room: Any, record: Any, below: float | None) -> bool:
        """`AgentService.offer_elsewhere`: the dispatch `record` for `room` (a rooms model Room)
        offered to the workers other nodes advertise less loaded than `below` (this node's
        least loaded; None: it has none), least loaded first; True when one took it (its job
        then in `jobs`)."""
        if not self.may_offer():
            return False
        try:
            nodes = await self.owners.live_nodes()
        except (RedisError, OSError, TimeoutError):
            return False
        nodes = workers_elsewhere(nodes, record.agent_name, below=below, me=self.owners.node_id)
        job = agent.Job(
            id=ids.new_id(JOB_PREFIX),
            dispatch_id=record.id,
            type=agent.JobType.JT_ROOM,
            room=room.to_proto(),
            metadata=record.metadata,
            agent_name=record.agent_name,
        )
        for node in nodes:
            if self.closing():  # (meanwhile)
                return False
            taken = await self._offer_to(node, job)
            if taken is None:
                continue
            if job.id in self.agents.jobs or self.agents.rooms.find(room.name) is None:
                self._spawn(self._end_at(node, job.id))  # the room ended meanwhile
                return True
            running = RunningJob(job=job, worker_id=taken[0], room=room.name, identity=taken[1])
            running.deadline = asyncio.get_running_loop().call_later(
                JOIN_TIMEOUT_S, self.agents.join_timeout, job.id
            )
            self.agents.jobs[job.id] = running
            self.where[job.id] = node
            self.stats["taken_elsewhere"] += 1
            log.info("agent job %s for room %s taken on node %s", job.id, room.name, node.id)
            return True
        return False

    async def _offer_to(self, node: NodeInfo, job: agent.Job) -> tuple[str, str] | None:
        self.stats["offered"] += 1
        url = f"http://{http_address(node)}{JOBS_PATH}"
        try:
            async with self._client().post(
                url,
                data=job.SerializeToString(),
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=OFFER_TIMEOUT_S),
            ) as reply:
                if reply.status != 200:
                    return None
                answer = await reply.json()
            return str(answer["worker"]), str(answer["identity"])
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
            log.info("agent job %s: node %s did not answer: %s", job.id, node.id, exc)
            return None

    def end(self, running: RunningJob) -> None:
        """`AgentService.end_elsewhere`: a job whose worker is on another node ended here."""
        node = self.where.pop(running.job.id, None)
        if node is not None:
            self._spawn(self._end_at(node, running.job.id))

    async def _end_at(self, node: NodeInfo, job_id: str) -> None:
        url = f"http://{http_address(node)}{END_PATH}"
        try:
            async with self._client().post(
                url,
                data=job_id.encode(),
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=5),
            ):
                self.stats["ended_elsewhere"] += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("agent job %s: its end not told to node %s: %s", job_id, node.id, exc)

    async def _watching(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if not self.where and not self.agents.waiting:
                self._advertised = set()
                continue
            try:
                nodes = await self.owners.live_nodes()
            except (RedisError, OSError, TimeoutError):
                continue
            self._look(nodes)

    def _look(self, nodes: list[NodeInfo]) -> None:
        """Jobs whose worker's node is gone orphaned; dispatches that wait offered again when
        another node starts advertising a worker of their name (once: a worker that refuses is
        not asked again every second)."""
        live = {n.id for n in nodes}
        for job_id, node in list(self.where.items()):
            if node.id not in live:
                self.where.pop(job_id, None)
                running = self.agents.jobs.get(job_id)
                if running is not None:
                    self.stats["node_lost"] += 1
                    log.info("agent job %s: the node of its worker, %s, is gone", job_id, node.id)
                    self.agents.orphan(running)
        names = {
            name
            for n in nodes
            if n.id != self.owners.node_id and n.state == "serving"
            for name, _ in n.agents
        }
        appeared, self._advertised = names - self._advertised, names
        if appeared and self.agents.waiting:
            self.agents.offer_waiting(appeared)

    def closing(self) -> bool:
        return self._closed

    def _spawn(self, work: Any) -> None:
        if self._closed:
            work.close()
            return
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the worker's node ---------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> Claims:
        claims = verify_token(bearer_token(request.headers.get("Authorization")), self.keys)
        if not (claims.video_grant("agent") and claims.video_grant("roomAdmin")):
            raise ApiError("permission_denied", "requires the agent and roomAdmin grants")
        return claims

    async def take(self, request: web.Request) -> web.Response:
        """A job for a room on another node, offered to this node's workers."""
        try:
            claims = self._authorize(request)
            body = await request.content.read(MAX_JOB_BYTES + 1)
            if len(body) > MAX_JOB_BYTES:
                raise ApiError("malformed", "job too large")
            job = agent.Job.FromString(body)
        except DecodeError:
            return web.Response(status=400, text="undecodable job")
        except ApiError as err:
            return web.Response(status=err.http_status, text=err.message)
        agents = self.agents
        tried: set[str] = set()
        for _ in range(MAX_TRIES):
            candidates = sorted(
                (
                    w
                    for w in agents.workers.values()
                    if w.agent_name == job.agent_name
                    and w.available
                    and w.job_type == agent.JobType.JT_ROOM
                    and w.id not in tried
                ),
                key=lambda w: w.load,
            )
            if not candidates:
                break
            worker = candidates[0]
            tried.add(worker.id)
            job.namespace = worker.namespace
            response = await agents.ask_availability(worker, job)
            if response is None or not response.available or worker.id not in agents.workers:
                continue
            agents.assign(worker, job, response)
            running = agents.jobs[job.id]
            running.joined = True  # its agent joins the room's own node, not this one
            if running.deadline is not None:
                running.deadline.cancel()
                running.deadline = None
            self.stats["taken_here"] += 1
            self.origin[job.id] = claims.identity  # the room's node (its token's subject)
            while len(self.origin) > MAX_ORIGINS:
                self.origin.pop(next(iter(self.origin)))
            answer = {"worker": worker.id, "identity": running.identity}
            return web.Response(text=json.dumps(answer), content_type="application/json")
        self.stats["refused_here"] += 1
        return web.Response(status=404, text="no worker took the job")

    async def ended(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
        except ApiError as err:
            return web.Response(status=err.http_status, text=err.message)
        job_id = (await request.content.read(256)).decode(errors="replace")
        self.origin.pop(job_id, None)
        self.agents.terminate(job_id)
        return web.Response(text="ok\n")

    def lost(self, running: RunningJob) -> bool:
        """`AgentService.lost_elsewhere`: a worker here that ran a job for a room on another
        node is gone; that node is told (True), and re-dispatches the job."""
        owner = self.origin.pop(running.job.id, None)
        if owner is None:
            return False
        self._spawn(self._tell(owner, LOST_PATH, running.job.id))
        return True

    def done(self, job_id: str) -> None:
        """`AgentService.done_elsewhere`: a worker here ended (JS_SUCCESS, JS_FAILED) a job for a
        room on another node; that node ends it too (else it would still count the job, and
        offer it again should this node die later)."""
        owner = self.origin.pop(job_id, None)
        if owner is not None:
            self._spawn(self._tell(owner, END_PATH, job_id))

    async def _tell(self, owner: str, path: str, job_id: str) -> None:
        """The room's node `owner` told of job `job_id` (its worker gone, or the job ended)."""
        try:
            node = next((n for n in await self.owners.live_nodes() if n.id == owner), None)
        except (RedisError, OSError, TimeoutError):
            node = None
        if node is None:
            log.info("agent job %s: its room's node %s is gone", job_id, owner)
            return
        url = f"http://{http_address(node)}{path}"
        try:
            async with self._client().post(
                url, data=job_id.encode(), headers=self._headers(), timeout=aiohttp.ClientTimeout(5)
            ):
                self.stats["lost_told" if path == LOST_PATH else "done_told"] += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("agent job %s: %s not told to %s: %s", job_id, path, owner, exc)

    async def worker_lost(self, request: web.Request) -> web.Response:
        """The node of a job's worker says the worker is gone: the job is orphaned here."""
        try:
            self._authorize(request)
        except ApiError as err:
            return web.Response(status=err.http_status, text=err.message)
        job_id = (await request.content.read(256)).decode(errors="replace")
        running = self.agents.jobs.get(job_id)
        if running is not None and self.where.pop(job_id, None) is not None:
            self.stats["worker_lost"] += 1
            log.info("agent job %s: its worker on another node is gone", job_id)
            self.agents.orphan(running)
        return web.Response(text="ok\n")
