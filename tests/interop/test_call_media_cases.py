"""Call media end to end: mid-call offers, session timers, media timeouts and hostile RTP against a
real `sipbridge serve` configured with the official `livekit-api` client.

The callers are real sipp runs (scenarios tests/interop/sipp/media_*.xml) or `Phone`s: hand-driven
SIP user agents on loopback UDP with an RTP socket of their own, whose messages are parsed with
`sipbridge.sip.message.parse_message` and whose SDP is read with plain regular expressions. A call
is answered when another SIP participant is in its room, so every test first puts a `helper`
caller in the room (it rings) and then places the call under test (answered at once).

Covered: hold and resume by re-INVITE (sendonly -> recvonly, inactive -> inactive, sendrecv again;
same port, o= version + 1 each time) with sipp and by hand; the offerless re-INVITE, whose answer
in the ACK moves the audio; UPDATE with and without SDP; a re-INVITE while our 2xx awaits its ACK
(500 + Retry-After); RFC 4028 session timers (422 + Min-SE, Session-Expires/Require on the 2xx and
on refreshes, none without `Supported: timer`, 400 when malformed); a re-offer with no common codec
(488, the call kept); the trunk's `media_timeout` (sipp streams 1 s of RTP then goes silent: our
BYE; a call silent from the start; hold suspending it); hostile RTP and RTCP (garbage, truncated
headers, unknown payload types, oversized datagrams, a 10,000-packet flood from a second address)
leaving calls, latching and the server intact and counted in `/metrics`; a three-caller (mixing)
room fed 20 ms and 40 ms packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import secrets
import shutil
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration
from livekit.protocol import models, room, sip

from sipbridge.sip.message import Request, Response, parse_message
from tests import harness
from tests.harness import (
    call_log,
    client,
    eventually,
    kill_leftovers,
    leave_clean,
    logged_call,
    module_server,
    sip_server_process,
    stop_cleanly,
)
from tests.helpers import ServerProcess
from tests.interop.test_inbound import CALLED

pytestmark = pytest.mark.skipif(
    not (shutil.which("sipp") and shutil.which("timeout")), reason="sipp comes with `make test`"
)

T = TypeVar("T")
P = TypeVar("P", bound=asyncio.BaseProtocol)
RTP_PORTS = "15000-15999"  # away from baresip's (20000-32000) and test_call_audio's
ROOM = "media"
CALLER = "+15550201"
HELPER = "+15550299"
SIPP_LIMIT_S = 20.0
ServerFactory = Callable[..., Awaitable[ServerProcess]]


# -- the server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The server of every test here that needs no flags of its own."""
    yield from module_server(tmp_path_factory, "media-cases", "--rtp-ports", RTP_PORTS, sip=True)


@pytest.fixture
async def serve(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[ServerFactory]:
    """`sipbridge serve` with RTP ports of its own: without extra flags the module's server (left
    clean after the test: `leave_clean`, and its media legs all released), with them one of the
    test's own, which must stop cleanly (exit 0). Each test checks the log it made for
    tracebacks itself (`assert_clean`), so that a known bug that logs one can be marked xfail
    instead of failing the teardown."""
    servers: list[ServerProcess] = []
    shared: list[ServerProcess] = []

    async def start(*extra: str) -> ServerProcess:
        if not extra:
            proc: ServerProcess = request.getfixturevalue("shared_server")
            shared.append(proc)
        else:
            proc = sip_server_process(tmp_path, "--rtp-ports", RTP_PORTS, *extra)
            servers.append(proc)
            await asyncio.to_thread(proc.start)
        # where this test's part of the log begins (`assert_clean`)
        proc.log_offset = proc.log.stat().st_size  # type: ignore[attr-defined]
        return proc

    yield start
    kill_leftovers()
    for proc in servers:
        await asyncio.to_thread(stop_cleanly, proc)
    for proc in shared:
        await leave_clean(proc)
        await eventually(lambda p=proc: media_counter(p, "legs") == 0, "media legs released")


def assert_clean(server: ServerProcess) -> None:
    """The server runs, and logged no traceback since the test began."""
    assert server.proc is not None and server.proc.poll() is None, server.log_tail()
    with open(server.log, "rb") as log:
        log.seek(getattr(server, "log_offset", 0))
        text = log.read().decode(errors="replace")
    assert "Traceback" not in text and "Exception in callback" not in text, text[-5000:]


async def configure(server: ServerProcess, **trunk: object) -> None:
    """An inbound trunk for CALLED (with `trunk` fields) and a direct rule to ROOM."""
    async with client(server) as lk:
        info = sip.SIPInboundTrunkInfo(name="carrier", numbers=[CALLED], **trunk)  # type: ignore[arg-type]
        await lk.sip.create_inbound_trunk(sip.CreateSIPInboundTrunkRequest(trunk=info))
        rule = sip.SIPDispatchRule(dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name=ROOM))
        await lk.sip.create_dispatch_rule(
            sip.CreateSIPDispatchRuleRequest(dispatch_rule=sip.SIPDispatchRuleInfo(rule=rule))
        )


async def sip_identities(server: ServerProcess) -> set[str]:
    async with client(server) as lk:
        rooms = await lk.room.list_rooms(room.ListRoomsRequest(names=[ROOM]))
        if not rooms.rooms:
            return set()
        listed = await lk.room.list_participants(room.ListParticipantsRequest(room=ROOM))
    return {p.identity for p in listed.participants if p.kind == models.ParticipantInfo.Kind.SIP}


async def in_room(server: ServerProcess, *callers: str, exactly: bool = True) -> None:
    want = {f"sip_{c}" for c in callers}

    async def check() -> bool:
        found = await sip_identities(server)
        return found == want if exactly else want <= found

    await eventually(check, f"SIP participants {sorted(want)} in {ROOM!r}")


def media_counter(server: ServerProcess, name: str) -> float:
    return server.metrics().get(f'sipbridge_media{{counter="{name}"}}', 0.0)


# -- SDP -----------------------------------------------------------------------------------------


def offer(
    rtp_port: int,
    *,
    version: int = 1,
    direction: str = "sendrecv",
    formats: str = "0 101",
    ptime: int = 20,
) -> bytes:
    lines = [
        "v=0",
        f"o=phone 7000 {version} IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        f"m=audio {rtp_port} RTP/AVP {formats}",
    ]
    rtpmaps = {
        "0": "PCMU/8000",
        "8": "PCMA/8000",
        "18": "G729/8000",
        "101": "telephone-event/8000",
    }
    lines += [f"a=rtpmap:{f} {rtpmaps[f]}" for f in formats.split() if f in rtpmaps]
    if "101" in formats.split():
        lines.append("a=fmtp:101 0-16")
    lines += [f"a=ptime:{ptime}", f"a={direction}"]
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass(frozen=True)
class Sdp:
    origin: tuple[str, ...]  # o= fields without the version
    version: int
    port: int
    formats: tuple[str, ...]
    directions: tuple[str, ...]


def read_sdp(body: bytes) -> Sdp:
    text = body.decode()
    o = re.search(r"^o=(\S+) (\S+) (\d+) (IN IP4 \S+)\s*$", text, re.M)
    m = re.search(r"^m=audio (\d+) \S+ ([\d ]+?)\s*$", text, re.M)
    assert o is not None and m is not None, text
    directions = tuple(re.findall(r"^a=(sendrecv|sendonly|recvonly|inactive)\s*$", text, re.M))
    return Sdp(
        origin=(o.group(1), o.group(2), o.group(4)),
        version=int(o.group(3)),
        port=int(m.group(1)),
        formats=tuple(m.group(2).split()),
        directions=directions,
    )


# -- a hand-driven phone -------------------------------------------------------------------------


class RtpPort(asyncio.DatagramProtocol):
    """A phone's RTP socket: counts what arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0
        self.sizes: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.received += 1
        if len(self.sizes) < 10_000:
            self.sizes.append(len(data))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, address)


def rtp(seq: int, ts: int, ssrc: int, payload: bytes, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, ts, ssrc) + payload


@dataclass(eq=False)
class Phone(asyncio.DatagramProtocol):
    """A SIP UA on loopback UDP placing one call to CALLED on the server under test."""

    server_port: int
    user: str
    transport: asyncio.DatagramTransport | None = None
    media: RtpPort = field(default_factory=RtpPort)
    call_id: str = field(default_factory=lambda: f"media-{secrets.token_hex(6)}@127.0.0.1")
    from_tag: str = field(default_factory=lambda: secrets.token_hex(4))
    to: str = f"<sip:{CALLED}@127.0.0.1>"
    target: str = ""
    cseq: int = 0
    sdp_version: int = 1
    ptime: int = 20
    ringing: asyncio.Event = field(default_factory=asyncio.Event)
    requests: asyncio.Queue[Request] = field(default_factory=asyncio.Queue)
    _waiting: dict[tuple[int, str], asyncio.Queue[Response]] = field(default_factory=dict)
    _acks: dict[int, bytes] = field(default_factory=dict)
    _seq: int = field(default_factory=lambda: random.randrange(1 << 16))
    _ts: int = field(default_factory=lambda: random.randrange(1 << 32))
    ssrc: int = field(default_factory=lambda: random.randrange(1 << 32))
    answer: Sdp | None = None

    # -- transport --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        message = parse_message(data)
        if isinstance(message, Response):
            cseq = message.cseq
            if cseq.method == "INVITE" and cseq.seq in self._acks and message.status < 300:
                self._send(self._acks[cseq.seq])  # our ACK was lost: the 2xx is resent
            waiting = self._waiting.get((cseq.seq, cseq.method))
            if waiting is not None:
                waiting.put_nowait(message)
        elif message.method != "ACK":
            self._send(self._reply(data, 200))
            self.requests.put_nowait(message)

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", self.server_port))

    @property
    def local_port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    @staticmethod
    def _reply(request: bytes, status: int) -> bytes:
        head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
        keep = [
            line
            for line in head
            if line.split(b":", 1)[0].strip().lower()
            in (b"via", b"from", b"to", b"call-id", b"cseq")
        ]
        return b"\r\n".join([f"SIP/2.0 {status} OK".encode(), *keep, b"Content-Length: 0"]) + (
            b"\r\n\r\n"
        )

    # -- SIP --

    def _request(
        self, method: str, cseq: int, branch: str, body: bytes, headers: tuple[str, ...]
    ) -> bytes:
        uri = self.target or f"sip:{CALLED}@127.0.0.1:{self.server_port}"
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.local_port};branch={branch};rport",
            f"From: <sip:{self.user}@127.0.0.1>;tag={self.from_tag}",
            f"To: {self.to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:{self.user}@127.0.0.1:{self.local_port}>",
            "Max-Forwards: 70",
            *headers,
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def request(
        self,
        method: str,
        body: bytes = b"",
        *headers: str,
        ack_body: bytes = b"",
        ack: bool = True,
        timeout: float = 5.0,
    ) -> Response:
        """Send a request (resent every 0.5 s until something answers) and return its final
        response. A 2xx to an INVITE starts the dialog and is ACKed (with `ack_body`, unless
        `ack` is False); a non-2xx one is ACKed in its transaction (RFC 3261 s17.1.1.3)."""
        self.cseq += 1
        cseq, branch = self.cseq, f"z9hG4bK{secrets.token_hex(6)}"
        data = self._request(method, cseq, branch, body, headers)
        queue = self._waiting[(cseq, method)] = asyncio.Queue()
        self._send(data)
        answered = False
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                assert left > 0, f"no final response to {method} {cseq}"
                try:
                    reply = await asyncio.wait_for(queue.get(), min(0.5, left))
                except TimeoutError:
                    if not answered:
                        self._send(data)
                    continue
                answered = True
                if reply.status == 180:
                    self.ringing.set()
                if reply.status >= 200:
                    break
        finally:
            del self._waiting[(cseq, method)]
        if method == "INVITE":
            if reply.status < 300:
                if self.to.find(";tag=") < 0:
                    self.to = reply.headers.get("To") or self.to
                contact = reply.headers.get("Contact") or ""
                found = re.search(r"<([^>]+)>", contact)
                self.target = found.group(1) if found else contact.strip()
                if ack:
                    self.send_ack(cseq, ack_body)
            else:
                to = reply.headers.get("To") or self.to
                first, rest = data.split(b"\r\n", 1)
                lines = [b"ACK " + first.split(b" ")[1] + b" SIP/2.0"]
                for line in rest.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
                    name = line.split(b":", 1)[0].strip().lower()
                    if name in (b"via", b"from", b"call-id", b"max-forwards"):
                        lines.append(line)
                lines += [f"To: {to}".encode(), f"CSeq: {cseq} ACK".encode(), b"Content-Length: 0"]
                self._send(b"\r\n".join(lines) + b"\r\n\r\n")
        return reply

    def send_ack(self, cseq: int, body: bytes = b"") -> None:
        ack = self._request("ACK", cseq, f"z9hG4bK{secrets.token_hex(6)}", body, ())
        self._acks[cseq] = ack
        self._send(ack)

    async def invite(
        self, *headers: str, sdp: bytes | None = None, timeout: float = 15.0
    ) -> Response:
        body = offer(self.media.port, ptime=self.ptime) if sdp is None else sdp
        reply = await self.request("INVITE", body, *headers, timeout=timeout)
        if reply.status == 200 and reply.body:
            self.answer = read_sdp(reply.body)
        return reply

    async def reoffer(self, method: str = "INVITE", **sdp: object) -> Response:
        """A new offer of our RTP port (hold, resume...) in a re-INVITE or UPDATE."""
        self.sdp_version += 1
        sdp.setdefault("ptime", self.ptime)
        body = offer(self.media.port, version=self.sdp_version, **sdp)  # type: ignore[arg-type]
        return await self.request(method, body)

    async def bye(self) -> Response:
        return await self.request("BYE")

    # -- RTP --

    @property
    def server_rtp(self) -> tuple[str, int]:
        assert self.answer is not None
        return ("127.0.0.1", self.answer.port)

    def send_rtp(self, payload: bytes = b"\xff" * 160, *, pt: int = 0, ticks: int = 160) -> None:
        self.media.sendto(rtp(self._seq, self._ts, self.ssrc, payload, pt), self.server_rtp)
        self._seq = (self._seq + 1) % (1 << 16)
        self._ts = (self._ts + ticks) % (1 << 32)

    async def talk(self, seconds: float, *, interval: float = 0.02, samples: int = 160) -> None:
        """PCMU packets every `interval`, `samples` each, for `seconds`."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.send_rtp(b"\xfe" * samples, ticks=samples)
            await asyncio.sleep(interval)  # the pace of the audio, not a wait


def _factory(protocol: P) -> Callable[[], P]:
    return lambda: protocol


@contextlib.asynccontextmanager
async def phones(server: ServerProcess, *users: str) -> AsyncIterator[list[Phone]]:
    loop = asyncio.get_running_loop()
    made: list[Phone] = []
    try:
        for user in users:
            phone = Phone(server.sip_port, user)  # type: ignore[attr-defined]
            await loop.create_datagram_endpoint(_factory(phone), local_addr=("127.0.0.1", 0))
            await loop.create_datagram_endpoint(_factory(phone.media), local_addr=("127.0.0.1", 0))
            made.append(phone)
        yield made
    finally:
        for phone in made:
            for transport in (phone.transport, phone.media.transport):
                if transport is not None:
                    transport.close()


async def answered(helper: Phone, *callers: Phone) -> None:
    """`helper` calls and rings alone in ROOM; each of `callers` then joins and is answered at
    once (another SIP participant is there), which answers the helper too."""
    ringing = asyncio.create_task(helper.invite())
    await asyncio.wait_for(helper.ringing.wait(), 5)
    for caller in callers:
        reply = await caller.invite()
        assert reply.status == 200, reply
        assert caller.answer is not None
    reply = await ringing
    assert reply.status == 200, reply


@contextlib.asynccontextmanager
async def keep_talking(phone: Phone) -> AsyncIterator[None]:
    """`phone` sends audio in the background (so a media timeout cannot take it)."""
    task = asyncio.create_task(phone.talk(SIPP_LIMIT_S * 2))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- sipp ----------------------------------------------------------------------------------------


async def sipp(
    server: ServerProcess, scenario: str, cwd: Path, *extra: str, caller: str = CALLER
) -> tuple[int, str, float]:
    """One sipp call of `scenario`, run in `cwd`; (exit code, output, seconds taken)."""
    done = await harness.sipp(
        scenario,
        server.sip_port,  # type: ignore[attr-defined]
        keys={"caller": caller, "called": CALLED},
        limit=SIPP_LIMIT_S,
        cwd=cwd,
        extra=extra,
    )
    return done.code, done.out, done.seconds


def mulaw(pcm: np.ndarray) -> bytes:
    """G.711 mu-law of int16 samples (ITU-T G.711, the usual bias-and-segment form)."""
    samples = pcm.astype(np.int32)
    sign = (samples < 0).astype(np.int32)
    magnitude = np.minimum(np.abs(samples), 32635) + 0x84
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 7, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    coded = ~((sign << 7) | (exponent << 4) | mantissa) & 0xFF
    return bytes(coded.astype(np.uint8).tobytes())


def messages_of(trace: Path) -> list[tuple[str, bytes]]:
    """The SIP messages in a sipp -trace_msg file: (start line and headers, body)."""
    text = trace.read_text(errors="replace").replace("\r\n", "\n")
    out = []
    for part in re.split(r"^-{10,}.*$", text, flags=re.M):
        lines = part.strip().split("\n")
        if len(lines) < 3 or not lines[0].startswith("UDP message"):
            continue
        head, _, body = "\n".join(lines[2:]).partition("\n\n")
        out.append((head, body.strip().encode()))
    return out


# -- 1. hold and resume --------------------------------------------------------------------------


async def test_sipp_holds_and_resumes_with_reinvites(serve: ServerFactory, tmp_path: Path) -> None:
    """sipp (a real peer) answered, holds with sendonly, goes inactive, resumes, hangs up: each
    answer has the expected direction (checked by sipp), the same m= port and the next o=
    version (checked here from sipp's message trace); the call stays up throughout."""
    server = await serve()
    await configure(server)
    trace = tmp_path / "hold_messages.log"
    async with phones(server, HELPER) as (helper,):
        ringing = asyncio.create_task(helper.invite())
        await asyncio.wait_for(helper.ringing.wait(), 5)
        call = asyncio.create_task(
            sipp(
                server,
                "media_hold.xml",
                tmp_path,
                "-d",
                "1500",
                "-trace_msg",
                "-message_file",
                str(trace),
            )
        )
        await asyncio.wait({ringing, call}, return_when=asyncio.FIRST_COMPLETED)
        if call.done():
            raise AssertionError(call.result()[1][-3000:])
        assert (await ringing).status == 200
        await in_room(server, CALLER, HELPER)  # while sipp holds, resumes, waits
        code, out, _ = await call
        assert code == 0, out[-3000:]
        await in_room(server, HELPER)
        answers = [
            read_sdp(body)
            for head, body in messages_of(trace)
            if head.startswith("SIP/2.0 200") and re.search(r"^CSeq: \d+ INVITE$", head, re.M)
        ]
        assert [a.directions for a in answers] == [
            ("sendrecv",),
            ("recvonly",),
            ("inactive",),
            ("sendrecv",),
        ]
        assert len({a.port for a in answers}) == 1, answers
        assert len({a.origin for a in answers}) == 1, answers
        first = answers[0].version
        assert [a.version for a in answers] == [first, first + 1, first + 2, first + 3]
        assert (await helper.bye()).status == 200
    assert_clean(server)


async def test_hold_resume_and_offerless_reinvite(serve: ServerFactory) -> None:
    server = await serve()
    await configure(server)
    async with phones(server, HELPER, CALLER) as (helper, phone):
        await answered(helper, phone)
        first = phone.answer
        assert first is not None and first.directions == ("sendrecv",)
        assert first.formats == ("0", "101")
        version = first.version
        for mine, theirs in (("sendonly", "recvonly"), ("inactive", "inactive")):
            reply = await phone.reoffer(direction=mine)
            assert reply.status == 200, reply
            assert reply.headers.get("Content-Type") == "application/sdp"
            answer = read_sdp(reply.body)
            version += 1
            assert answer.directions == (theirs,), reply.body
            assert answer.port == first.port and answer.origin == first.origin
            assert answer.version == version
            assert answer.formats == ("0", "101")
        await in_room(server, CALLER, HELPER)
        reply = await phone.reoffer(direction="sendrecv")
        answer = read_sdp(reply.body)
        assert answer.directions == ("sendrecv",) and answer.version == version + 1
        assert answer.port == first.port

        # No SDP: the 200 carries our offer (the session as it is), the ACK our answer.
        reply = await phone.request(
            "INVITE", ack_body=offer(phone.media.port, version=phone.sdp_version + 1)
        )
        assert reply.status == 200 and reply.headers.get("Content-Type") == "application/sdp"
        ours = read_sdp(reply.body)
        assert ours.port == first.port and ours.origin == first.origin
        assert ours.version >= version + 1 and "0" in ours.formats
        assert ours.directions == ("sendrecv",)
        phone.sdp_version += 1

        # The call still works: media flows to the other caller, the caller hangs up normally.
        before = helper.media.received
        await phone.talk(0.4)
        await eventually(
            lambda: helper.media.received - before >= 10, "audio forwarded to the helper"
        )
        await in_room(server, CALLER, HELPER)
        assert (await phone.bye()).status == 200
        await in_room(server, HELPER)
        assert (await helper.bye()).status == 200
    assert_clean(server)


async def test_answer_in_ack_to_offerless_reinvite_moves_the_audio(serve: ServerFactory) -> None:
    """The caller answers our offer (in the 200 to its offerless re-INVITE) in its ACK, with a
    new RTP port: the other caller's audio goes there from then on."""
    server = await serve()
    await configure(server)
    loop = asyncio.get_running_loop()
    async with phones(server, HELPER, CALLER) as (helper, phone):
        await answered(helper, phone)
        moved = RtpPort()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: moved, local_addr=("127.0.0.1", 0)
        )
        try:
            reply = await helper.request(
                "INVITE", ack_body=offer(moved.port, version=helper.sdp_version + 1)
            )
            assert reply.status == 200 and reply.body
            before = helper.media.received
            await phone.talk(0.5)
            await eventually(lambda: moved.received >= 15, "audio at the new port")
            assert helper.media.received - before <= 2, helper.media.received - before
        finally:
            transport.close()
        assert (await phone.bye()).status == 200
        assert (await helper.bye()).status == 200


async def test_reinvite_before_ack_gets_500_with_retry_after(serve: ServerFactory) -> None:
    """RFC 3261 s14.2: a re-INVITE while our 2xx to the previous one awaits its ACK."""
    server = await serve()
    await configure(server)
    async with phones(server, HELPER, CALLER) as (helper, phone):
        await answered(helper, phone)
        reply = await phone.request("INVITE", offer(phone.media.port, version=2), ack=False)
        assert reply.status == 200
        pending = phone.cseq
        busy = await phone.request("INVITE", offer(phone.media.port, version=3))
        assert busy.status == 500, busy
        assert (busy.headers.get("Retry-After") or "").strip().isdigit(), busy
        # The ACK and the retry leave one socket for one socket on loopback: the server reads
        # the ACK first, no wait needed.
        phone.send_ack(pending)
        phone.sdp_version = 3
        retry = await phone.reoffer(direction="sendrecv")
        assert retry.status == 200 and read_sdp(retry.body).port == phone.answer.port  # type: ignore[union-attr]
        assert (await phone.bye()).status == 200
        assert (await helper.bye()).status == 200
    assert_clean(server)


# -- 2. UPDATE -----------------------------------------------------------------------------------


async def test_update_with_and_without_sdp(serve: ServerFactory) -> None:
    server = await serve()
    await configure(server)
    async with phones(server, HELPER, CALLER) as (helper, phone):
        await answered(helper, phone)
        first = phone.answer
        assert first is not None
        reply = await phone.reoffer("UPDATE", direction="sendonly")
        assert reply.status == 200, reply
        assert reply.headers.get("Content-Type") == "application/sdp"
        answer = read_sdp(reply.body)
        assert answer.directions == ("recvonly",)
        assert answer.port == first.port and answer.version == first.version + 1

        refresh = await phone.request("UPDATE")
        assert refresh.status == 200, refresh
        assert refresh.body == b"" and refresh.headers.get("Content-Type") is None
        assert (refresh.headers.get("Content-Length") or "0").strip() == "0"

        reply = await phone.reoffer("UPDATE", direction="sendrecv")
        answer = read_sdp(reply.body)
        assert answer.directions == ("sendrecv",) and answer.version == first.version + 2
        await in_room(server, CALLER, HELPER)
        assert (await phone.bye()).status == 200
        assert (await helper.bye()).status == 200
    assert_clean(server)


# -- 3. session timers ---------------------------------------------------------------------------


async def test_session_timers(serve: ServerFactory) -> None:
    server = await serve()
    await configure(server)
    async with phones(server, "+15550211", "+15550212", "+15550213", "+15550214") as (
        short,
        malformed,
        timer,
        plain,
    ):
        reply = await short.invite("Session-Expires: 30", "Supported: timer")
        assert reply.status == 422, reply
        assert (reply.headers.get("Min-SE") or "").strip() == "90", reply

        reply = await malformed.invite("Session-Expires: abc", "Supported: timer")
        assert reply.status == 400, reply

        ringing = asyncio.create_task(
            timer.invite("Session-Expires: 1800;refresher=uac", "Supported: timer")
        )
        await asyncio.wait_for(timer.ringing.wait(), 5)
        reply = await plain.invite("Session-Expires: 1800")
        assert reply.status == 200, reply
        assert reply.headers.get("Session-Expires") is None, reply
        assert "timer" not in (reply.headers.get("Require") or ""), reply

        reply = await ringing
        assert reply.status == 200, reply
        assert (reply.headers.get("Session-Expires") or "").replace(" ", "") == (
            "1800;refresher=uac"
        )
        assert "timer" in [t.strip() for t in (reply.headers.get("Require") or "").split(",")]

        # Refreshes (re-INVITE, UPDATE) are answered with the interval again (RFC 4028 s9).
        timer.sdp_version += 1
        for method, body in (("INVITE", offer(timer.media.port, version=2)), ("UPDATE", b"")):
            refresh = await timer.request(method, body, "Session-Expires: 1800;refresher=uac")
            assert refresh.status == 200, refresh
            assert (refresh.headers.get("Session-Expires") or "").startswith("1800"), refresh
        await in_room(server, "+15550213", "+15550214")
        assert (await timer.bye()).status == 200
        assert (await plain.bye()).status == 200
    assert_clean(server)


# -- 4. a re-offer with nothing in common ----------------------------------------------------


async def test_reinvite_without_common_codec_keeps_the_call(serve: ServerFactory) -> None:
    server = await serve()
    await configure(server)
    async with phones(server, HELPER, CALLER) as (helper, phone):
        await answered(helper, phone)
        first = phone.answer
        assert first is not None
        reply = await phone.reoffer(formats="18")
        assert reply.status == 488, reply
        # The behaviour under test: for 0.3 s after the 488, no BYE comes and the call stays.
        await asyncio.sleep(0.3)
        await in_room(server, CALLER, HELPER)
        assert phone.requests.empty()  # no BYE came
        # The old session is kept: audio still flows, a later offer still works on it.
        before = helper.media.received
        await phone.talk(0.4)
        await eventually(lambda: helper.media.received - before >= 10, "audio still forwarded")
        reply = await phone.reoffer(direction="sendrecv")
        assert reply.status == 200
        answer = read_sdp(reply.body)
        assert answer.port == first.port and answer.formats == first.formats
        assert (await phone.bye()).status == 200
        assert (await helper.bye()).status == 200
    assert_clean(server)


async def test_refused_reoffer_does_not_use_up_an_sdp_version(serve: ServerFactory) -> None:
    """RFC 3264 s8: a new SDP has the previous one's o= version plus one - and a 488 sent none."""
    server = await serve()
    await configure(server)
    async with phones(server, HELPER, CALLER) as (helper, phone):
        await answered(helper, phone)
        first = phone.answer
        assert first is not None
        assert (await phone.reoffer(formats="18")).status == 488
        reply = await phone.reoffer(direction="sendrecv")
        assert reply.status == 200
        assert read_sdp(reply.body).version == first.version + 1
        assert (await phone.bye()).status == 200
        assert (await helper.bye()).status == 200


# -- 5. media timeout ----------------------------------------------------------------------------


async def test_media_timeout_hangs_up_a_silent_sipp_call(
    serve: ServerFactory, tmp_path: Path
) -> None:
    """Trunk media_timeout 2 s: sipp streams 1 s of RTP and goes silent; the server sends BYE
    (sipp's scenario waits for it and answers 200) and the caller leaves the room."""
    server = await serve()
    await configure(server, media=sip.SIPMediaConfig(media_timeout=Duration(seconds=2)))
    timeouts_before = media_counter(server, "media_timeout")
    calls_before = {e["call_id"] for e in await call_log(server)}
    t = np.arange(8000) / 8000
    (tmp_path / "media_tone.ul").write_bytes(
        mulaw((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16))
    )
    async with phones(server, HELPER) as (helper,):
        ringing = asyncio.create_task(helper.invite())
        await asyncio.wait_for(helper.ringing.wait(), 5)
        call = asyncio.create_task(sipp(server, "media_timeout.xml", tmp_path))
        assert (await ringing).status == 200
        answered_at = time.monotonic()
        talking = keep_talking(helper)
        await talking.__aenter__()
        await in_room(server, CALLER, HELPER)
        code, out, _ = await call
        took = time.monotonic() - answered_at
        assert code == 0, out[-3000:]
        # 1 s of audio, then 2 s of silence, checked once a second: BYE after 3-4.5 s.
        assert 2.5 < took < 6.0, took
        await in_room(server, HELPER)
        await talking.__aexit__(None, None, None)
        assert helper.requests.empty()  # the helper, talking, is still up
        assert media_counter(server, "media_timeout") - timeouts_before == 1
        entries = [
            e
            for e in await call_log(server)
            if e["participant_identity"] == f"sip_{CALLER}" and e["call_id"] not in calls_before
        ]
        assert len(entries) == 1, entries
        entry = await logged_call(server, entries[0]["call_id"])
        assert entry.get("disconnect_reason") == "CONNECTION_TIMEOUT", entry
        assert entry.get("error") == "media timeout", entry
        assert (await helper.bye()).status == 200
    assert_clean(server)


async def test_configured_media_timeout_applies_before_the_first_packet(
    serve: ServerFactory,
) -> None:
    """A call that never sends RTP: a media_timeout set on the trunk counts from the answer
    (only the server's default waits longer, 30 s, for the first packet)."""
    server = await serve()
    await configure(server, media=sip.SIPMediaConfig(media_timeout=Duration(seconds=2)))
    async with phones(server, HELPER, CALLER) as (helper, phone):
        await answered(helper, phone)
        began = time.monotonic()
        async with keep_talking(helper):
            bye = await asyncio.wait_for(phone.requests.get(), 6)
            took = time.monotonic() - began
            assert bye.method == "BYE" and 1.8 < took < 4.0, (bye.method, took)
            await in_room(server, HELPER)
        assert (await helper.bye()).status == 200
    assert_clean(server)


async def test_hold_suspends_the_media_timeout(serve: ServerFactory) -> None:
    """A caller holding (inactive) sends nothing for longer than media_timeout: no BYE."""
    server = await serve()
    await configure(server, media=sip.SIPMediaConfig(media_timeout=Duration(seconds=2)))
    async with phones(server, HELPER, CALLER) as (helper, phone):
        await answered(helper, phone)
        async with keep_talking(helper):
            await phone.talk(0.3)
            reply = await phone.reoffer(direction="inactive")
            assert read_sdp(reply.body).directions == ("inactive",)
            await asyncio.sleep(3.5)  # the behaviour under test: longer than the 2 s timeout
            assert phone.requests.empty(), "BYE while on hold"
            await in_room(server, CALLER, HELPER)
        assert (await phone.bye()).status == 200
        assert (await helper.bye()).status == 200
    assert_clean(server)


async def test_resume_after_a_long_hold_restarts_the_media_timeout(serve: ServerFactory) -> None:
    server = await serve()
    await configure(server, media=sip.SIPMediaConfig(media_timeout=Duration(seconds=2)))
    async with phones(server, HELPER, CALLER) as (helper, phone):
        await answered(helper, phone)
        async with keep_talking(helper):
            await phone.talk(0.3)
            await phone.reoffer(direction="inactive")
            await asyncio.sleep(3.0)  # the behaviour under test: a hold longer than the timeout
            reply = await phone.reoffer(direction="sendrecv")
            assert reply.status == 200
            # Less than the 2 s timeout after the resume: the call must still be up.
            with contextlib.suppress(TimeoutError):
                bye = await asyncio.wait_for(phone.requests.get(), 1.5)
                raise AssertionError(f"hung up ({bye.method}) right after the resume")
        assert (await phone.bye()).status == 200
        assert (await helper.bye()).status == 200


# -- 6. hostile RTP ------------------------------------------------------------------------------


def hostile_datagrams(ssrc: int) -> list[bytes]:
    """Malformed and unwanted RTP: garbage, truncated headers, bad versions, lying lengths,
    unknown payload types, RTCP on the RTP port, empty and oversized datagrams."""
    rng = random.Random(4242)
    good = rtp(1, 160, ssrc, b"\xff" * 160)
    out: list[bytes] = [b"", b"\x80", b"\x80\x00\x00"]
    out += [good[:n] for n in range(12)]  # truncated headers
    out += [bytes([v << 6]) + good[1:] for v in (0, 1, 3)]  # versions other than 2
    out += [bytes([0x8F]) + good[1:16]]  # 15 CSRCs announced, 1 present
    out += [bytes([0x90]) + good[1:12] + b"\xbe\xde\x00\xff"]  # extension past the end
    out += [bytes([0xA0]) + good[1:] + b"\xff"]  # padding longer than the packet
    out += [bytes([0xA0]) + good[1:-1] + b"\x00"]  # zero padding count
    out += [rtp(2 + i, 320, ssrc, b"\x00" * 40, pt) for i, pt in enumerate((34, 96, 110, 127))]
    out += [good[:1] + bytes([200 + i]) + good[2:] for i in range(5)]  # RTCP types, no mux
    out += [rng.randbytes(rng.randrange(1, 300)) for _ in range(200)]  # garbage
    out += [rtp(50, 800, ssrc, rng.randbytes(3000 - 12))]  # 3000 octets: truncated by recvfrom
    out += [b"\x80\x00" + rng.randbytes(1398)]
    return out


def hostile_rtcp() -> list[bytes]:
    rng = random.Random(2424)
    out = [b"", b"\x80", b"\x80\xc8\x00\x06", b"\x80\xc8\xff\xff" + b"\x00" * 8]
    out += [b"\x81\xc9\x00\x01\x00\x00\x00\x01"]  # RR announcing a block it lacks
    out += [b"\xa0\xc9\x00\x01\x00\x00\x00\x00"]  # zero padding count
    out += [b"\x40\xc8\x00\x00"]  # version 1
    out += [rng.randbytes(rng.randrange(1, 200)) for _ in range(100)]
    out += [b"\x80\xca" + rng.randbytes(2998)]
    return out


REFUSED_COUNTERS = ("malformed", "unknown_payload", "truncated", "rtcp_malformed")


async def test_hostile_rtp_leaves_calls_and_server_intact(serve: ServerFactory) -> None:
    server = await serve()
    await configure(server)
    counted = ("wrong_source", "packets_in", *REFUSED_COUNTERS)
    before_test = {name: media_counter(server, f"rtp_{name}") for name in counted}

    def counted_here(name: str) -> float:
        return media_counter(server, f"rtp_{name}") - before_test[name]

    loop = asyncio.get_running_loop()
    async with phones(server, HELPER, CALLER, "+15550203") as (helper, phone, second):
        await answered(helper, phone)
        target = phone.server_rtp
        rtcp_target = (target[0], target[1] + 1)
        await phone.talk(0.3)  # latches the server to the phone's RTP socket
        forwarded = helper.media.received
        assert forwarded >= 5, forwarded

        for data in hostile_datagrams(phone.ssrc):
            phone.media.sendto(data, target)
        for data in hostile_rtcp():
            phone.media.sendto(data, rtcp_target)
            phone.media.sendto(data, target)
        await phone.talk(0.1)

        # A flood from another address while the latched one is active: refused, not relayed.
        intruder = RtpPort()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: intruder, local_addr=("127.0.0.1", 0)
        )
        try:
            before = helper.media.received
            ssrc = random.randrange(1 << 32)
            for i in range(10_000):
                intruder.sendto(rtp(i, i * 160, ssrc, b"\x7f" * 160), target)
                if i % 500 == 499:
                    await asyncio.sleep(0)  # let the loop flush our socket
            # The behaviour under test: what the flood could have had relayed has arrived by now.
            await asyncio.sleep(0.3)
            assert helper.media.received - before < 50, helper.media.received - before
        finally:
            transport.close()

        # The call goes on: the phone's audio still reaches the other caller.
        before = helper.media.received
        await phone.talk(0.5)
        await eventually(lambda: helper.media.received - before >= 15, "audio after the attack")
        assert server.proc is not None and server.proc.poll() is None
        await in_room(server, CALLER, HELPER)
        assert phone.requests.empty() and helper.requests.empty()
        assert media_counter(server, "legs") == 2
        assert (await phone.bye()).status == 200
        await in_room(server, HELPER)

        # A new call still completes.
        reply = await second.invite()
        assert reply.status == 200, reply
        await second.talk(0.2)
        assert (await second.bye()).status == 200
        assert (await helper.bye()).status == 200
        await eventually(lambda: media_counter(server, "legs") == 0, "legs released")
    # What was refused is counted (and kept when the legs are released).
    for name in REFUSED_COUNTERS:
        assert counted_here(name) > 0, (name, server.metrics())
    assert counted_here("wrong_source") >= 100, server.metrics()
    assert counted_here("packets_in") >= 40, server.metrics()
    assert_clean(server)


async def test_malformed_telephone_event_is_dropped_quietly(serve: ServerFactory) -> None:
    server = await serve()
    await configure(server)
    async with phones(server, HELPER, CALLER) as (helper, phone):
        await answered(helper, phone)
        await phone.talk(0.2)
        for payload in (b"", b"\x01", b"\x01\x80\x00", b"\x01\x80\x00\xa0\x05"):
            phone.send_rtp(payload, pt=101, ticks=0)
        before = helper.media.received
        await phone.talk(0.3)
        await eventually(lambda: helper.media.received - before >= 10, "audio after bad events")
        assert (await phone.bye()).status == 200
        assert (await helper.bye()).status == 200
    assert_clean(server)


async def test_mixing_room_survives_frames_of_another_length(serve: ServerFactory) -> None:
    """Three callers (everyone mixes): one sends 40 ms packets (a=ptime:40), another 20 ms; the
    third keeps hearing the mix every 20 ms."""
    server = await serve()
    await configure(server)
    async with phones(server, HELPER, CALLER, "+15550203") as (helper, talker, slow):
        slow.ptime = 40
        await answered(helper, talker, slow)
        await in_room(server, HELPER, CALLER, "+15550203")

        async def window() -> int:
            before = helper.media.received
            await asyncio.gather(talker.talk(1.0), slow.talk(1.0, interval=0.04, samples=320))
            return helper.media.received - before

        heard = await window()
        assert heard >= 30, heard
        heard = await window()
        assert heard >= 30, heard
        for p in (talker, slow, helper):
            assert (await p.bye()).status == 200
    assert_clean(server)
