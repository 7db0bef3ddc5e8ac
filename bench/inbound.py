"""Inbound call benchmark: sipp calls a real `sipbridge serve` at rising rates into rooms set up
through the official `livekit-api` client, until the first failed call or the server falling
behind, in two modes, each on a fresh server:
- shared: every caller in one direct-rule room;
- individual: every caller in a room of its own (an individual rule without the random suffix),
  the bench joining each room as the answering participant (`RoomAgents`).

    .venv/bin/python bench/inbound.py [--modes shared,individual] [--rates 100,200,...,1000]
                                      [--seconds 10] [--hold-ms 1000] [--memory-calls 1000]

Goals (issue 18): 1,000 answered calls/s in either mode with every call completed and logged,
INVITE->100 p99 under 5 ms at 500 calls/s.

Who answers: a test subscriber in the bench process, "agent", joined to the room over the
WebSocket signalling (tests/signal_client.py). For every SIP participant in its participant
updates it calls RoomService.UpdateSubscriptions through the official client, which answers a
ringing call in the model. The server also answers a call at once when another SIP participant
is already in the room (SIP-BEHAVIOUR.md s1); in one direct room with overlapping calls that is
most calls. The output counts both: "subscriber" when the 200 came after the subscriber's
request, "bridge" when before it. The subscriber's cost is in every figure: one WebSocket
update per participant change and one UpdateSubscriptions request per call.

Per step (sipp `-r RATE -m RATE*SECONDS -d HOLD`, bench/sipp/uac_inbound_timed.xml):
- calls/s: completed calls over the span from the first to the last INVITE sent;
- INVITE->100, INVITE->180, INVITE->200: from sipp's `-trace_shortmsg` timestamps, taken when
  the INVITE is sent and each response received (microseconds); sipp's own `-trace_rtt`
  durations go in the JSON as a cross-check only: they are whole ms of a 4 ms clock here;
- INVITE->visible: INVITE sent (sipp) to the first participant update carrying the SIP
  participant received by the subscriber over its WebSocket (same host, same wall clock). The
  180 goes out right after the participant is in the model (ListParticipants sees it), so
  INVITE->180 is the server-side figure and INVITE->visible what another participant sees;
- CPU of the server, sipp and the bench process (the subscriber) over the step, and the
  system's UDP receive-buffer drops; in brackets, the server's main thread alone: its event
  loop, which runs every call's Python and is the limit as it nears 100% (the rest is the SIP
  reader, the media engine and sender and the call log's writer, each a thread of its own);
- kept up: INVITE->100 and INVITE->180 p99 under 500 ms (T1, when INVITEs start to be
  retransmitted; the 180 follows the call's setup, so a backlog of calls waiting to be set up
  shows there while the 100 still goes out at once), and at least 90% of the asked rate
  achieved. A step that completes every call only because it is short, with the server's
  backlog growing, does not count toward the headline calls/s.
A step fails on any failed call: sipp's exit status, or a call without the 200 to its BYE in
sipp's trace. The steps stop at the first step failed or not kept up: past that point sipp's
retransmissions still complete every call, slowly, while the server's backlog grows.
sipp's floor: the same scenario against a responder that answers at once, measured first.

Memory per active call (shared mode), on the fresh server before the rate steps (after 200
warm-up calls): server VmRSS with --memory-calls calls up at once (long hold) minus VmRSS idle
just before, divided by the calls up. The calls are less than 20 s old: their INVITE
transactions are kept.

Call log: after the server stopped, `sipbridge call list` must show every call of every step
with a final status; the counts per step are printed, and the headline calls/s counts only steps
whose calls are all there.

Every loop is bounded in count and time; only 127.0.0.1; every process started is stopped.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from livekit import api
from livekit.protocol import models, room, rtc, sip
from tests.helpers import API_KEY, API_SECRET, ServerProcess, free_sip_port
from tests.signal_client import SignalClient, join_query, join_token

from bench.common import (
    children_cpu,
    cpu_seconds,
    print_result,
    self_cpu,
    thread_cpu,
    udp_rcvbuf_errors,
)

T = TypeVar("T")
SCENARIO = Path(__file__).resolve().parent / "sipp" / "uac_inbound_timed.xml"
ROOM = "bench"
INDIVIDUAL_PREFIX = "call"
CALLED = "+15105550100"
AGENT = "agent"
MAX_STEPS = 20
MAX_CALLS_TOTAL = 200_000
MAX_SIGNAL_MESSAGES = 5_000_000
MAX_AGENT_SOCKETS = 10_000  # the answering agents' WebSockets open at once (individual mode)
KEPT_UP_P99_MS = 500.0
GOAL_CALLS_PER_S = 1000  # issue 18: answered calls/s on one node, shared room or one each
LATENCY_RATE = 500  # issue 18: INVITE->100 p99 under 5 ms at this rate
SIP = models.ParticipantInfo.Kind.SIP
DIALOG_HEADERS = (b"via", b"from", b"to", b"call-id", b"cseq")
LEAVE = rtc.SignalRequest(
    leave=rtc.LeaveRequest(reason=models.DisconnectReason.CLIENT_INITIATED)
).SerializeToString()


# -- processes and the system, read from /proc ---------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- the test subscriber -------------------------------------------------------------------------


@dataclass
class Subscriber:
    """Joins the room as AGENT and subscribes to every SIP participant's audio through
    RoomService.UpdateSubscriptions, as an agent listening to callers would."""

    lk: api.LiveKitAPI
    client: SignalClient
    seen: dict[str, float] = field(default_factory=dict)  # SIP Call-ID -> first update (wall)
    asked: dict[str, float] = field(default_factory=dict)  # SIP Call-ID -> subscribe sent (wall)
    errors: int = 0
    messages: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self) -> None:
        while self.messages < MAX_SIGNAL_MESSAGES:
            msg = await self.client.received.get()
            self.messages += 1
            if msg.WhichOneof("message") == "update":
                self.consider(ROOM, msg.update.participants)

    def consider(self, room_name: str, participants: Iterable[models.ParticipantInfo]) -> bool:
        """Subscribe to each new SIP participant's track; True once one was asked for."""
        now = time.time()
        asked = False
        for p in participants:
            if p.kind != SIP:
                continue
            call_id = p.attributes.get("sip.callIDFull", "")
            if not call_id or len(self.seen) >= MAX_CALLS_TOTAL:
                continue
            self.seen.setdefault(call_id, now)
            if (
                p.tracks
                and call_id not in self.asked
                and p.state != models.ParticipantInfo.State.DISCONNECTED
            ):
                self.asked[call_id] = time.time()
                task = asyncio.create_task(self._subscribe(room_name, p.tracks[0].sid))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                asked = True
        return asked

    async def _subscribe(self, room_name: str, track_sid: str) -> None:
        try:
            await self.lk.room.update_subscriptions(
                room.UpdateSubscriptionsRequest(
                    room=room_name, identity=AGENT, track_sids=[track_sid], subscribe=True
                )
            )
        except Exception:  # the caller may already have hung up: the track is gone
            self.errors += 1


@dataclass
class RoomAgents:
    """One room per caller (an individual dispatch rule without the random suffix, so the room
    of call n of step s is `call_+1<s>555<n>`): for every call the bench joins its room as AGENT
    over the signalling WebSocket when sipp's schedule sends the INVITE, subscribes to the
    caller's track as in the shared room (through the same `Subscriber`), and leaves once the
    caller left - what an agent answering each call in its own room does, signalling only."""

    url: str
    sub: Subscriber
    session: aiohttp.ClientSession
    joined: int = 0
    failed: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, step: int, rate: int, calls: int, hold_ms: int) -> None:
        began = time.monotonic()
        linger = hold_ms / 1000 + 30
        for n in range(1, min(calls, MAX_CALLS_TOTAL) + 1):
            delay = began + (n - 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._agent(f"{INDIVIDUAL_PREFIX}_+1{step}555{n}", linger))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _agent(self, room_name: str, linger: float) -> None:
        token = join_token(room_name, AGENT)
        try:
            async with asyncio.timeout(linger):
                ws = await self.session.ws_connect(
                    f"{self.url.replace('http://', 'ws://')}/rtc/v1?join_request={join_query()}",
                    headers={"Authorization": f"Bearer {token}"},
                )
                self.joined += 1
                try:
                    await self._follow(room_name, ws)
                finally:
                    # as the SDKs leave a room (Room.disconnect): a leave first, so the server
                    # removes the agent now instead of holding it for a resume
                    if not ws.closed:
                        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                            await ws.send_bytes(LEAVE)
                    await ws.close()
        except (TimeoutError, aiohttp.ClientError):
            self.failed += 1

    async def _follow(self, room_name: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Read the room's updates until the caller was asked for and has left (bounded)."""
        asked = False
        for _ in range(1000):
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                return
            response = rtc.SignalResponse.FromString(msg.data)
            kind = response.WhichOneof("message")
            if kind == "join":
                people: Iterable[models.ParticipantInfo] = response.join.other_participants
            elif kind == "update":
                people = response.update.participants
            else:
                continue
            asked = self.sub.consider(room_name, people) or asked
            if asked and any(
                p.kind == SIP and p.state == models.ParticipantInfo.State.DISCONNECTED
                for p in people
            ):
                return


# -- sipp ---------------------------------------------------------------------------------------


@dataclass
class SippRun:
    rc: int
    calls: int
    wall_s: float
    sipp_cpu_s: float
    completed: list[dict[str, float | str | None]]
    call_ids: set[str]
    rtt: dict[str, list[float]]
    errors: list[str]
    output_tail: str


async def run_sipp(
    workdir: Path, sip_port: int, *, rate: int, calls: int, hold_ms: int, step: int
) -> SippRun:
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    msg_file, err_file = workdir / "messages.tsv", workdir / "errors.log"
    limit = int(calls / rate + hold_ms / 1000 + 30)
    cmd = [
        "timeout", "-k", "5", "-s", "INT", str(limit + 10),
        "sipp", f"127.0.0.1:{sip_port}", "-sf", str(SCENARIO),
        "-i", "127.0.0.1", "-p", str(free_sip_port()), "-mp", str(free_sip_port()),
        "-m", str(calls), "-r", str(rate), "-d", str(hold_ms), "-key", "step", str(step),
        "-nostdin", "-buff_size", "4194304",
        "-trace_shortmsg", "-shortmessage_file", str(msg_file),
        "-trace_err", "-error_file", str(err_file),
        "-trace_rtt", "-rtt_freq", "1",
        "-timeout", f"{limit}s", "-timeout_error",
    ]  # fmt: skip
    cpu_before = children_cpu()
    began = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit + 30)
    except TimeoutError:
        proc.terminate()  # timeout(1) passes it on to sipp
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 10)
        except TimeoutError:
            proc.kill()
            out, _ = await proc.communicate()
    wall = time.perf_counter() - began
    completed, call_ids = _calls(msg_file, calls)
    rtt, errors = _rtt_and_errors(workdir, calls)
    return SippRun(
        rc=proc.returncode if proc.returncode is not None else -1,
        calls=calls,
        wall_s=wall,
        sipp_cpu_s=children_cpu() - cpu_before,
        completed=completed,
        call_ids=call_ids,
        rtt=rtt,
        errors=errors,
        output_tail="\n".join(out.decode(errors="replace").strip().splitlines()[-6:]),
    )


def _calls(path: Path, calls: int) -> tuple[list[dict[str, float | str | None]], set[str]]:
    """From sipp's `-trace_shortmsg` lines (date, time, epoch seconds with microseconds, S or R,
    Call-ID, CSeq, first line): for every completed call (the 200 to its BYE received) when its
    first INVITE was sent and its first 100, 180 and 200 arrived; and every Call-ID."""
    if not path.exists():
        return [], set()
    stamps: dict[str, dict[str, float]] = {}
    with open(path, errors="replace") as f:
        for _, text in zip(range(calls * 20 + 100), f, strict=False):
            parts = text.rstrip("\n").split("\t")
            if len(parts) < 7:
                continue
            at, direction, call_id, cseq, first = float(parts[2]), parts[3], *parts[4:7]
            call = stamps.setdefault(call_id, {})
            if direction == "S" and first.startswith("INVITE"):
                call.setdefault("inv", at)
            elif direction == "R" and cseq.endswith("INVITE") and first.count(" ") >= 1:
                status = first.split(" ", 2)[1]
                if status in ("100", "180", "200"):
                    call.setdefault(f"t{status}", at)
            elif direction == "R" and cseq.endswith("BYE") and first.startswith("SIP/2.0 200"):
                call["done"] = at
    completed: list[dict[str, float | str | None]] = [
        {
            "call_id": call_id,
            "inv": call["inv"],
            "t100": call.get("t100"),
            "t180": call.get("t180"),
            "t200": call.get("t200"),
        }
        for call_id, call in stamps.items()
        if "done" in call and "inv" in call
    ]
    return completed, set(stamps)


def _rtt_and_errors(workdir: Path, calls: int) -> tuple[dict[str, list[float]], list[str]]:
    rtt: dict[str, list[float]] = {"r100": [], "r200": []}
    for csv in workdir.glob("*_rtt.csv"):
        for row in csv.read_text().splitlines()[1 : 2 * calls + 2]:
            parts = row.split(";")
            if len(parts) == 3 and parts[2] in rtt:
                rtt[parts[2]].append(float(parts[1]))
    errors = []
    err_file = workdir / "errors.log"
    if err_file.exists():
        with open(err_file, errors="replace") as f:
            for _, line in zip(range(100_000), f, strict=False):
                # "Dead call" notes are answers to retransmissions after a call ended: no failure.
                if line.strip() and "Dead call" not in line and line[:1].isdigit():
                    errors.append(line.strip()[:300])
                if len(errors) >= 5:
                    break
    return rtt, errors


# -- sipp's own floor ---------------------------------------------------------------------------


class InstantUas(threading.Thread):
    """A responder with no work to do: 100, 180, 200 at once to an INVITE, 200 to a BYE. What
    sipp measures against it is sipp's own share of every figure."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.stop = threading.Event()

    def run(self) -> None:
        for _ in range(MAX_CALLS_TOTAL * 4):
            if self.stop.is_set():
                break
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            method = data.split(b" ", 1)[0]
            if method not in (b"INVITE", b"BYE"):
                continue
            head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
            keep = [h for h in head if h.split(b":", 1)[0].strip().lower() in DIALOG_HEADERS]
            tagged = [h + b";tag=uas" if h.lower().startswith(b"to:") else h for h in keep]
            contact = b"Contact: <sip:uas@127.0.0.1:%d>" % self.port
            statuses = (b"100 Trying", b"180 Ringing", b"200 OK") if method == b"INVITE" else ()
            for status in statuses or (b"200 OK",):
                headers = keep if status.startswith(b"100") else tagged
                self.sock.sendto(
                    b"SIP/2.0 %s\r\n%s\r\n%s\r\nContent-Length: 0\r\n\r\n"
                    % (status, b"\r\n".join(headers), contact),
                    addr,
                )
        self.sock.close()


async def sipp_floor(work: Path) -> dict[str, object]:
    uas = InstantUas()
    uas.start()
    try:
        run = await run_sipp(work / "floor", uas.port, rate=50, calls=100, hold_ms=0, step=98)
    finally:
        uas.stop.set()
        await asyncio.to_thread(uas.join, 2)
    return {
        "completed": len(run.completed),
        "invite_100_ms": dist_ms(_deltas(run.completed, "t100")),
        "invite_200_ms": dist_ms(_deltas(run.completed, "t200")),
    }


# -- figures ------------------------------------------------------------------------------------


def _deltas(calls: list[dict[str, float | str | None]], key: str) -> list[float]:
    out = []
    for call in calls:
        sent, got = call["inv"], call[key]
        if isinstance(sent, float) and isinstance(got, float):
            out.append((got - sent) * 1000)
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def dist_ms(values: list[float]) -> dict[str, float | int | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {
        "n": len(values),
        "p50": r(statistics.median(values)) if values else None,
        "p99": r(pct(values, 0.99)),
        "max": r(max(values)) if values else None,
    }


def step_figures(
    *,
    rate: int,
    run: SippRun,
    sub: Subscriber,
    server_cpu_s: float,
    loop_cpu_s: float,
    bench_cpu_s: float,
    rss: int,
    udp_drops: int,
) -> dict[str, object]:
    calls = run.completed
    sent = [c["inv"] for c in calls if isinstance(c["inv"], float)]
    span = (max(sent) - min(sent)) if len(sent) > 1 else 0.0
    achieved = (len(sent) - 1) / span if span > 0 else 0.0
    visible = []
    by_subscriber = by_bridge = 0
    for call in calls:
        call_id, invite, answered = str(call["call_id"]), call["inv"], call["t200"]
        assert isinstance(invite, float)
        if call_id in sub.seen:
            visible.append((sub.seen[call_id] - invite) * 1000)
        asked = sub.asked.get(call_id)
        if asked is not None and isinstance(answered, float) and answered >= asked:
            by_subscriber += 1
        else:
            by_bridge += 1
    failed = run.calls - len(calls)
    invite_100 = dist_ms(_deltas(calls, "t100"))
    invite_180 = dist_ms(_deltas(calls, "t180"))
    ok = failed == 0 and run.rc == 0
    return {
        "rate": rate,
        "calls": run.calls,
        "completed": len(calls),
        "failed": failed,
        "ok": ok,
        "kept_up": ok
        and all(
            d["p99"] is not None and d["p99"] < KEPT_UP_P99_MS  # type: ignore[operator]
            for d in (invite_100, invite_180)
        )
        and achieved >= 0.9 * rate,
        "sipp_rc": run.rc,
        "calls_per_s": round(achieved, 1),
        "invite_100_ms": invite_100,
        "invite_180_ms": invite_180,
        "invite_visible_ms": dist_ms(visible),
        "invite_200_ms": dist_ms(_deltas(calls, "t200")),
        "sipp_rtt_csv_ms": {k: dist_ms(v) for k, v in run.rtt.items()},
        "answered_by_subscriber": by_subscriber,
        "answered_by_bridge": by_bridge,
        "cpu_pct": {
            "server": round(server_cpu_s / run.wall_s * 100, 1),
            "server_loop": round(loop_cpu_s / run.wall_s * 100, 1),
            "sipp": round(run.sipp_cpu_s / run.wall_s * 100, 1),
            "bench": round(bench_cpu_s / run.wall_s * 100, 1),
        },
        "server_cpu_ms_per_call": round(server_cpu_s / len(calls) * 1000, 2) if calls else None,
        "server_loop_cpu_ms_per_call": (
            round(loop_cpu_s / len(calls) * 1000, 2) if calls else None
        ),
        "udp_rcvbuf_drops": udp_drops,
        "wall_s": round(run.wall_s, 2),
        "server_rss_kib": rss,
        "sipp_errors": run.errors if not ok else [],
        "sipp_tail": run.output_tail if not ok else "",
    }


# -- the run ------------------------------------------------------------------------------------


async def sip_count(lk: api.LiveKitAPI) -> int:
    listed = await lk.room.list_participants(room.ListParticipantsRequest(room=ROOM))
    return sum(1 for p in listed.participants if p.kind == SIP)


async def in_own_rooms(lk: api.LiveKitAPI) -> int:
    """Participants (callers and the bench's agents) still in the callers' own rooms."""
    listed = await lk.room.list_rooms(room.ListRoomsRequest())
    return sum(
        r.num_participants for r in listed.rooms if r.name.startswith(f"{INDIVIDUAL_PREFIX}_")
    )


async def wait_drained(lk: api.LiveKitAPI, timeout: float, mode: str = "shared") -> int:
    """Wait until no SIP participant is left in the room (no one in the callers' own rooms);
    returns how many are left."""
    count = sip_count if mode == "shared" else in_own_rooms
    deadline = time.monotonic() + timeout
    left = await count(lk)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        left = await count(lk)
    return left


async def setup(lk: api.LiveKitAPI, mode: str) -> None:
    await lk.sip.create_inbound_trunk(
        sip.CreateSIPInboundTrunkRequest(
            trunk=sip.SIPInboundTrunkInfo(
                name="carrier",
                numbers=[CALLED],
                headers_to_attributes={"X-Customer-Id": "customer.id"},
                include_headers=sip.SIPHeaderOptions.SIP_X_HEADERS,
            )
        )
    )
    await lk.sip.create_dispatch_rule(
        sip.CreateSIPDispatchRuleRequest(
            dispatch_rule=sip.SIPDispatchRuleInfo(
                rule=sip.SIPDispatchRule(
                    dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name=ROOM)
                )
                if mode == "shared"
                else sip.SIPDispatchRule(
                    dispatch_rule_individual=sip.SIPDispatchRuleIndividual(
                        room_prefix=INDIVIDUAL_PREFIX, no_randomness=True
                    )
                ),
                attributes={"team": "support"},
            )
        )
    )


async def memory_phase(
    lk: api.LiveKitAPI, pid: int, sip_port: int, work: Path, args: argparse.Namespace
) -> tuple[dict[str, object], list[SippRun]]:
    """Server RSS with `n` calls up at once minus idle RSS, per call."""
    n, rate = args.memory_calls, args.memory_rate
    warm = await run_sipp(work / "warm-up", sip_port, rate=100, calls=200, hold_ms=500, step=96)
    await wait_drained(lk, 30)
    await asyncio.sleep(2.0)  # the call log written, the INVITE transactions still lingering
    idle = rss_kib(pid)
    hold_ms = int((n / rate + 10) * 1000)
    task = asyncio.create_task(
        run_sipp(work / "memory", sip_port, rate=rate, calls=n, hold_ms=hold_ms, step=97)
    )
    up = 0
    deadline = time.monotonic() + hold_ms / 1000
    while time.monotonic() < deadline and not task.done() and up < n:
        up = await sip_count(lk)
        await asyncio.sleep(0.25)
    await asyncio.sleep(1.0)  # all answered, the call log written
    loaded, up = rss_kib(pid), await sip_count(lk)
    run = await task
    left = await wait_drained(lk, 30)
    await asyncio.sleep(1.0)
    after = rss_kib(pid)
    return {
        "calls_up": up,
        "asked": n,
        "rate": rate,
        "idle_rss_kib": idle,
        "loaded_rss_kib": loaded,
        "after_rss_kib": after,
        "kib_per_call": round((loaded - idle) / up, 1) if up else None,
        "completed": len(run.completed),
        "left_in_room": left,
    }, [warm, run]


async def bench(
    args: argparse.Namespace, server: ServerProcess, sip_port: int, work: Path, mode: str
) -> tuple[dict[str, object], list[tuple[str, SippRun]]]:
    assert server.proc is not None
    pid = server.proc.pid
    rates = [int(r) for r in args.rates.split(",")][:MAX_STEPS]
    runs: list[tuple[str, SippRun]] = []
    floor = await sipp_floor(work)
    memory: dict[str, object] = {}
    async with api.LiveKitAPI(url=server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        await setup(lk, mode)
        client = SignalClient(server.url, ROOM, AGENT)
        await client.connect()
        sub = Subscriber(lk, client)
        listener = asyncio.create_task(sub.run())
        # One WebSocket per call up (ringing, the hold, the hangup): aiohttp's default pool of
        # 100 connections queued the joins past 100 calls up (about 80 calls/s with a 1 s hold),
        # which showed as seconds of INVITE->200 with the server half idle.
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_AGENT_SOCKETS))
        agents = RoomAgents(server.url, sub, http)
        steps: list[dict[str, object]] = []
        try:
            if args.memory_calls and mode == "shared":
                memory, memory_runs = await memory_phase(lk, pid, sip_port, work, args)
                runs += [("warm-up", memory_runs[0]), ("memory", memory_runs[1])]
                print(_memory_line(memory), file=sys.stderr, flush=True)
            print(HEADER, file=sys.stderr, flush=True)
            for i, rate in enumerate(rates):
                calls = max(1, int(rate * args.seconds))
                server_cpu, bench_cpu, drops = cpu_seconds(pid), self_cpu(), udp_rcvbuf_errors()
                loop_cpu = thread_cpu(pid, pid)
                calling = run_sipp(
                    work / f"step{i}",
                    sip_port,
                    rate=rate,
                    calls=calls,
                    hold_ms=args.hold_ms,
                    step=i,
                )
                if mode == "shared":
                    run = await calling
                else:
                    run, _ = await asyncio.gather(calling, agents.run(i, rate, calls, args.hold_ms))
                runs.append((f"{rate}/s", run))
                figures = step_figures(
                    rate=rate,
                    run=run,
                    sub=sub,
                    server_cpu_s=cpu_seconds(pid) - server_cpu,
                    loop_cpu_s=thread_cpu(pid, pid) - loop_cpu,
                    bench_cpu_s=self_cpu() - bench_cpu,
                    rss=rss_kib(pid),
                    udp_drops=udp_rcvbuf_errors() - drops,
                )
                steps.append(figures)
                print(_row(figures), file=sys.stderr, flush=True)
                figures["left_in_room"] = left = await wait_drained(lk, 30, mode)
                if not figures["kept_up"] or left:
                    break
        finally:
            for agent in list(agents.tasks):
                agent.cancel()
            await http.close()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            for task in list(sub.tasks):
                task.cancel()
            await client.close()
    results = {
        "steps": steps,
        "memory": memory,
        "sipp_floor": floor,
        "subscribe_requests": len(sub.asked),
        "subscribe_errors": sub.errors,
        "room_agents": {"joined": agents.joined, "failed": agents.failed},
    }
    return results, runs


def call_log_audit(db: Path, runs: list[tuple[str, SippRun]]) -> list[dict[str, object]]:
    """After the server stopped: every call of every run in `sipbridge call list`, and with a
    final status (disconnected)."""
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "sipbridge", "call", "list"),
            *("--db", str(db), "--json", "--limit", str(MAX_CALLS_TOTAL)),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    status = {
        c.get("sip_call_id", ""): c.get("call_status", "")
        for c in json.loads(proc.stdout, strict=False)
    }
    audit = []
    for name, run in runs:
        logged = [status[c] for c in run.call_ids if c in status]
        audit.append(
            {
                "run": name,
                "calls": len(run.call_ids),
                "in_call_log": len(logged),
                "final": sum(1 for s in logged if s == "SCS_DISCONNECTED"),
            }
        )
    return audit


HEADER = (
    f"{'rate':>5} {'calls':>6} {'fail':>4} {'calls/s':>7} {'kept up':>7} "
    f"{'100 p50/p99 ms':>15} {'180 p50/p99 ms':>15} {'visible p50/p99':>16} "
    f"{'200 p50/p99 ms':>15} {'subscr/bridge':>13} {'cpu srv(loop)/sipp/bench %':>27} "
    f"{'udp drop':>8}"
)


def _pair(d: object) -> str:
    assert isinstance(d, dict)
    if d["p50"] is None:
        return "-"
    return f"{d['p50']:.2f}/{d['p99']:.2f}"


def _row(s: dict[str, object]) -> str:
    cpu = s["cpu_pct"]
    assert isinstance(cpu, dict)
    cpu_text = f"{cpu['server']}({cpu['server_loop']})/{cpu['sipp']}/{cpu['bench']}"
    return (
        f"{s['rate']:>5} {s['calls']:>6} {s['failed']:>4} {s['calls_per_s']:>7} "
        f"{'yes' if s['kept_up'] else 'no':>7} "
        f"{_pair(s['invite_100_ms']):>15} {_pair(s['invite_180_ms']):>15} "
        f"{_pair(s['invite_visible_ms']):>16} {_pair(s['invite_200_ms']):>15} "
        f"{str(s['answered_by_subscriber']) + '/' + str(s['answered_by_bridge']):>13} "
        f"{cpu_text:>27} "
        f"{s['udp_rcvbuf_drops']:>8}"
    )


def _memory_line(mem: dict[str, object]) -> str:
    return (
        f"memory: {mem['calls_up']} calls up, server RSS idle {mem['idle_rss_kib']} KiB -> "
        f"{mem['loaded_rss_kib']} KiB = {mem['kib_per_call']} KiB per active call "
        f"({mem['after_rss_kib']} KiB after they ended)"
    )


def summarise(results: dict[str, object]) -> dict[str, object]:
    steps = results["steps"]
    audit = results["call_log"]
    assert isinstance(steps, list) and isinstance(audit, list)
    logged = {a["run"] for a in audit if a["calls"] == a["in_call_log"] == a["final"]}
    for s in steps:
        s["call_log_complete"] = f"{s['rate']}/s" in logged
    at_500 = next((s for s in steps if s["rate"] == LATENCY_RATE), None)
    p99 = at_500["invite_100_ms"]["p99"] if at_500 else None
    kept_up = max(
        (s["calls_per_s"] for s in steps if s["kept_up"] and s["call_log_complete"]), default=0.0
    )
    completed = max((s["calls_per_s"] for s in steps if s["ok"]), default=0.0)
    mem = results["memory"]
    assert isinstance(mem, dict)
    return {
        "max_calls_per_s": kept_up,
        "max_calls_per_s_all_completed": completed,
        "max_calls_per_s_kept_up_log_ignored": max(
            (s["calls_per_s"] for s in steps if s["kept_up"]), default=0.0
        ),
        "first_failed_rate": next((s["rate"] for s in steps if not s["ok"]), None),
        "first_behind_rate": next((s["rate"] for s in steps if not s["kept_up"]), None),
        "invite_100_p99_ms_at_500": p99,
        "kib_per_active_call": mem.get("kib_per_call"),
        "goal_rate_met": kept_up >= GOAL_CALLS_PER_S,
        "goal_latency_met": p99 is not None and p99 < 5 and bool(at_500 and at_500["ok"]),
    }


def _run(coro: Coroutine[object, object, T]) -> T:
    try:
        import uvloop  # noqa: PLC0415 - the lighter loop for the subscriber when installed

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,200,300,400,500,600,800,1000")
    parser.add_argument(
        "--modes",
        default="shared,individual",
        help="shared: every caller in one direct-rule room; individual: a room each",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per rate step")
    parser.add_argument("--hold-ms", type=int, default=1000, help="call length after the 200")
    parser.add_argument("--memory-calls", type=int, default=1000, help="0 skips the phase")
    parser.add_argument("--memory-rate", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep sipp traces and the server log")
    args = parser.parse_args()
    if not shutil.which("sipp"):
        print("sipp is required (Debian package sip-tester)", file=sys.stderr)
        return 2
    if not 0 < args.seconds <= 60 or args.memory_calls > 20_000 or args.memory_rate <= 0:
        print("--seconds in (0, 60], --memory-calls at most 20000", file=sys.stderr)
        return 2
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in ("shared", "individual") for m in modes):
        print("--modes: shared, individual or both", file=sys.stderr)
        return 2
    lines = {mode: run_mode(args, mode) for mode in modes}
    for mode, line in lines.items():
        print_mode(mode, line)
    print_result({
        "bench": "inbound",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "seconds_per_step": args.seconds,
        "hold_ms": args.hold_ms,
        "answering": "subscriber (UpdateSubscriptions per call) + the server's bridge rule",
        "modes": lines,
    })  # fmt: skip
    return 0


def run_mode(args: argparse.Namespace, mode: str) -> dict[str, object]:
    """One fresh server, the steps of one mode, the call log audited; the mode's figures."""
    print(f"-- {mode}", file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-inbound-"))
    sip_port = free_sip_port()
    server = ServerProcess(
        tmp,
        "--sip",
        f"127.0.0.1:{sip_port}",
        "--max-calls",
        "100000",
        "--sip-rate",
        "1000000",
        "--room-join-rate",
        "0",
    )
    try:
        server.start()
        results, runs = _run(bench(args, server, sip_port, tmp, mode))
        server.stop(timeout=60)
        results["call_log"] = call_log_audit(server.db, runs)
    finally:
        if server.proc is not None:
            with contextlib.suppress(Exception):
                server.stop(timeout=60)
        if args.keep:
            print(f"kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return {**summarise(results), **results}


def print_mode(mode: str, results: dict[str, object]) -> None:
    print(f"-- {mode}: " + (
        "every caller in one direct-rule room" if mode == "shared"
        else "every caller in a room of its own (individual rule), the bench joining each"
    ))  # fmt: skip
    print(HEADER)
    for s in results["steps"]:  # type: ignore[attr-defined]
        print(_row(s))
    floor = results["sipp_floor"]
    assert isinstance(floor, dict)
    print(
        f"sipp's own floor (same scenario against an instant responder): INVITE->100 "
        f"{_pair(floor['invite_100_ms'])} ms, INVITE->200 {_pair(floor['invite_200_ms'])} ms"
    )
    if results["memory"]:
        print(_memory_line(results["memory"]))  # type: ignore[arg-type]
    print(
        "call log (calls / in `call list` / final status): "
        + ", ".join(
            f"{a['run']} {a['calls']}/{a['in_call_log']}/{a['final']}"
            for a in results["call_log"]  # type: ignore[attr-defined]
        )
    )
    print(
        f"max calls/s, every call completed, the server keeping up and the call log complete: "
        f"{results['max_calls_per_s']} (call log ignored: "
        f"{results['max_calls_per_s_kept_up_log_ignored']}; every call completed: "
        f"{results['max_calls_per_s_all_completed']}; first failed call at "
        f"{results['first_failed_rate']}/s, first step behind at "
        f"{results['first_behind_rate']}/s); INVITE->100 p99 at {LATENCY_RATE} calls/s: "
        f"{results['invite_100_p99_ms_at_500']} ms. Goals: >= {GOAL_CALLS_PER_S} calls/s "
        f"{'met' if results['goal_rate_met'] else 'NOT met'}, p99 < 5 ms "
        f"{'met' if results['goal_latency_met'] else 'NOT met'}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
