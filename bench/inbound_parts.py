"""Pieces of an inbound call's CPU outside the SIP stack and the room model, in-process, for the
cuts bench/inbound.py is too noisy to resolve (issue 18). Run it on the compiled build (the
mode is printed) and alternate with another tree.

    PYTHONPATH=src:. .venv/bin/python bench/inbound_parts.py [--rate 200] [--seconds 4]

- objects: the SDP offer sipp sends parsed (`sdp.parse_sdp`); a call's RTP leg negotiated on a
  real socket and released (`MediaService.negotiate` + `release`, the offer parsed, the answer
  built); a leg's quality snapshot as the call log keeps it (`leg_quality(...).as_dict()`); the
  telephony objects of a call (`MediaPolicy`, `InboundCall`, `DeadlineReached`, `Call.start`);
  a call's `call_end` line in each log format (written to memory).
- call's domain (`domain`): what `telephony/inbound.py` works out for bench/inbound.py's call
  (its INVITE's headers, the bench's trunk with `headers_to_attributes` and X- headers
  included, its direct rule with an attribute): the participant's 22 attributes
  (`inbound_attributes`), the trunk and the rule (`match_trunk` + `select_rule`), the
  identity, name and room.
- silent tick: a mixing room of 300 RTP legs whose callers send nothing, ticked by the media
  clock every 20 ms (its sends through the compiled sender, to loopback ports nobody reads):
  the event loop's CPU per leg per tick (`time.thread_time`, best of 5 runs of 50 ticks).
  A caller's participant in a room shared with 200 others, through the room model (no
  listeners): joined with its 15 `sip.*` attributes and its track, `sip.callStatus` set to
  `active` then `hangup`, removed (`room call`); one attribute change and one participant
  message alone (`update_participant`, `Participant.to_proto`). Microseconds, best of 5 runs.
- speaker updates (`RoomStats`, every 400 ms): one pass of its timer over 300 rooms of a room
  each (the agent's session, the phone with its track and RTP leg), and `update_speakers` over
  one room shared by 300 phones. Microseconds, best of 5 runs.
- call log: a steady `--rate` calls/s recorded into a real SQLite file as bench/inbound.py's
  shared room records them (ringing and answered at once; active, ended and its quality a
  second later), for `--seconds`: commits a second, records a call, the process's CPU a call
  (the recording on the loop and the SQLite thread) and the SQLite thread's alone (from
  /proc: 10 ms ticks).
- room life: a room's life with a room each through the room model and the server's listeners
  of its events, in process (no sockets): created with the agent's session in it, the phone
  joined with its track, subscribed to, answered, hung up and gone, the agent gone, the room
  closed, a commit after each (microseconds, best of 5 runs of 1,000).
- room each (`--room-each N`, 0 to skip): a real `sipbridge serve` (the tree's build) and N
  rooms' lives, 8 at once, as bench/inbound.py's room-each mode has them without SIP: the agent
  joins a new room over `/rtc/v1`, a caller of kind SIP joins it and publishes its track
  (`add_track`), the agent subscribes to it through RoomService.UpdateSubscriptions (the
  official client), the caller leaves, then the agent; the rooms close `departure_timeout`
  (20 s) later. The server's CPU (from /proc) a room for the cycles, and for the closes (the
  CPU over the wait minus the idle server's over as long).
- room each under callgrind (`--room-each-callgrind N`, 0 to skip): the same cycles, 2 at
  once, on a server run under valgrind's callgrind, counting from after a warm-up to the last
  cycle: the server's instructions a room (every thread, user space only; the kernel's TCP is
  not counted). Unlike the CPU time, the count does not move with the machine's load: two runs
  of one tree agreed within 0.5-1.5% (a cut of 3% is seen). Needs valgrind; slow (about a
  minute for 200 rooms). `--callgrind-keep DIR` keeps its dumps there, for
  `callgrind_annotate --inclusive=yes DIR/callgrind.out.1`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from livekit import api
from livekit.protocol import models, rtc
from livekit.protocol import room as room_proto
from livekit.protocol import sip as proto
from tests.helpers import API_KEY, API_SECRET, ServerProcess
from tests.signal_client import join_query, join_token

import sipbridge._compiled as compiled
from bench.common import cpu_seconds
from sipbridge import sdp
from sipbridge.media import codecs
from sipbridge.media.leg import RtpLeg, StreamConfig
from sipbridge.media.quality import leg_quality
from sipbridge.rooms import RoomRegistry
from sipbridge.rooms.model import SIP
from sipbridge.server.agents import AgentService
from sipbridge.server.api.webhooks import WebhookNotifier
from sipbridge.server.call_logging import configure, log_call_end
from sipbridge.server.cluster.owners import RoomOwners
from sipbridge.server.media.service import MediaService
from sipbridge.server.recording.service import EgressService
from sipbridge.server.rtc.room_stats import RoomStats
from sipbridge.server.rtc.session import Session
from sipbridge.server.rtc.signal import SignalServer
from sipbridge.server.state.call_log import CallLog
from sipbridge.server.state.rooms_runtime import RoomsRuntime
from sipbridge.store import SQLiteStore
from sipbridge.telephony.call import Call, CallLimits, CallState, Deadline, DeadlineReached
from sipbridge.telephony.call import Direction as CallDirection
from sipbridge.telephony.inbound import (
    InboundCall,
    inbound_attributes,
    match_trunk,
    participant_identity,
    participant_name,
    room_for,
    select_rule,
)
from sipbridge.telephony.media import MediaPolicy

LEAVE = rtc.SignalRequest(
    leave=rtc.LeaveRequest(reason=models.DisconnectReason.CLIENT_INITIATED)
).SerializeToString()

# sipp's offer in bench/sipp/uac_inbound_timed.xml
OFFER = (
    b"v=0\r\no=carrier 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
)


def best_us(step: Callable[[], object], count: int) -> float:
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(count):
            step()
        runs.append((time.perf_counter() - start) / count * 1e6)
    return round(min(runs), 2)


async def objects() -> dict[str, float]:
    media = MediaService("127.0.0.1", (30000, 39999))
    policy = MediaPolicy()
    _, leg = media.negotiate(OFFER, policy)

    def negotiate() -> None:
        _, other = media.negotiate(OFFER, policy)
        media.release(other)

    def telephony() -> None:
        MediaPolicy()
        InboundCall(
            caller="+15550001",
            called="+15550100",
            from_host="127.0.0.1",
            source_ip="127.0.0.1",
            call_id="1@127.0.0.1",
            from_tag="tag",
        )
        DeadlineReached(deadline=Deadline.PROGRESS, state=CallState.RINGING)
        Call.start(CallDirection.INBOUND, CallState.RINGING, 1.0, CallLimits())

    info = proto.SIPCallInfo(
        call_id="SCL_bench",
        room_name="room",
        participant_identity="sip_+15550001",
        sip_call_id="1@127.0.0.1",
        created_at_ns=10**18,
        started_at_ns=10**18 + 10**8,
        ended_at_ns=10**18 + 11 * 10**8,
    )

    def call_end(log_format: str) -> float:
        configure("info", log_format)
        handler = logging.getLogger().handlers[0]
        handler.stream = io.StringIO()  # type: ignore[attr-defined]
        try:
            return best_us(lambda: log_call_end(info, sip_end="bye", leg=leg), 2000)
        finally:
            configure("warning", "text")

    try:
        return {
            "call_end line (text)": call_end("text"),
            "call_end line (json)": call_end("json"),
            "parse_sdp": best_us(lambda: sdp.parse_sdp(OFFER), 3000),
            "negotiate+release": best_us(negotiate, 500),
            "leg_quality+as_dict": best_us(lambda: leg_quality(leg, 1.0).as_dict(), 3000),
            "telephony objects": best_us(telephony, 3000),
        }
    finally:
        media.release(leg)
        media.close()


# -- a call's domain: telephony/inbound.py for bench/inbound.py's call (issue 18) ------------------

# bench/sipp/uac_inbound_timed.xml's INVITE headers, as the parser gives them
INVITE_HEADERS = (
    ("Via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-1-0"),
    ("From", '"Carol" <sip:+1055512@127.0.0.1:5061>;tag=4242SIPpTag0012'),
    ("To", "<sip:+15105550100@127.0.0.1:5060>"),
    ("Call-ID", "12-4242@127.0.0.1"),
    ("CSeq", "1 INVITE"),
    ("Contact", "sip:+1055512@127.0.0.1:5061"),
    ("Max-Forwards", "70"),
    ("X-Twilio-AccountSid", "AC0123456789abcdef0123456789abcdef"),
    ("X-Twilio-CallSid", "CA120123456789abcdef0123456789ab"),
    ("X-call_leg_id", "leg-12"),
    ("X-call_session_id", "session-12"),
    ("X-Amzn-ConnectContactId", "contact-12"),
    ("X-Customer-Id", "cust-12"),
    ("Content-Type", "application/sdp"),
    ("Content-Length", "207"),
)


def domain() -> dict[str, float]:
    trunk = proto.SIPInboundTrunkInfo(  # bench/inbound.py's
        sip_trunk_id="ST_bench",
        name="carrier",
        numbers=["+15105550100"],
        headers_to_attributes={"X-Customer-Id": "customer.id"},
        include_headers=proto.SIPHeaderOptions.SIP_X_HEADERS,
    )
    rule = proto.SIPDispatchRuleInfo(
        sip_dispatch_rule_id="SDR_bench",
        rule=proto.SIPDispatchRule(
            dispatch_rule_direct=proto.SIPDispatchRuleDirect(room_name="bench")
        ),
        attributes={"team": "support"},
    )
    call = InboundCall(
        caller="+1055512",
        called="+15105550100",
        from_host="127.0.0.1",
        source_ip="127.0.0.1",
        call_id="12-4242@127.0.0.1",
        from_tag="4242SIPpTag0012",
        headers=INVITE_HEADERS,
    )

    def attributes() -> None:
        inbound_attributes(call=call, call_id="SCL_bench", trunk=trunk, rule=rule, status="ringing")

    def trunk_and_rule() -> None:
        match_trunk([trunk], call)
        select_rule([rule], "ST_bench", call)

    def names() -> None:
        participant_identity(rule, call)
        participant_name(rule, call)
        room_for(rule, call, "")

    return {
        "inbound_attributes": best_us(attributes, 3000),
        "match_trunk+select_rule": best_us(trunk_and_rule, 3000),
        "identity+name+room": best_us(names, 3000),
    }


async def silent_tick(legs: int = 300, ticks: int = 50) -> float:
    media = MediaService("127.0.0.1", (30000, 39999))
    policy = MediaPolicy()
    opened = []
    try:
        for _ in range(legs):
            _, leg = media.negotiate(OFFER, policy)
            leg.begin(0.0)
            media.attach(leg, "room")
            opened.append(leg)
        clock = media.clock
        clock.stop()
        clock.on_second = None
        now, best = 1000.0, float("inf")
        for _ in range(5):
            spent = 0.0
            for _ in range(ticks):
                await asyncio.sleep(0.02)  # (the legs' objects go cold, as between real ticks)
                now += 0.02
                clock._next = now
                start = time.thread_time()
                clock.advance(now)
                spent += time.thread_time() - start
            best = min(best, spent / ticks / legs * 1e6)
        return round(best, 3)
    finally:
        for leg in opened:
            media.release(leg)
        media.close()


def room() -> dict[str, float]:
    attrs = {f"sip.h.x-{k}": "v" * 20 for k in range(6)}
    attrs.update(
        {
            "sip.callID": "SCL_abcdefgh",
            "sip.callStatus": "ringing",
            "sip.trunkID": "ST_bench",
            "sip.ruleID": "SDR_bench",
            "sip.callIDFull": "1234@127.0.0.1",
            "sip.callTag": "tag",
            "sip.phoneNumber": "+15550001",
            "sip.trunkPhoneNumber": "+15550100",
            "sip.hostname": "127.0.0.1",
        }
    )
    registry = RoomRegistry()
    registry.create("room", 1.0)
    for n in range(200):
        registry.join("room", f"other{n}", 1.0, kind=SIP, attributes=attrs, active=True)
    calls = iter(range(10**9))

    def drain() -> None:
        while registry.next_event() is not None:
            pass

    def call() -> None:
        identity = f"sip_{next(calls)}"
        registry.join("room", identity, 1.0, kind=SIP, attributes=attrs, active=True)
        track = models.TrackInfo(type=models.TrackType.AUDIO, name="phone", mime_type="audio/PCMU")
        registry.publish_track("room", identity, track)
        drain()
        for status in ("active", "hangup"):
            registry.update_participant("room", identity, attributes={"sip.callStatus": status})
            drain()
        registry.remove("room", identity, 2.0, models.DisconnectReason.CLIENT_INITIATED)
        drain()

    def update() -> None:
        status = "active" if next(calls) % 2 else "hangup"
        registry.update_participant("room", "other1", attributes={"sip.callStatus": status})
        drain()

    participant = registry.participant("room", "other1")
    return {
        "room call": best_us(call, 2000),
        "update_participant": best_us(update, 5000),
        "Participant.to_proto": best_us(participant.to_proto, 5000),
    }


def room_stats() -> dict[str, float]:
    """The speaker updates' timer (`RoomStats._tick`, every 400 ms) over 300 rooms of a room
    each (the agent's session and the phone with its track and RTP leg), and over one room
    shared by 300 phones (`update_speakers`): microseconds a pass, best of 5 runs."""
    legs: dict[str, RtpLeg] = {}
    media = cast(Any, SimpleNamespace(track_legs=legs))
    phone = models.TrackInfo(type=models.TrackType.AUDIO, name="phone")

    def a_leg(n: int) -> RtpLeg:
        return RtpLeg(codecs.PCMU_SPEC, StreamConfig(audio_pt=0, remote=("192.0.2.1", 4000 + n)))

    each = RoomsRuntime(RoomRegistry(), WebhookNotifier([], API_KEY, API_SECRET), lambda: 1.0)
    sessions = {}
    for n in range(300):
        name = f"each_{n}"
        each.registry.create(name, 1.0)
        each.registry.join(name, "agent", 1.0, active=True)
        each.registry.join(name, "phone", 1.0, kind=SIP, active=True)
        legs[each.registry.publish_track(name, "phone", _copy(phone))] = a_leg(n)
        sessions[(name, "agent")] = Session(room=name, identity="agent", ws=cast(Any, None))
    shared = RoomsRuntime(RoomRegistry(), WebhookNotifier([], API_KEY, API_SECRET), lambda: 1.0)
    shared.registry.create("shared", 1.0)
    shared.registry.join("shared", "agent", 1.0, active=True)
    for n in range(300):
        shared.registry.join("shared", f"phone{n}", 1.0, kind=SIP, active=True)
        legs[shared.registry.publish_track("shared", f"phone{n}", _copy(phone))] = a_leg(n)
    shared_stats = RoomStats(shared, media, {})

    async def tick() -> float:
        stats = RoomStats(each, media, sessions)
        try:

            def one() -> None:
                stats.ticks = 1  # (the speakers only: no quality pass)
                stats._tick()

            return best_us(one, 100)
        finally:
            stats.close()

    return {
        "room stats tick, 300 rooms": asyncio.run(tick()),
        "update_speakers, 300 phones": best_us(
            lambda: shared_stats.update_speakers("shared", 1.0), 100
        ),
    }


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def store_thread_cpu_s() -> float:
    """CPU time of the store's threads (SQLite's writer: `sqlite_*`), from /proc (Linux)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for thread in threading.enumerate():
        if thread.name.startswith("sqlite") and thread.native_id is not None:
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def call_info(n: int) -> proto.SIPCallInfo:
    info = proto.SIPCallInfo(
        call_id=f"SCL_{n:010d}",
        room_name="room",
        sip_call_id=f"{n}@127.0.0.1",
        participant_identity=f"sip_+1555{n}",
        trunk_id="ST_bench",
        call_status=proto.SIPCallStatus.SCS_PARTICIPANT_JOINED,
        created_at_ns=time.time_ns(),
    )
    info.from_uri.user = f"+1555{n}"
    info.to_uri.user = "+15550100"
    info.participant_attributes.update({f"sip.h.x-{k}": "v" * 20 for k in range(12)})
    return info


async def call_log(rate: int, seconds: float) -> dict[str, float]:
    folder = tempfile.TemporaryDirectory()
    store = SQLiteStore(Path(folder.name) / "calls.db")
    await store.open()
    log = CallLog(store, clock=time.time, retention_days=0)
    log.start()
    loop = asyncio.get_running_loop()
    ending: list[tuple[float, proto.SIPCallInfo]] = []
    calls = 0
    start, cpu = loop.time(), cpu_s()
    while loop.time() - start < seconds:
        while calls < int((loop.time() - start) * rate):
            info = call_info(calls)
            log.record(info)  # ringing
            info.call_status = proto.SIPCallStatus.SCS_ACTIVE
            log.record(info)  # answered
            ending.append((loop.time() + 1.0, info))
            calls += 1
        while ending and ending[0][0] <= loop.time():
            _, info = ending.pop(0)
            log.record(info)  # active
            info.call_status = proto.SIPCallStatus.SCS_DISCONNECTED
            log.record(info)
            log.record_quality(info.call_id, {"codec": "PCMU", "mos": 4.41})
        await asyncio.sleep(0.002)
    used = cpu_s() - cpu
    writer = store_thread_cpu_s()
    commits, records = log.commits, log.records_written
    await log.stop()
    await store.close()
    folder.cleanup()
    return {
        "calls": calls,
        "commits_per_s": round(commits / seconds, 1),
        "records_per_call": round(records / calls, 2),
        "cpu_us_per_call": round(used / calls * 1e6, 1),
        "store_thread_cpu_us_per_call": round(writer / calls * 1e6, 1),
    }


# -- room each: a room's life on a real server (issue 18) ----------------------------------------

ROOM_EACH_AT_ONCE = 8
ROOM_CLOSE_WAIT_S = 22.0  # the rooms' departure_timeout (20 s) and a margin


async def _room_life(url: str, n: int, session: aiohttp.ClientSession, lk: api.LiveKitAPI) -> None:
    """One room's signalling, as bench/inbound.py's agent answers a call in a room of its own,
    a WebSocket caller of kind SIP in place of the phone (bounded: 5 s)."""
    name = f"life_{n}"
    ws_url = url.replace("http://", "ws://") + f"/rtc/v1?join_request={join_query()}"
    async with asyncio.timeout(5):
        agent = await session.ws_connect(
            ws_url, headers={"Authorization": f"Bearer {join_token(name, 'agent')}"}
        )
        await agent.receive()  # the join response
        caller = await session.ws_connect(
            ws_url,
            headers={"Authorization": f"Bearer {join_token(name, 'phone', kind='sip')}"},
        )
        await caller.receive()
        add = rtc.AddTrackRequest(cid="mic", name="phone", type=models.TrackType.AUDIO)
        await caller.send_bytes(rtc.SignalRequest(add_track=add).SerializeToString())
        track = ""
        while not track:  # the agent's updates until the phone's track is in one
            update = rtc.SignalResponse.FromString((await agent.receive()).data)
            for p in update.update.participants:
                if p.identity == "phone" and p.tracks:
                    track = p.tracks[0].sid
        await lk.room.update_subscriptions(
            room_proto.UpdateSubscriptionsRequest(
                room=name, identity="agent", track_sids=[track], subscribe=True
            )
        )
        for ws in (caller, agent):
            await ws.send_bytes(LEAVE)
            await ws.close()


async def room_each(rooms: int) -> dict[str, float]:
    """Server CPU a room: its signalling cycle, then its close."""
    folder = tempfile.TemporaryDirectory()
    server = ServerProcess(Path(folder.name))
    server.start()
    assert server.proc is not None
    pid = server.proc.pid
    try:
        async with (
            aiohttp.ClientSession() as session,
            api.LiveKitAPI(server.url, API_KEY, API_SECRET) as lk,
        ):
            for n in range(20):  # warm-up (first imports, first connections)
                await _room_life(server.url, -1 - n, session, lk)
            await asyncio.sleep(ROOM_CLOSE_WAIT_S)
            idle_from, idle_cpu = time.monotonic(), cpu_seconds(pid)
            await asyncio.sleep(3.0)
            idle_rate = (cpu_seconds(pid) - idle_cpu) / (time.monotonic() - idle_from)
            numbers = iter(range(rooms))
            began = cpu_seconds(pid)

            async def worker() -> None:
                for n in numbers:
                    await _room_life(server.url, n, session, lk)

            await asyncio.gather(*(worker() for _ in range(ROOM_EACH_AT_ONCE)))
            cycles = cpu_seconds(pid) - began
            waited_from, before_close = time.monotonic(), cpu_seconds(pid)
            await asyncio.sleep(ROOM_CLOSE_WAIT_S)
            waited = time.monotonic() - waited_from
            closes = cpu_seconds(pid) - before_close - idle_rate * waited
            left = len((await lk.room.list_rooms(room_proto.ListRoomsRequest())).rooms)
    finally:
        server.stop()
        folder.cleanup()
    return {
        "rooms": rooms,
        "cycle_ms_per_room": round(cycles / rooms * 1e3, 3),
        "close_ms_per_room": round(closes / rooms * 1e3, 3),
        "idle_cpu_percent": round(idle_rate * 100, 2),
        "rooms_left_open": left,
    }


CALLGRIND_AT_ONCE = 2
CALLGRIND_START_S = 600.0  # the server's start under valgrind (its imports run 50x slower)


async def room_each_instructions(rooms: int, keep: Path | None = None) -> dict[str, float]:
    """The server's instructions a room's signalling cycle, under callgrind (see the top);
    its dumps copied into `keep` when given (for `callgrind_annotate`)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return {"rooms": 0, "skipped": "no valgrind"}  # type: ignore[dict-item]
    folder = tempfile.TemporaryDirectory()
    out = Path(folder.name) / "callgrind.out"
    wrapper = Path(folder.name) / "python-under-callgrind"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file={out} "
        f'{sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    server = ServerProcess(Path(folder.name))
    executable, sys.executable = sys.executable, str(wrapper)  # (ServerProcess runs it)
    try:
        server.start(timeout=CALLGRIND_START_S)
    finally:
        sys.executable = executable
    assert server.proc is not None
    pid = str(server.proc.pid)
    try:
        async with (
            aiohttp.ClientSession() as session,
            api.LiveKitAPI(server.url, API_KEY, API_SECRET) as lk,
        ):
            for n in range(10):  # warm-up (first imports, first connections), not counted
                await _room_life(server.url, -1 - n, session, lk)
            await asyncio.to_thread(_callgrind_control, "-i", "on", pid)
            numbers = iter(range(rooms))

            async def worker() -> None:
                for n in numbers:
                    await _room_life(server.url, n, session, lk)

            await asyncio.gather(*(worker() for _ in range(CALLGRIND_AT_ONCE)))
            await asyncio.to_thread(_callgrind_control, "-i", "off", pid)
            await asyncio.to_thread(_callgrind_control, "-d", pid)
    finally:
        server.stop(timeout=120)
    counted = await asyncio.to_thread(_callgrind_totals, Path(folder.name))
    if keep is not None:
        await asyncio.to_thread(_keep_dumps, Path(folder.name), keep)
    folder.cleanup()
    return {"rooms": rooms, "instructions_per_room": counted // rooms}


def _keep_dumps(folder: Path, keep: Path) -> None:
    keep.mkdir(parents=True, exist_ok=True)
    for dump in folder.glob("callgrind.out*"):
        shutil.copy(dump, keep / dump.name)


def _callgrind_totals(folder: Path) -> int:
    """The instructions counted in callgrind's dumps there (each dump's `totals:` line)."""
    counted = 0
    for dump in folder.glob("callgrind.out*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                counted += int(line.split()[1])
    return counted


def _callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=60)


def room_life() -> dict[str, float]:
    """A room's life with a room each, through the room model and the server's listeners of
    its events (signalling, agents, recording, cluster owners; no sockets): the agent's
    session joins a new room, the phone joins and publishes, the agent subscribes, the call is
    answered, hangs up and leaves, the agent leaves, the room closes; a commit after each."""
    runtime = RoomsRuntime(RoomRegistry(), WebhookNotifier([], API_KEY, API_SECRET), lambda: 1.0)
    keys = {API_KEY: API_SECRET}
    signal = SignalServer(runtime, keys)
    AgentService(runtime, keys, public_url="")
    RoomOwners("node", runtime)
    folder = tempfile.TemporaryDirectory()
    EgressService(runtime, cast(Any, SimpleNamespace(track_legs={})), runtime.notifier, folder.name)
    registry = runtime.registry
    lives = iter(range(10**9))
    track = models.TrackInfo(type=models.TrackType.AUDIO, name="phone", mime_type="audio/PCMU")
    attrs = {f"sip.k{k}": "value" for k in range(15)}

    def life() -> None:
        name = f"life_{next(lives)}"
        registry.create(name, 1.0)
        registry.join(name, "agent", 1.0)
        session = Session(room=name, identity="agent", ws=cast(Any, None))
        signal.sessions[(name, "agent")] = session
        runtime.commit()
        registry.join(name, "phone", 1.0, kind=SIP, attributes=attrs, active=True)
        sid = registry.publish_track(name, "phone", _copy(track))
        runtime.commit()
        registry.update_subscriptions(name, "agent", [sid], True)
        runtime.commit()
        for status in ("active", "hangup"):
            registry.update_participant(name, "phone", attributes={"sip.callStatus": status})
            runtime.commit()
        registry.remove(name, "phone", 2.0, models.DisconnectReason.CLIENT_INITIATED)
        runtime.commit()
        del signal.sessions[(name, "agent")]
        registry.remove(name, "agent", 2.0, models.DisconnectReason.CLIENT_INITIATED)
        runtime.commit()
        registry.delete(name, 2.0)
        runtime.commit()
        while not session.outbox.empty():
            session.outbox.get_nowait()

    try:
        return {"room life, model + listeners": best_us(life, 1000)}
    finally:
        runtime.close()
        folder.cleanup()


def _copy(track: models.TrackInfo) -> models.TrackInfo:
    copy = models.TrackInfo()
    copy.CopyFrom(track)
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=200, help="calls/s into the call log")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--room-each", type=int, default=1000, help="rooms' lives (0: none)")
    parser.add_argument(
        "--room-each-callgrind", type=int, default=0, help="rooms' lives under callgrind (0: none)"
    )
    parser.add_argument(
        "--callgrind-keep", type=Path, default=None, help="copy callgrind's dumps into this folder"
    )
    parser.add_argument("--only-room-each", action="store_true", help="that section alone")
    args = parser.parse_args()
    result: dict[str, object] = {"bench": "inbound_parts", "mode": compiled.MODE}
    if not args.only_room_each:
        result["objects_us"] = {
            **asyncio.run(objects()),
            **room(),
            **room_stats(),
            **domain(),
            "silent tick, per leg": asyncio.run(silent_tick()),
        }
        result["call_log"] = asyncio.run(call_log(args.rate, args.seconds))
        for name, value in result["objects_us"].items():  # type: ignore[attr-defined]
            print(f"{name:>24}: {value:8.2f} us")
        print(f"{'call log':>24}: {result['call_log']}")
    result["room_life_us"] = room_life()
    print(f"{'room life':>24}: {result['room_life_us']}")
    if args.room_each:
        result["room_each"] = asyncio.run(room_each(args.room_each))
        print(f"{'room each':>24}: {result['room_each']}")
    if args.room_each_callgrind:
        result["room_each_callgrind"] = asyncio.run(
            room_each_instructions(args.room_each_callgrind, args.callgrind_keep)
        )
        print(f"{'room each, callgrind':>24}: {result['room_each_callgrind']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
