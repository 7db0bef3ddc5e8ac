"""`_csipthr.c`'s source table (SOURCE_SLOTS sources) attacked by more sources than it holds:
INVITEs, REGISTERs and garbage from 12,000 addresses of 127.0.0.0/8 (all on `lo`, sent by a
process of its own) while a caller from an address of its own places calls. Its calls are
answered (the 100 first and once, then 180 and 200), the table's counts stay whole and bounded,
nothing leaks; a source the flood pushed out of the table and coming back is answered as
before; copies of one INVITE, or one branch, from a thousand sources are each their own
source's."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from sipbridge.server.sip import udp_thread
from sipbridge.server.sip.transport import Listen, SipService
from sipbridge.server.sip.udp_thread import ThreadedUdp
from sipbridge.server.sip.user_agent import IncomingCall, SipUserAgent
from sipbridge.sip.admission import Admission
from sipbridge.sip.message import Response, parse_message
from tests.harness import eventually
from tests.sip_app import ANSWER_SDP

pytestmark = pytest.mark.skipif(not udp_thread.built(), reason="the reader thread is not built")

CALLER = "127.3.0.1"  # the legitimate caller's own address (the flood's are 127.1.x.y)

# The flood, from a process of its own (bounded: `count` sources, `rounds` rounds, `rate`
# datagrams a second at most): each source one socket on its own 127.1.x.y address; a round is
# one datagram of each kind from each source, kinds "i" a new INVITE (its own branch and
# Call-ID), "r" a REGISTER, "g" garbage that starts like an INVITE, "c" the same INVITE bytes
# from every source (one branch, one Call-ID). Prints how many it sent.
FLOOD = r"""
import socket, sys, time
port, count, rounds, rate, kinds, first = int(sys.argv[1]), int(sys.argv[2]), \
    int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6])
socks = []
for n in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((f"127.1.{n // 250 + 1}.{n % 250 + 1}", 0))
    s.setblocking(False)
    socks.append(s)
def invite(host, sport, branch, call):
    return (
        f"INVITE sip:service@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{sport};branch=z9hG4bK-{branch};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:flood@{host}>;tag=f{call}\r\n"
        f"To: <sip:service@127.0.0.1>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:flood@{host}:{sport}>\r\nContent-Length: 0\r\n\r\n"
    ).encode()
def register(host, sport, branch):
    return (
        f"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{sport};branch=z9hG4bK-{branch};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:flood@127.0.0.1>;tag=r{branch}\r\n"
        f"To: <sip:flood@127.0.0.1>\r\nCall-ID: r{branch}\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <sip:flood@{host}:{sport}>\r\nContent-Length: 0\r\n\r\n"
    ).encode()
same = invite("127.9.9.9", 5060, "same", "same@flood")
sent = 0
started = time.monotonic()
for r in range(first, first + rounds):
    for kind in kinds:
        for n, s in enumerate(socks):
            host, sport = s.getsockname()
            if kind == "i":
                data = invite(host, sport, f"{r}-{n}", f"{r}-{n}@flood")
            elif kind == "r":
                data = register(host, sport, f"r{r}-{n}")
            elif kind == "g":
                data = b"INVITE x\r\n\r\n" + bytes([n % 256]) * (n % 64)
            else:
                data = same
            try:
                s.sendto(data, ("127.0.0.1", port))
                sent += 1
            except OSError:
                pass
            while sent > (time.monotonic() - started) * rate:
                time.sleep(0.001)
print(sent)
"""


async def flood(
    port: int, count: int, rounds: int, rate: float, kinds: str, *, first: int = 0
) -> int:
    """Run FLOOD to its end (at most a minute): how many datagrams it sent. (`first`: the
    first round's number, which its branches and Call-IDs carry.)"""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FLOOD,
        *(str(port), str(count), str(rounds), str(rate), kinds, str(first)),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    return int(out)


@dataclass
class App:
    """The flood's calls (From flood) kept unanswered; every other answered on a later turn."""

    calls: list[IncomingCall] = field(default_factory=list)
    flooded: int = 0
    hold: bool = False  # (True: the others too kept unanswered, until `_answer`)

    def on_invite(self, call: IncomingCall) -> None:
        if call.request.from_.uri.user == "flood":
            self.flooded += 1
            return
        self.calls.append(call)
        if not self.hold:
            asyncio.get_running_loop().call_soon(self._answer, call)

    def _answer(self, call: IncomingCall) -> None:
        call.ring()
        call.answer(ANSWER_SDP)


def threaded(app: App, admission: Admission | None) -> SipService:
    ua = SipUserAgent("127.0.0.1", 0, on_invite=app.on_invite)
    service = SipService(ua, admission=admission)
    service.threaded_udp = True
    service.early_trying = True
    ua.attach(service)
    return service


def reader_of(service: SipService) -> ThreadedUdp:
    udp = next(iter(service._udp.values()))
    assert isinstance(udp, ThreadedUdp)
    return udp


def table(service: SipService) -> tuple[int, int, int, int]:
    """The thread's (slots in use, waiting in a slot, waiting without one, queued)."""
    udp = reader_of(service)
    counts: tuple[int, int, int, int] = udp._io.sources(udp._reader)
    return counts


def slots(service: SipService) -> int:
    """SOURCE_SLOTS: the sources the thread's table holds."""
    return int(reader_of(service)._io.SOURCE_SLOTS)


def blocked_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `check` with the event loop blocked (the reader thread runs, the loop does not),
    until it is true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.001)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Caller:
    """A UAC on its own address: INVITE (retransmitted on Timer A, s17.1.1.2), the 100, 180
    and 200 awaited, ACK, BYE, its 200. Records every response, by Call-ID, and each INVITE's
    time to its first response."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.host, self.port = self.sock.getsockname()
        self.target = target
        self.responses: dict[str, list[Response]] = {}
        self.first: dict[str, float] = {}
        self.retransmitted: dict[str, int] = {}  # by method

    def close(self) -> None:
        self.sock.close()

    def invite(self, n: int, branch: str | None = None) -> bytes:
        return (
            f"INVITE sip:service@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host}:{self.port};"
            f"branch={branch or f'z9hG4bK-caller-{n}'};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:caller@{self.host}>;tag=c{n}\r\n"
            f"To: <sip:service@127.0.0.1>\r\n"
            f"Call-ID: caller-{n}@{self.host}\r\n"
            f"CSeq: 1 INVITE\r\n"
            f"Contact: <sip:caller@{self.host}:{self.port}>\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode()

    def in_dialog(self, n: int, method: str, seq: int, branch: str, to_tag: str) -> bytes:
        return (
            f"{method} sip:service@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:caller@{self.host}>;tag=c{n}\r\n"
            f"To: <sip:service@127.0.0.1>;tag={to_tag}\r\n"
            f"Call-ID: caller-{n}@{self.host}\r\n"
            f"CSeq: {seq} {method}\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode()

    def read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return
            message = parse_message(data)
            assert isinstance(message, Response)
            call_id = message.call_id
            self.responses.setdefault(call_id, []).append(message)
            self.first.setdefault(call_id, time.monotonic())

    def got(self, n: int) -> list[int]:
        """Call `n`'s statuses so far, what waits read first."""
        self.read()
        return self.statuses(n)

    def statuses(self, n: int) -> list[int]:
        return [m.status for m in self.responses.get(f"caller-{n}@{self.host}", [])]

    async def until(self, n: int, status: int, method: str, send: bytes) -> Response:
        """Send `send` until a `status` response to `method` comes (Timer A: 0.5 s, doubling;
        an INVITE only until a provisional response, s17.1.1.2; at most 15 s)."""
        call_id = f"caller-{n}@{self.host}"
        interval = 0.5
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        self.sock.sendto(send, self.target)
        resend = loop.time() + interval
        while True:
            self.read()
            for message in self.responses.get(call_id, []):
                if message.status == status and message.cseq.method == method:
                    return message
            now = loop.time()
            assert now < deadline, (n, method, self.statuses(n))
            provisional = method == "INVITE" and any(
                m.status < 200 for m in self.responses.get(call_id, [])
            )
            if now >= resend and not provisional:
                self.sock.sendto(send, self.target)
                self.retransmitted[method] = self.retransmitted.get(method, 0) + 1
                interval = min(interval * 2, 4)
                resend = now + interval
            await asyncio.sleep(0.005)  # (polling the socket, as `eventually` does)

    async def call(self, n: int) -> float:
        """One whole call; the seconds from the INVITE to its first response."""
        started = time.monotonic()
        ok = await self.until(n, 200, "INVITE", self.invite(n))
        to_tag = ok.to.tag
        assert to_tag
        self.sock.sendto(
            self.in_dialog(n, "ACK", 1, f"z9hG4bK-caller-ack-{n}", to_tag), self.target
        )
        bye = self.in_dialog(n, "BYE", 2, f"z9hG4bK-caller-bye-{n}", to_tag)
        await self.until(n, 200, "BYE", bye)
        return self.first[f"caller-{n}@{self.host}"] - started


def invite_statuses(responses: list[Response]) -> list[int]:
    return [m.status for m in responses if m.cseq.method == "INVITE"]


async def test_a_flood_from_12000_sources_leaves_a_callers_calls_answered() -> None:
    """12,000 sources (three times the table) send new INVITEs (two each, and a copy of
    each), REGISTERs and garbage at 15,000 a second, more than the loop takes, while a caller
    of its own address places calls one after another: none of its INVITEs is lost in the
    flood (each answered before its Timer A would resend it, once, then 180 and 200) and
    every call completes; the thread's table never holds more than SOURCE_SLOTS sources and,
    once everything is handled, counts nothing waiting (a count left behind would keep a
    source, or others, from being answered here ever again); what the flood cost is counted;
    no socket or task is left over. Before the fixes (`room_for`, `unslotted`, `answered` in
    _csipthr.c), 2-4 of the caller's INVITEs were dropped with the flood, 1.2-7.5 s late."""
    app = App()
    fds, tasks = open_fds(), len(asyncio.all_tasks())
    service = threaded(app, Admission())
    caller = None
    try:
        bound = await service.listen(Listen("udp", "127.0.0.1", 0))
        stats = service.endpoint.stats
        caller = Caller(CALLER, ("127.0.0.1", bound.port))
        await caller.call(0)  # (the first: not yet admitted, Python's 100)
        await caller.call(1)
        # (What these two waited for is the loop's, before the flood: a busy machine may have
        # had them resent; what is asserted below is about the calls in the flood.)
        caller.retransmitted.clear()
        assert stats["trying_early"] == 1
        attack = asyncio.ensure_future(flood(bound.port, 12000, 2, 15000, "irgi"))
        latencies = []
        n = 2
        while not attack.done() or n < 32:
            latencies.append(await caller.call(n))
            assert table(service)[0] <= slots(service)
            n += 1
        sent = await attack
        await eventually(lambda: table(service)[3] == 0, "the queue drained")
        await eventually(lambda: stats["received"] + stats["udp_queue_full"] >= sent, "read")
        used, waiting, unslotted, queued = table(service)
        assert (waiting, unslotted, queued) == (0, 0, 0)
        assert used <= slots(service)
        # The flood was more than the loop could take (dropped, counted), and judged.
        assert stats["udp_queue_full"] > 0 and app.flooded > 0
        assert stats["malformed"] + stats["refused_405"] > 0  # (its garbage, its REGISTERs)
        # No INVITE of the caller's was lost in it: each answered before its Timer A (0.5 s)
        # would resend it (its 100 read first: a busy loop here is no loss), exactly one 100,
        # then 180 and 200.
        assert caller.retransmitted.get("INVITE", 0) == 0, (caller.retransmitted, latencies)
        for m in range(2, n):
            codes = invite_statuses(caller.responses[f"caller-{m}@{CALLER}"])
            assert codes[0] == 100 and codes.count(100) == 1, (m, codes)
            assert 180 in codes and 200 in codes and codes.index(180) < codes.index(200)
    finally:
        if caller is not None:
            caller.close()
        await service.close()
    await asyncio.sleep(0)
    assert open_fds() <= fds
    assert len(asyncio.all_tasks()) <= tasks


def slot(service: SipService, host: str) -> tuple[int, int, int] | None:
    """`host`'s slot in the thread's table: (admitted, waiting, allowance), or None."""
    udp = reader_of(service)
    found: tuple[int, int, int] | None = udp._io.source(udp._reader, host)
    return found


async def test_a_caller_pushed_out_of_the_table_and_back_is_answered_as_before() -> None:
    """A caller's INVITE answered 100 by the thread, then 12,000 new sources push the caller
    out of the table (checked): each retransmission gets the transaction's last response once
    (no second 100 from the thread, no second call), its call completes; the retransmissions
    judged, the caller is known again and its next INVITEs answered by the thread, once each."""
    app = App(hold=True)
    service = threaded(app, Admission())
    caller = None
    try:
        bound = await service.listen(Listen("udp", "127.0.0.1", 0))
        stats = service.endpoint.stats
        caller = Caller("127.3.0.2", ("127.0.0.1", bound.port))
        c = caller
        c.sock.sendto(c.invite(0), c.target)  # (not yet admitted: Python's 100)
        await eventually(lambda: c.got(0) == [100], "the first 100")
        c.sock.sendto(c.invite(1), c.target)  # admitted: the thread's 100
        await eventually(lambda: c.got(1) == [100], "the second 100")
        await eventually(lambda: len(app.calls) == 2, "both calls handled")
        assert stats["trying_early"] == 1 and slot(service, c.host) is not None
        # (a new INVITE from each, at a rate the loop takes, until the caller is out: twice
        # on a quiet machine; every one judged, admitted; the caller's one answer aged away
        # (AGING sightings), it is the least recently seen and goes)
        sent = 2
        for round_ in range(6):
            sent += await flood(bound.port, 12000, 1, 5000, "i", first=round_)
            await eventually(
                lambda s=sent: stats["received"] + stats["udp_queue_full"] >= s, "read"
            )
            if slot(service, c.host) is None:
                break
        assert slot(service, c.host) is None, "the flood did not push the caller out"
        early = stats["trying_early"]
        for _ in range(3):  # retransmissions of the INVITE answered by the thread
            c.sock.sendto(c.invite(1), c.target)
        await eventually(lambda: stats["retransmissions"] >= 3, "the retransmissions handled")
        await eventually(lambda: len(c.got(1)) >= 4, "their answers")
        c.read()
        assert c.statuses(1) == [100] * 4  # each the transaction's last response, once
        assert stats["trying_early"] == early and len(app.calls) == 2
        # (each judged by the admission control, which told the thread: known again)
        assert (found := slot(service, c.host)) is not None and found[:2] == (1, 0)
        # known and admitted again, its INVITE once more: still only the last response
        c.sock.sendto(c.invite(1), c.target)
        await eventually(lambda: stats["retransmissions"] >= 4, "that one handled")
        await eventually(lambda: len(c.got(1)) >= 5, "its answer")
        assert c.got(1) == [100] * 5 and stats["trying_early"] == early
        app._answer(app.calls[1])
        await eventually(lambda: 200 in c.got(1), "the 200")
        assert c.statuses(1)[5:7] == [180, 200]
        for n in (2, 3):  # new calls: the thread's 100 again, once each
            c.sock.sendto(c.invite(n), c.target)
            await eventually(lambda n=n: c.got(n) == [100], "a new call's 100")
        await eventually(lambda: len(app.calls) == 4, "the new calls handled")
        assert stats["trying_early"] == early + 2
        for n in (0, 2, 3):
            app._answer(app.calls[n])
        await eventually(lambda: all(200 in c.got(n) for n in range(4)), "every 200")
        for n in range(4):
            codes = c.statuses(n)
            assert codes[0] == 100 and codes.count(100) == (5 if n == 1 else 1), (n, codes)
        assert table(service)[1:] == (0, 0, 0)
    finally:
        if caller is not None:
            caller.close()
        await service.close()


async def test_one_branch_from_a_thousand_sources_is_each_sources_own() -> None:
    """1,000 sources send INVITEs on one branch (each its own sent-by and Call-ID, as UACs
    that reuse a branch would), then each again: each source gets exactly its own 100 (its
    Call-ID, its received=), then that 100 again for its copy; 1,000 calls, at most one of
    them answered by the thread. Then 1,000 sources send the very same INVITE bytes: one
    call; no source but the first gets an answer, and the thread sends at most one 100."""
    app = App(hold=True)
    service = threaded(app, Admission())
    socks: list[socket.socket] = []
    try:
        bound = await service.listen(Listen("udp", "127.0.0.1", 0))
        stats = service.endpoint.stats
        target = ("127.0.0.1", bound.port)
        callers = []
        for n in range(1000):
            caller = Caller(f"127.2.{n // 250 + 1}.{n % 250 + 1}", target)
            socks.append(caller.sock)
            callers.append(caller)
        for _round in range(2):
            for caller in callers:
                caller.sock.sendto(caller.invite(7, branch="z9hG4bK-one"), target)
            await eventually(lambda r=_round: stats["received"] >= 1000 * (r + 1), "read")
            await eventually(
                lambda r=_round: all(len(c.got(7)) > r for c in callers), "every source's 100"
            )
        assert len(app.calls) == 1000 and stats["trying_early"] <= 1
        for caller in callers:
            answers = caller.responses[f"caller-7@{caller.host}"]
            assert [m.status for m in answers] == [100, 100], caller.host
            via = answers[0].headers.get("Via") or ""
            assert f"received={caller.host}" in via, (caller.host, via)
        early, received = stats["trying_early"], stats["received"]
        same = callers[0].invite(8, branch="z9hG4bK-same")
        for caller in callers:
            caller.sock.sendto(same, target)
        await eventually(lambda: stats["received"] >= received + 1000, "the copies read")
        await eventually(lambda: len(app.calls) == 1001, "one call of the copies")
        await eventually(lambda: stats["retransmissions"] >= 1999, "the copies handled")
        for caller in callers:
            caller.read()
        first = callers[0].responses[f"caller-8@{callers[0].host}"]
        assert {m.status for m in first} == {100}
        assert not any(f"caller-8@{callers[0].host}" in c.responses for c in callers[1:])
        assert stats["trying_early"] <= early + 1
        assert table(service)[1:] == (0, 0, 0)
    finally:
        for sock in socks:
            sock.close()
        await service.close()


async def test_a_full_queue_keeps_room_for_an_admitted_callers_invite(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the loop does not run, 100 datagrams that are not INVITEs (from another source)
    fill the thread's queue (64 here) as far as they may: 7/8 of it. An admitted caller's new
    INVITE still has room kept for it: answered 100 by the thread at once, queued, and its
    call completes. (Before, INVITEs had only the first half, already full: it was dropped
    unanswered, and came back on Timer A.)"""
    monkeypatch.setattr(udp_thread, "QUEUE", 64)
    app = App()
    service = threaded(app, Admission())
    caller = None
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        bound = await service.listen(Listen("udp", "127.0.0.1", 0))
        stats = service.endpoint.stats
        caller = Caller("127.3.0.4", ("127.0.0.1", bound.port))
        await caller.call(0)  # (then admitted)
        assert slot(service, caller.host) is not None
        caller.retransmitted.clear()  # (the loop's 100 to the first: a busy machine may be late)
        other.bind(("127.4.0.1", 0))
        for n in range(100):  # (the loop does not run meanwhile: the queue fills up)
            other.sendto(b"OPTIONS sip:x SIP/2.0\r\nX-N: %d\r\n\r\n" % n, caller.target)
        blocked_until(lambda: table(service)[3] == 64 - 64 // 8, "as full as they may fill it")
        caller.sock.sendto(caller.invite(1), caller.target)
        blocked_until(lambda: caller.got(1) == [100], "the thread's 100, the loop not run")
        await eventually(lambda: stats["trying_early"] == 1, "its INVITE handled")
        await eventually(lambda: 200 in caller.got(1), "its 200")
        await caller.call(2)  # (and the call after, as usual)
        assert caller.retransmitted.get("INVITE", 0) == 0
        assert stats["udp_queue_full"] == 100 - (64 - 64 // 8)
    finally:
        other.close()
        if caller is not None:
            caller.close()
        await service.close()
