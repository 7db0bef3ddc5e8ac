"""bench/cluster.py's calls: inbound calls in a room each, answered on the node that holds the
room, and the extra latency of a room held by another node.

A room each: an individual dispatch rule without the random suffix puts call n of step s
(caller +1<s>555<n>, bench/sipp/uac_inbound_timed.xml) into room `call_+1<s>555<n>`, which
the node the INVITE lands on creates and owns (docs/cluster.md s3: the INVITE claims
`room:{name}` in Redis before the room is made). `Answerers` does what an agent answering each
call in its own room does, signalling only: it reads the room's owner from Redis (one MGET every
5 ms for every room still awaited, from sipp's schedule on), joins the room there as "agent"
over the signalling WebSocket, subscribes to the caller's track through that node's
RoomService (which answers the call, SIP-BEHAVIOUR.md s1) and leaves once the caller left. So
nothing crosses nodes: each node serves the calls Kamailio gave it, and the answering costs
(one join, one UpdateSubscriptions a call) are on the node that holds the call, as in a real
deployment whose agents join the room where it lives.

The remote-room latency (`latency`): two nodes, A and B, a direct-rule room "timed" on A held
open by one caller (so every further caller into it is answered at once: another SIP
participant is there); sipp calls A and B in alternate rounds at a low rate, B proxying its
INVITEs to A (docs/cluster.md s4): INVITE->200 from sipp's microsecond timestamps; then
ListParticipants on the room through A and through B, alternately, one request at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import redis.asyncio as aioredis
from livekit import api
from livekit.protocol import models, room, rtc, sip
from tests.cluster import Node
from tests.helpers import API_KEY, API_SECRET, free_sip_port
from tests.signal_client import join_query, join_token

from bench import inbound
from bench.common import children_cpu

T = TypeVar("T")
ROOM_PREFIX = "call"
AGENT = "agent"
LATENCY_ROOM = "timed"
LATENCY_CALLED = "+15105550199"
FOLLOW_CONTACT = Path(__file__).resolve().parent / "sipp" / "uac_follow_contact_timed.xml"
POLL_S = 0.005
MAX_POLLS = 200_000  # 1000 s of 5 ms polls: past any run
MAX_MESSAGES_PER_ROOM = 1000
SIP = models.ParticipantInfo.Kind.SIP
DISCONNECTED = models.ParticipantInfo.State.DISCONNECTED


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """uvloop when installed: the answerers' share of the machine as small as it gets."""
    try:
        import uvloop  # noqa: PLC0415

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def clients(nodes: Sequence[Node]) -> dict[str, api.LiveKitAPI]:
    return {
        n.node_id: api.LiveKitAPI(url=n.url, api_key=API_KEY, api_secret=API_SECRET) for n in nodes
    }


async def setup_rules(lk: api.LiveKitAPI) -> None:
    """The carrier's trunk and two rules: a room each for the load (the bench's called
    number), one direct room for the latency measure (LATENCY_CALLED)."""
    await lk.sip.create_inbound_trunk(
        sip.CreateSIPInboundTrunkRequest(
            trunk=sip.SIPInboundTrunkInfo(
                name="carrier",
                numbers=[inbound.CALLED, LATENCY_CALLED],
                headers_to_attributes={"X-Customer-Id": "customer.id"},
                include_headers=sip.SIPHeaderOptions.SIP_X_HEADERS,
            )
        )
    )
    for number, rule in (
        (
            inbound.CALLED,
            sip.SIPDispatchRule(
                dispatch_rule_individual=sip.SIPDispatchRuleIndividual(
                    room_prefix=ROOM_PREFIX, no_randomness=True
                )
            ),
        ),
        (
            LATENCY_CALLED,
            sip.SIPDispatchRule(
                dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name=LATENCY_ROOM)
            ),
        ),
    ):
        await lk.sip.create_dispatch_rule(
            sip.CreateSIPDispatchRuleRequest(
                dispatch_rule=sip.SIPDispatchRuleInfo(
                    rule=rule, numbers=[number], attributes={"team": "support"}
                )
            )
        )


# -- the answerers ------------------------------------------------------------------------------


@dataclass
class Answerers:
    """An answering agent per call, on the node that owns the call's room (see the module)."""

    nodes: dict[str, Node]
    apis: dict[str, api.LiveKitAPI]
    redis: aioredis.Redis
    key_prefix: str
    session: aiohttp.ClientSession
    seen: dict[str, float] = field(default_factory=dict)  # SIP Call-ID -> first seen (wall)
    asked: dict[str, float] = field(default_factory=dict)  # SIP Call-ID -> subscribe sent (wall)
    landed: Counter[str] = field(default_factory=Counter)  # rooms per owner node
    failed: int = 0
    subscribe_errors: int = 0
    pending: dict[str, asyncio.Future[str]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, nodes: Sequence[Node], apis: dict[str, api.LiveKitAPI], key_prefix: str
    ) -> AsyncIterator[Answerers]:
        r = aioredis.Redis.from_url(nodes[0].redis_url)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        made = cls({n.node_id: n for n in nodes}, apis, r, key_prefix, session)
        poller = asyncio.create_task(made._poll())
        try:
            yield made
        finally:
            poller.cancel()
            for task in list(made.tasks):
                task.cancel()
            await asyncio.gather(poller, *made.tasks, return_exceptions=True)
            await session.close()
            await r.aclose()

    async def run(self, step: int, rate: int, calls: int, hold_ms: int) -> None:
        """An agent per call of sipp's schedule (`-r rate`), each started when its INVITE is
        due; returns when every one has ended (bounded by its linger)."""
        began = time.monotonic()
        linger = calls / rate + hold_ms / 1000 + 30
        started: list[asyncio.Task[None]] = []
        for n in range(1, min(calls, inbound.MAX_CALLS_TOTAL) + 1):
            delay = began + (n - 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._agent(f"{ROOM_PREFIX}_+1{step}555{n}", linger))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            started.append(task)
        await asyncio.gather(*started, return_exceptions=True)

    async def _poll(self) -> None:
        """Every 5 ms: the owners of the rooms awaited, in one MGET."""
        for _ in range(MAX_POLLS):
            await asyncio.sleep(POLL_S)
            if not self.pending:
                continue
            names = list(self.pending)
            try:
                owners = await self.redis.mget([f"{self.key_prefix}room:{n}" for n in names])
            except Exception:  # counted by the agents that time out
                continue
            for name, owner in zip(names, owners, strict=True):
                waiting = self.pending.get(name)
                if owner and waiting is not None and not waiting.done():
                    waiting.set_result(owner.decode())

    async def _agent(self, room_name: str, linger: float) -> None:
        waiting: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.pending[room_name] = waiting
        try:
            async with asyncio.timeout(linger):
                owner = await waiting
                self.pending.pop(room_name, None)
                self.landed[owner] += 1
                node = self.nodes[owner]
                ws = await self.session.ws_connect(
                    f"{node.url.replace('http://', 'ws://')}/rtc/v1?join_request={join_query()}",
                    headers={"Authorization": f"Bearer {join_token(room_name, AGENT)}"},
                )
                try:
                    await self._follow(room_name, owner, ws)
                finally:
                    await ws.close()
        except (TimeoutError, aiohttp.ClientError, KeyError):
            self.failed += 1
        finally:
            self.pending.pop(room_name, None)

    async def _follow(
        self, room_name: str, owner: str, ws: aiohttp.ClientWebSocketResponse
    ) -> None:
        """Read the room's updates until the caller was asked for and has left (bounded)."""
        asked = False
        for _ in range(MAX_MESSAGES_PER_ROOM):
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                return
            response = rtc.SignalResponse.FromString(msg.data)
            kind = response.WhichOneof("message")
            people: Iterable[models.ParticipantInfo]
            if kind == "join":
                people = response.join.other_participants
            elif kind == "update":
                people = response.update.participants
            else:
                continue
            asked = self._consider(room_name, owner, people) or asked
            if asked and any(p.kind == SIP and p.state == DISCONNECTED for p in people):
                return

    def _consider(
        self, room_name: str, owner: str, participants: Iterable[models.ParticipantInfo]
    ) -> bool:
        now = time.time()
        asked = False
        for p in participants:
            call_id = p.attributes.get("sip.callIDFull", "") if p.kind == SIP else ""
            if not call_id:
                continue
            self.seen.setdefault(call_id, now)
            if p.tracks and call_id not in self.asked and p.state != DISCONNECTED:
                self.asked[call_id] = time.time()
                task = asyncio.create_task(self._subscribe(owner, room_name, p.tracks[0].sid))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                asked = True
        return asked

    async def _subscribe(self, owner: str, room_name: str, track_sid: str) -> None:
        try:
            await self.apis[owner].room.update_subscriptions(
                room.UpdateSubscriptionsRequest(
                    room=room_name, identity=AGENT, track_sids=[track_sid], subscribe=True
                )
            )
        except Exception:  # the caller may already have hung up: the track is gone
            self.subscribe_errors += 1


async def in_rooms(lk: api.LiveKitAPI) -> int:
    """Participants (callers and agents) still in the callers' rooms, on every node (ListRooms
    on any node asks them all)."""
    listed = await lk.room.list_rooms(room.ListRoomsRequest())
    return sum(r.num_participants for r in listed.rooms if r.name.startswith(f"{ROOM_PREFIX}_"))


async def wait_drained(lk: api.LiveKitAPI, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    left = await in_rooms(lk)
    while left and time.monotonic() < deadline:  # bounded by the deadline
        await asyncio.sleep(0.2)
        left = await in_rooms(lk)
    return left


# -- the remote room's latency --------------------------------------------------------------


async def sipp_to(
    workdir: Path, target: str, *, calls: int, rate: int, hold_ms: int, step: int
) -> inbound.SippRun:
    """sipp calls LATENCY_CALLED at `target` (HOST:PORT), following the 200's Contact
    (bench/sipp/uac_follow_contact_timed.xml), traced as in bench/inbound.py."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    msg_file = workdir / "messages.tsv"
    limit = int(calls / rate + hold_ms / 1000 + 30)
    cmd = [
        "timeout", "-k", "5", "-s", "INT", str(limit + 10),
        "sipp", target, "-sf", str(FOLLOW_CONTACT), "-key", "called", LATENCY_CALLED,
        "-i", "127.0.0.1", "-p", str(free_sip_port()), "-mp", str(free_sip_port()),
        "-m", str(calls), "-r", str(rate), "-d", str(hold_ms), "-key", "step", str(step),
        "-nostdin", "-trace_shortmsg", "-shortmessage_file", str(msg_file),
        "-timeout", f"{limit}s", "-timeout_error",
    ]  # fmt: skip
    cpu_before = children_cpu()
    began = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit + 30)
    except (asyncio.CancelledError, TimeoutError):
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()  # timeout(1) passes it on to sipp
        await asyncio.wait_for(proc.wait(), 10)
        raise
    completed, call_ids = inbound._calls(msg_file, calls)
    return inbound.SippRun(
        rc=proc.returncode if proc.returncode is not None else -1,
        calls=calls,
        wall_s=time.perf_counter() - began,
        sipp_cpu_s=children_cpu() - cpu_before,
        completed=completed,
        call_ids=call_ids,
        rtt={},
        errors=[],
        output_tail="\n".join(out.decode(errors="replace").strip().splitlines()[-6:]),
    )


async def sip_in_room(lk: api.LiveKitAPI, name: str) -> int:
    listed = await lk.room.list_participants(room.ListParticipantsRequest(room=name))
    return sum(1 for p in listed.participants if p.kind == SIP)


async def latency(
    a: Node, b: Node, work: Path, *, rounds: int, calls: int, rate: int, requests: int
) -> dict[str, Any]:
    """INVITE->200 and ListParticipants for a room A holds, asked of A and of B."""
    lk = clients((a, b))
    try:
        await setup_rules(lk[a.node_id])
        await asyncio.sleep(0.5)  # (the rules reach B within 100 ms)
        hold_ms = int((rounds * 2 * (calls / rate + 3) + requests * 0.05 + 30) * 1000)
        anchor = asyncio.create_task(
            sipp_to(work / "anchor", a.sip, calls=1, rate=1, hold_ms=hold_ms, step=90)
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not anchor.done():  # bounded: 10 s
            with contextlib.suppress(api.TwirpError):
                if await sip_in_room(lk[a.node_id], LATENCY_ROOM):
                    break
            await asyncio.sleep(0.1)
        invite: dict[str, list[float]] = {a.node_id: [], b.node_id: []}
        failed: Counter[str] = Counter()
        for i in range(rounds):
            for node in (a, b) if i % 2 == 0 else (b, a):  # alternated: the load changes
                run = await sipp_to(
                    work / f"latency-{node.node_id}-{i}",
                    node.sip,
                    calls=calls,
                    rate=rate,
                    hold_ms=0,
                    step=91 + i,
                )
                invite[node.node_id] += inbound._deltas(run.completed, "t200")
                failed[node.node_id] += run.calls - len(run.completed)
        api_ms: dict[str, list[float]] = {a.node_id: [], b.node_id: []}
        for _ in range(requests):
            for node in (a, b):
                started = time.perf_counter()
                await lk[node.node_id].room.list_participants(
                    room.ListParticipantsRequest(room=LATENCY_ROOM)
                )
                api_ms[node.node_id].append((time.perf_counter() - started) * 1000)
        # The anchor's room closed: A hangs up on it, and its sipp ends.
        await lk[a.node_id].room.delete_room(room.DeleteRoomRequest(room=LATENCY_ROOM))
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(anchor, 15)
    finally:
        for client in lk.values():
            await client.aclose()

    def dist(values: list[float]) -> dict[str, float | int | None]:
        d = inbound.dist_ms(values)
        d["mean"] = round(statistics.fmean(values), 3) if values else None
        return d

    inv = {k: dist(v) for k, v in invite.items()}
    lst = {k: dist(v) for k, v in api_ms.items()}

    def extra(d: dict[str, dict[str, float | int | None]]) -> float | None:
        here, there = d[a.node_id]["p50"], d[b.node_id]["p50"]
        if isinstance(here, float | int) and isinstance(there, float | int):
            return round(float(there) - float(here), 3)
        return None

    return {
        "owner": a.node_id,
        "invite_200_ms": {"at_owner": inv[a.node_id], "via_other": inv[b.node_id]},
        "invite_failed": dict(failed),
        "invite_200_extra_p50_ms": extra(inv),
        "list_participants_ms": {"at_owner": lst[a.node_id], "via_other": lst[b.node_id]},
        "list_participants_extra_p50_ms": extra(lst),
    }
