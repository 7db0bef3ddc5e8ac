"""Inbound calls, more cases end to end: a real `sipbridge serve` configured with the official
`livekit-api` client, real `sipp` callers (scenarios in tests/interop/sipp/) or hand-written
INVITEs over UDP, and the result read back with the official client, the call log
(`sipbridge call list`) and webhooks verified by `livekit.api.WebhookReceiver`.

Covered: CANCEL while ringing; digest auth (right and wrong password); ringing timeout with a
trunk's `ringing_timeout_status`; overload (`--max-calls`) answered 503 with Retry-After; the
individual and callee rule kinds and their room names; `hide_phone_number`; the three
`include_headers` modes; two SIP callers bridged in one room; participant and track webhooks;
bad INVITEs answered with a 4xx, never a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google.protobuf.duration_pb2 import Duration
from livekit import api
from livekit.protocol import models, room, sip
from livekit.protocol.webhook import WebhookEvent

from tests import harness
from tests.harness import (
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
from tests.interop.test_inbound import CALLED, CALLER, wait_for_participant
from tests.interop.test_webhooks import assert_signed_like_livekit, receiver
from tests.signal_client import SignalClient

pytestmark = pytest.mark.skipif(
    not (shutil.which("sipp") and shutil.which("timeout")), reason="sipp comes with `make test`"
)

T = TypeVar("T")
SIP = models.ParticipantInfo.Kind.SIP
SIPP_LIMIT_S = 15.0  # no scenario here takes more than a few seconds

ServerFactory = Callable[..., Awaitable[ServerProcess]]


# -- a server, sipp, waits ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The server of every test here that needs no flags of its own."""
    yield from module_server(tmp_path_factory, "inbound-cases", sip=True, clean_log=True)


@pytest.fixture
async def serve(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[ServerFactory]:
    """A `sipbridge serve` with a SIP port sipp can reach: without extra flags the module's
    server (left clean after the test: `leave_clean`), with them one of the test's own. At the
    end each must hold no traceback in its log; a test's own server must stop cleanly (exit 0),
    the module's does at the module's end."""
    servers: list[ServerProcess] = []
    shared: list[ServerProcess] = []

    async def start(*extra: str) -> ServerProcess:
        if not extra:
            shared.append(request.getfixturevalue("shared_server"))
            return shared[-1]
        proc = sip_server_process(tmp_path, *extra)
        servers.append(proc)
        await asyncio.to_thread(proc.start)
        return proc

    yield start
    kill_leftovers()  # a test that failed early may leave a caller behind
    for proc in servers:
        await asyncio.to_thread(stop_cleanly, proc)
        assert "Traceback" not in proc.log.read_text(), proc.log.read_text()
    for proc in shared:
        await leave_clean(proc)
        assert "Traceback" not in proc.log.read_text(), proc.log_tail()


async def sipp(
    server: ServerProcess,
    scenario: str,
    *,
    caller: str = CALLER,
    called: str = CALLED,
    customer: str = "cust-42",
    hold_ms: int = 1000,
    limit: float = SIPP_LIMIT_S,
) -> tuple[int, str, float]:
    """One sipp call with `scenario`; (exit code, output, seconds it took)."""
    done = await harness.sipp(
        scenario,
        server.sip_port,  # type: ignore[attr-defined]
        hold_ms=hold_ms,
        keys={"caller": caller, "called": called, "customer": customer},
        limit=limit,
    )
    return done.code, done.out, done.seconds


def sipp_task(
    server: ServerProcess, scenario: str, **kw: object
) -> asyncio.Task[tuple[int, str, float]]:
    return asyncio.create_task(sipp(server, scenario, **kw))  # type: ignore[arg-type]


async def finished(task: asyncio.Task[tuple[int, str, float]]) -> float:
    """Wait for a sipp call; it must have succeeded. Returns how long it took."""
    code, out, elapsed = await task
    assert code == 0, out[-3000:]
    return elapsed


async def ringing(
    lk: api.LiveKitAPI, room_name: str, call: asyncio.Task[tuple[int, str, float]]
) -> models.ParticipantInfo:
    """The caller of `call`, once it is in `room_name` with status ringing; fails at once with
    sipp's output if sipp ends first."""
    waiter = asyncio.create_task(wait_for_participant(lk, room_name, status="ringing", timeout=5))
    done, _ = await asyncio.wait({waiter, call}, return_when=asyncio.FIRST_COMPLETED)
    if waiter in done:
        return waiter.result()
    waiter.cancel()
    code, out, _ = call.result()
    raise AssertionError(f"sipp ended ({code}) before ringing in {room_name!r}:\n{out[-3000:]}")


async def sip_participants(lk: api.LiveKitAPI, room_name: str) -> list[models.ParticipantInfo]:
    rooms = await lk.room.list_rooms(room.ListRoomsRequest(names=[room_name]))
    if not rooms.rooms:
        return []
    listed = await lk.room.list_participants(room.ListParticipantsRequest(room=room_name))
    return [p for p in listed.participants if p.kind == SIP]


async def no_sip_participant(lk: api.LiveKitAPI, room_name: str) -> None:
    async def gone() -> bool:
        return not await sip_participants(lk, room_name)

    await eventually(gone, f"the SIP participant to leave {room_name!r}", timeout=5)


async def inbound_trunk(lk: api.LiveKitAPI, **fields: object) -> str:
    """An inbound trunk for CALLED (unless `numbers` says otherwise) with `fields` set."""
    info = sip.SIPInboundTrunkInfo(**{"name": "carrier", "numbers": [CALLED], **fields})
    trunk = await lk.sip.create_inbound_trunk(sip.CreateSIPInboundTrunkRequest(trunk=info))
    return trunk.sip_trunk_id


async def dispatch_rule(lk: api.LiveKitAPI, rule: sip.SIPDispatchRule, **fields: object) -> str:
    info = sip.SIPDispatchRuleInfo(rule=rule, **fields)
    created = await lk.sip.create_dispatch_rule(
        sip.CreateSIPDispatchRuleRequest(dispatch_rule=info)
    )
    return created.sip_dispatch_rule_id


def direct(room_name: str) -> sip.SIPDispatchRule:
    return sip.SIPDispatchRule(dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name=room_name))


async def subscribe(lk: api.LiveKitAPI, room_name: str, identity: str, track_sid: str) -> None:
    await lk.room.update_subscriptions(
        room.UpdateSubscriptionsRequest(
            room=room_name, identity=identity, track_sids=[track_sid], subscribe=True
        )
    )


# -- hand-written requests over UDP --------------------------------------------------------------

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def invite(
    port: int,
    *,
    call_id: str | None,
    from_user: bytes = CALLER.encode(),
    from_tag: str = "raw-f1",
    cseq: int = 1,
    branch: str = "z9hG4bKraw1",
    extra: bytes = b"",
) -> bytes:
    head = (
        f"INVITE sip:{CALLED}@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch={branch};rport\r\n"
    ).encode()
    head += b"From: <sip:" + from_user + f"@127.0.0.1>;tag={from_tag}\r\n".encode()
    head += f"To: <sip:{CALLED}@127.0.0.1>\r\n".encode()
    if call_id is not None:
        head += f"Call-ID: {call_id}\r\n".encode()
    head += (
        f"CSeq: {cseq} INVITE\r\n"
        "Contact: <sip:caller@127.0.0.1:5999>\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Type: application/sdp\r\n"
    ).encode()
    head += extra
    head += f"Content-Length: {len(SDP)}\r\n\r\n".encode()
    return head + SDP


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def header_of(message: bytes, name: str) -> str | None:
    for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip().decode(errors="replace")
    return None


def same_transaction(method: str, invite_request: bytes, to: str) -> bytes:
    """A CANCEL or the ACK for a non-2xx final response: the INVITE's Via (so its branch),
    From, Call-ID and CSeq number, the given To (RFC 3261 s9.1, s17.1.1.3)."""
    first, rest = invite_request.split(b"\r\n", 1)
    lines = [f"{method} ".encode() + first.split(b" ")[1] + b" SIP/2.0"]
    for line in rest.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name = line.partition(b":")[0].strip().lower()
        if name in (b"via", b"from", b"call-id", b"max-forwards"):
            lines.append(line)
        elif name == b"cseq":
            lines.append(line.replace(b"INVITE", method.encode()))
    lines += [b"To: " + to.encode(), b"Content-Length: 0"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class UdpCaller(asyncio.DatagramProtocol):
    """A hand-driven SIP client on a loopback UDP socket."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.received.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def responses(
        self, request: bytes, *, until: int = 200, timeout: float = 3.0, send: bool = True
    ) -> list[bytes]:
        """Send `request` (unless `send` is False: it was sent before); the responses to it up
        to the first with a status >= `until`, or up to `timeout` of silence. A non-2xx final
        response to an INVITE is ACKed."""
        call_id = header_of(request, "Call-ID")
        method = request.split(b" ", 1)[0].decode()
        if send:
            self.send(request)
        got: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    reply = await self.received.get()
                    cseq = header_of(reply, "CSeq") or ""
                    if header_of(reply, "Call-ID") != call_id or not cseq.endswith(method):
                        continue  # a retransmission of an earlier final response, say
                    got.append(reply)
                    if status_of(reply) >= until:
                        break
        except TimeoutError:
            return got
        final = got[-1]
        if method == "INVITE" and status_of(final) >= 300 and call_id is not None:
            self.send(same_transaction("ACK", request, header_of(final, "To") or ""))
        return got


@asynccontextmanager
async def udp_caller(port: int) -> AsyncIterator[UdpCaller]:
    loop = asyncio.get_running_loop()
    transport, caller = await loop.create_datagram_endpoint(
        UdpCaller, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", port)
    )
    try:
        yield caller
    finally:
        transport.close()


async def udp_transaction(port: int, request: bytes, *, timeout: float = 3.0) -> list[bytes]:
    async with udp_caller(port) as caller:
        return await caller.responses(request, timeout=timeout)


def options(port: int) -> bytes:
    # A new transaction each time (RFC 3261 s17.2.3: the branch names it): on a shared server
    # an OPTIONS with an earlier one's branch is taken for its retransmission.
    unique = secrets.token_hex(4)
    return (
        f"OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKping-{unique};rport\r\n"
        "From: <sip:monitor@127.0.0.1>;tag=ping\r\n"
        "To: <sip:ping@127.0.0.1>\r\n"
        f"Call-ID: ping-after-bad-input-{unique}@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def digest_credentials(challenge: str, *, username: str, password: str, uri: str) -> str:
    """A Proxy-Authorization value answering `challenge` for an INVITE to `uri`, qop=auth
    (RFC 7616 s3.4.1; MD5 or SHA-256, whichever the challenge names)."""
    params = {k.lower(): v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|[^,\s]+)', challenge)}
    algorithm = params.get("algorithm", "MD5")
    hash_name = "sha256" if algorithm.upper() == "SHA-256" else "md5"

    def h(text: str) -> str:
        return hashlib.new(hash_name, text.encode()).hexdigest()

    realm, nonce, nc, cnonce = params["realm"], params["nonce"], "00000001", "0a4f113b"
    ha1 = h(f"{username}:{realm}:{password}")
    ha2 = h(f"INVITE:{uri}")
    response = h(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    value = (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm={algorithm}, qop=auth, nc={nc}, cnonce="{cnonce}"'
    )
    if "opaque" in params:
        value += f', opaque="{params["opaque"]}"'
    return value


# -- 1. CANCEL while ringing ---------------------------------------------------------------------


async def test_cancel_while_ringing(serve: ServerFactory) -> None:
    server = await serve()
    async with client(server) as lk:
        await inbound_trunk(lk)
        await dispatch_rule(lk, direct("lobby"))
        call = sipp_task(server, "uac_cancel.xml", hold_ms=1000)
        p = await ringing(lk, "lobby", call)
        got = await lk.room.get_participant(
            room.RoomParticipantIdentity(room="lobby", identity=p.identity)
        )
        assert got.kind == SIP and got.attributes["sip.callStatus"] == "ringing"
        call_id = got.attributes["sip.callID"]
        # sipp succeeds only with 200 to its CANCEL and 487 to its INVITE.
        await finished(call)
        await no_sip_participant(lk, "lobby")

    entry = await logged_call(server, call_id)
    assert entry["call_status"] in ("SCS_DISCONNECTED", "SCS_ERROR"), entry
    assert entry["call_status_code"]["code"] == "SIP_STATUS_REQUEST_TERMINATED", entry
    assert int(entry["ended_at_ns"]) >= int(entry["created_at_ns"]) > 0
    assert entry["room_name"] == "lobby" and entry["participant_identity"] == p.identity
    assert entry["call_direction"] == "SCD_INBOUND"


# -- 2. digest auth ------------------------------------------------------------------------------


async def test_digest_auth_then_answered_on_subscribe(serve: ServerFactory) -> None:
    server = await serve()
    async with client(server) as lk:
        trunk_id = await inbound_trunk(lk, auth_username="carrier", auth_password="right-pass")
        await dispatch_rule(lk, direct("secure"))
        async with SignalClient(server.url, "secure", "agent"):
            call = sipp_task(server, "uac_digest.xml", hold_ms=300)
            p = await ringing(lk, "secure", call)
            assert p.attributes["sip.trunkID"] == trunk_id
            await subscribe(lk, "secure", "agent", p.tracks[0].sid)
            # 407, ACK, the INVITE with credentials, 200 (once subscribed), ACK, BYE, 200.
            await finished(call)
            await no_sip_participant(lk, "secure")


async def test_digest_wrong_password_is_refused(serve: ServerFactory) -> None:
    server = await serve()
    async with client(server) as lk:
        await inbound_trunk(lk, auth_username="carrier", auth_password="right-pass")
        await dispatch_rule(lk, direct("secure"))
        # 407, ACK, the INVITE with the wrong password, 403, ACK.
        await finished(sipp_task(server, "uac_digest_wrong.xml"))
        assert await sip_participants(lk, "secure") == []
        rooms = await lk.room.list_rooms(room.ListRoomsRequest())
        assert all(not r.num_participants for r in rooms.rooms), rooms


async def test_digest_challenge_wrong_and_right_password_over_udp(serve: ServerFactory) -> None:
    """The same flows by hand, answering whatever algorithm the 407 names."""
    server = await serve()
    port = server.sip_port  # type: ignore[attr-defined]
    uri = f"sip:{CALLED}@127.0.0.1:{port}"
    async with client(server) as lk, udp_caller(port) as caller:
        trunk_id = await inbound_trunk(lk, auth_username="carrier", auth_password="right-pass")
        await dispatch_rule(lk, direct("secure"))

        async def challenged(call_id: str, tag: str) -> str:
            first = invite(port, call_id=call_id, from_tag=tag, branch=f"z9hG4bK{tag}-1")
            replies = await caller.responses(first)
            assert replies and status_of(replies[-1]) == 407, replies
            assert 180 not in [status_of(r) for r in replies], replies
            challenge = header_of(replies[-1], "Proxy-Authenticate")
            assert challenge is not None and challenge.lower().startswith("digest "), replies
            assert 'realm="' in challenge and "nonce=" in challenge, challenge
            return challenge

        def authenticated(call_id: str, tag: str, challenge: str, password: str) -> bytes:
            credentials = digest_credentials(
                challenge, username="carrier", password=password, uri=uri
            )
            return invite(
                port,
                call_id=call_id,
                from_tag=tag,
                cseq=2,
                branch=f"z9hG4bK{tag}-2",
                extra=f"Proxy-Authorization: {credentials}\r\n".encode(),
            )

        # Wrong password: 403, and nobody joins.
        challenge = await challenged("auth-wrong@127.0.0.1", "wrong")
        replies = await caller.responses(
            authenticated("auth-wrong@127.0.0.1", "wrong", challenge, "wrong-pass")
        )
        assert replies and status_of(replies[-1]) == 403, replies
        assert await sip_participants(lk, "secure") == []

        # Right password: it rings and the caller joins the room; then the caller cancels.
        challenge = await challenged("auth-right@127.0.0.1", "right")
        request = authenticated("auth-right@127.0.0.1", "right", challenge, "right-pass")
        replies = await caller.responses(request, until=180)
        assert replies and status_of(replies[-1]) == 180, replies
        p = await wait_for_participant(lk, "secure", status="ringing", timeout=5)
        assert p.attributes["sip.trunkID"] == trunk_id
        to = header_of(replies[-1], "To") or ""
        cancelled = await caller.responses(same_transaction("CANCEL", request, to))
        assert cancelled and status_of(cancelled[-1]) == 200, cancelled
        terminated = await caller.responses(request, send=False)  # and ACKs the 487
        assert terminated and status_of(terminated[-1]) == 487, terminated
        await no_sip_participant(lk, "secure")


# -- 3. ringing timeout --------------------------------------------------------------------------


async def test_ringing_timeout_answers_the_trunks_status(serve: ServerFactory) -> None:
    server = await serve()
    async with client(server) as lk:
        await inbound_trunk(
            lk,
            ringing_timeout=Duration(seconds=2),
            ringing_timeout_status=sip.SIPStatusCode.SIP_STATUS_TEMPORARILY_UNAVAILABLE,
        )
        await dispatch_rule(lk, direct("nobody"))
        call = sipp_task(server, "uac_refused_480.xml")
        p = await ringing(lk, "nobody", call)
        elapsed = await finished(call)  # the INVITE got 480 (and sipp ACKed it)
        assert 1.8 <= elapsed <= 4.5, elapsed
        await no_sip_participant(lk, "nobody")
        with pytest.raises(api.TwirpError):
            await lk.room.get_participant(
                room.RoomParticipantIdentity(room="nobody", identity=p.identity)
            )
    entry = await logged_call(server, p.attributes["sip.callID"])
    assert entry["call_status_code"]["code"] == "SIP_STATUS_TEMPORARILY_UNAVAILABLE", entry


# -- 4. overload ---------------------------------------------------------------------------------


async def test_over_max_calls_answers_503_with_retry_after(serve: ServerFactory) -> None:
    server = await serve("--max-calls", "1")
    port = server.sip_port  # type: ignore[attr-defined]
    async with client(server) as lk:
        await inbound_trunk(
            lk,
            ringing_timeout=Duration(seconds=2),
            ringing_timeout_status=sip.SIPStatusCode.SIP_STATUS_TEMPORARILY_UNAVAILABLE,
        )
        await dispatch_rule(lk, direct("busy"))
        first = sipp_task(server, "uac_refused_480.xml")
        await ringing(lk, "busy", first)
        second = invite(port, call_id="overload-2@127.0.0.1", from_user=b"+15550002")
        replies = await udp_transaction(port, second)
        assert replies and status_of(replies[-1]) == 503, replies
        assert 180 not in [status_of(r) for r in replies], replies
        retry_after = header_of(replies[-1], "Retry-After")
        assert retry_after is not None and retry_after.split(";")[0].strip().isdigit(), replies
        assert [p.identity for p in await sip_participants(lk, "busy")] == [f"sip_{CALLER}"]
        await finished(first)
        await no_sip_participant(lk, "busy")
        # The slot is free again: the next call rings (and its caller cancels it).
        third = sipp_task(server, "uac_cancel.xml", caller="+15550003", hold_ms=200)
        await finished(third)


# -- 5. rule kinds -------------------------------------------------------------------------------

KIND_NUMBERS = {
    "individual": "+15105550101",
    "individual_fixed": "+15105550102",
    "callee": "+15105550103",
    "callee_random": "+15105550104",
}


async def test_individual_and_callee_room_names(serve: ServerFactory) -> None:
    server = await serve()
    n = KIND_NUMBERS
    async with client(server) as lk:
        await inbound_trunk(lk, numbers=list(n.values()))
        rules = {
            "individual": await dispatch_rule(
                lk,
                sip.SIPDispatchRule(
                    dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix="ind")
                ),
                numbers=[n["individual"]],
            ),
            "individual_fixed": await dispatch_rule(
                lk,
                sip.SIPDispatchRule(
                    dispatch_rule_individual=sip.SIPDispatchRuleIndividual(
                        room_prefix="fixed", no_randomness=True
                    )
                ),
                numbers=[n["individual_fixed"]],
            ),
            "callee": await dispatch_rule(
                lk,
                sip.SIPDispatchRule(
                    dispatch_rule_callee=sip.SIPDispatchRuleCallee(room_prefix="callee")
                ),
                numbers=[n["callee"]],
            ),
            "callee_random": await dispatch_rule(
                lk,
                sip.SIPDispatchRule(
                    dispatch_rule_callee=sip.SIPDispatchRuleCallee(
                        room_prefix="calr", randomize=True
                    )
                ),
                numbers=[n["callee_random"]],
            ),
        }
        expected = {
            "individual": rf"ind_{re.escape(CALLER)}_[0-9A-Za-z]+",
            "individual_fixed": re.escape(f"fixed_{CALLER}"),
            "callee": re.escape(f"callee_{n['callee']}"),
            "callee_random": rf"calr_{re.escape(n['callee_random'])}_[0-9A-Za-z]+",
        }
        calls = [
            sipp_task(server, "uac_cancel.xml", called=num, hold_ms=2500) for num in n.values()
        ]

        async def all_rooms() -> dict[str, str] | None:
            listed = await lk.room.list_rooms(room.ListRoomsRequest())
            found = {}
            for kind, pattern in expected.items():
                names = [r.name for r in listed.rooms if re.fullmatch(pattern, r.name)]
                if len(names) == 1:
                    found[kind] = names[0]
            return found if len(found) == len(expected) else None

        rooms = await eventually(all_rooms, "a room for each rule kind", timeout=6)
        listed = await lk.room.list_rooms(room.ListRoomsRequest())
        assert sorted(r.name for r in listed.rooms) == sorted(rooms.values())
        for kind, room_name in rooms.items():
            (p,) = await sip_participants(lk, room_name)
            assert p.identity == f"sip_{CALLER}"
            assert p.attributes["sip.ruleID"] == rules[kind]
            assert p.attributes["sip.trunkPhoneNumber"] == n[kind]
        for call in calls:
            await finished(call)


# -- 6. hide_phone_number ------------------------------------------------------------------------


async def test_hide_phone_number(serve: ServerFactory) -> None:
    server = await serve()
    async with client(server) as lk:
        trunk_id = await inbound_trunk(lk)
        rule_id = await dispatch_rule(lk, direct("private"), hide_phone_number=True)
        call = sipp_task(server, "uac_cancel.xml", hold_ms=1000)
        p = await ringing(lk, "private", call)
        digest = hashlib.sha256(CALLER.encode()).digest()[:8].hex()
        assert re.fullmatch(r"sip_[0-9a-f]{16}", p.identity), p.identity
        assert p.identity == f"sip_{digest}"
        assert p.name == f"Phone {CALLER[-4:]}"
        attrs = dict(p.attributes)
        for key in ("sip.phoneNumber", "sip.trunkPhoneNumber", "sip.hostname"):
            assert key not in attrs, attrs
        assert attrs["sip.callID"].startswith("SCL_")
        assert attrs["sip.trunkID"] == trunk_id and attrs["sip.ruleID"] == rule_id
        assert not [v for v in attrs.values() if CALLER[2:] in v], attrs
        await finished(call)


# -- 7. include_headers --------------------------------------------------------------------------

HEADER_MODES = {
    "+15105550201": sip.SIPHeaderOptions.SIP_NO_HEADERS,
    "+15105550202": sip.SIPHeaderOptions.SIP_X_HEADERS,
    "+15105550203": sip.SIPHeaderOptions.SIP_ALL_HEADERS,
}


async def test_include_headers_modes(serve: ServerFactory) -> None:
    server = await serve()
    async with client(server) as lk:
        for number, mode in HEADER_MODES.items():
            await inbound_trunk(lk, name=f"mode-{mode}", numbers=[number], include_headers=mode)
        await dispatch_rule(
            lk,
            sip.SIPDispatchRule(dispatch_rule_callee=sip.SIPDispatchRuleCallee(room_prefix="hdr")),
        )
        calls = [sipp_task(server, "uac_cancel.xml", called=n, hold_ms=2000) for n in HEADER_MODES]
        seen: dict[int, dict[str, str]] = {}
        for number, mode in HEADER_MODES.items():
            p = await wait_for_participant(lk, f"hdr_{number}", status="ringing", timeout=6)
            seen[mode] = dict(p.attributes)
        for call in calls:
            await finished(call)

    none = seen[sip.SIPHeaderOptions.SIP_NO_HEADERS]
    assert not [k for k in none if k.startswith("sip.h.")], none
    assert none["sip.twilio.callSid"].startswith("CA")  # carrier headers are mapped anyway

    x = seen[sip.SIPHeaderOptions.SIP_X_HEADERS]
    headers = {k: v for k, v in x.items() if k.startswith("sip.h.")}
    assert headers == {
        "sip.h.x-twilio-callsid": x["sip.twilio.callSid"],
        "sip.h.x-customer-id": "cust-42",
        "sip.h.x-mixed-case": "Value-1",
    }, x

    everything = seen[sip.SIPHeaderOptions.SIP_ALL_HEADERS]
    assert everything["sip.h.call-id"] == everything["sip.callIDFull"]
    assert everything["sip.h.cseq"] == "1 INVITE"
    assert everything["sip.h.x-customer-id"] == "cust-42"
    assert everything["sip.h.p-carrier-note"] == "not an x header"
    assert everything["sip.h.content-type"] == "application/sdp"
    for name in ("via", "from", "to", "contact", "max-forwards"):
        assert f"sip.h.{name}" in everything, everything
    assert not [k for k in everything if k.startswith("sip.h.") and k != k.lower()], everything


# -- 8. two SIP callers bridged ------------------------------------------------------------------


async def test_two_sip_callers_answer_each_other(serve: ServerFactory) -> None:
    server = await serve()
    async with client(server) as lk:
        await inbound_trunk(lk)
        await dispatch_rule(lk, direct("bridge"))
        first = sipp_task(server, "uac_inbound.xml", caller="+15550011", hold_ms=3000)
        await ringing(lk, "bridge", first)
        # The behaviour under test, not a wait for something: for half a second alone in the
        # room, nobody answers it.
        await asyncio.sleep(0.5)
        (alone,) = await sip_participants(lk, "bridge")
        assert alone.attributes["sip.callStatus"] == "ringing"
        second = sipp_task(server, "uac_inbound.xml", caller="+15550012", hold_ms=3000)

        async def both_active() -> list[models.ParticipantInfo] | None:
            ps = await sip_participants(lk, "bridge")
            if len(ps) == 2 and all(p.attributes["sip.callStatus"] == "active" for p in ps):
                return ps
            return None

        await eventually(both_active, "both callers to be active", timeout=5)
        for identity in ("sip_+15550011", "sip_+15550012"):
            got = await lk.room.get_participant(
                room.RoomParticipantIdentity(room="bridge", identity=identity)
            )
            assert got.attributes["sip.callStatus"] == "active"
        await finished(first)
        await finished(second)
        await no_sip_participant(lk, "bridge")


# -- 9. webhooks ---------------------------------------------------------------------------------


async def test_webhooks_for_a_sip_participant(serve: ServerFactory) -> None:
    async with receiver() as rx:
        server = await serve("--webhook", rx.url)
        async with client(server) as lk:
            await inbound_trunk(lk)
            await dispatch_rule(lk, direct("hooked"))
            async with SignalClient(server.url, "hooked", "agent"):
                call = sipp_task(server, "uac_inbound.xml", hold_ms=300)
                p = await ringing(lk, "hooked", call)
                await subscribe(lk, "hooked", "agent", p.tracks[0].sid)
                await finished(call)
                await no_sip_participant(lk, "hooked")

                events: list[WebhookEvent] = []

                def sip_left() -> bool:
                    return any(
                        e.event == "participant_left" and e.participant.identity == p.identity
                        for e in events
                    )

                async with asyncio.timeout(10):
                    while not sip_left():
                        events.append(await rx.next_event())

        mine = [e for e in events if e.participant.identity == p.identity]
        kinds = [e.event for e in mine]
        assert kinds[0] == "participant_joined", kinds
        assert "track_published" in kinds and kinds[-1] == "participant_left", kinds
        assert kinds.index("track_published") < kinds.index("participant_left")
        joined = mine[0]
        assert joined.room.name == "hooked"
        assert joined.participant.kind == SIP and joined.participant.sid == p.sid
        assert joined.participant.attributes["sip.callStatus"] == "ringing"
        assert joined.participant.attributes["sip.callID"] == p.attributes["sip.callID"]
        assert joined.participant.attributes["sip.phoneNumber"] == CALLER
        published = mine[kinds.index("track_published")]
        assert published.track.type == models.TrackType.AUDIO
        assert published.track.sid == p.tracks[0].sid
        left = mine[-1]
        assert left.participant.sid == p.sid and left.participant.kind == SIP
        assert left.room.name == "hooked"
        assert left.participant.attributes["sip.callStatus"] == "hangup"
        assert left.participant.disconnect_reason == models.DisconnectReason.CLIENT_INITIATED
        for delivery in rx.deliveries:
            assert_signed_like_livekit(delivery)


# -- 10. bad input -------------------------------------------------------------------------------

# case: (the INVITE's oddity, the X-Bad attribute expected when the call is let through and
# rings until the trunk's ringing timeout answers 480; None when it must be refused at once)
BAD_INVITES: dict[str, tuple[dict[str, Any], str | None]] = {
    "long From user": ({"from_user": b"1" * 500}, None),
    "control characters in the From user": ({"from_user": b"+1555\x07\x010001"}, None),
    "escaped control characters in the From user": ({"from_user": b"+1555%07%010001"}, None),
    "non-UTF-8 byte in the From user": ({"from_user": b"+1555\xff0001"}, None),
    "no Call-ID": ({"call_id": None}, None),
    # Let through, the values sanitised: U+FFFD for bytes that are not UTF-8, controls dropped.
    "non-UTF-8 byte in an X- header": ({"extra": b"X-Bad: ab\xffcd\r\n"}, "ab\ufffdcd"),
    "control characters in an X- header": ({"extra": b"X-Bad: a\x01b\x7fc\x1bd\r\n"}, "abcd"),
}


@pytest.mark.parametrize("case", list(BAD_INVITES))
async def test_bad_invites_get_a_4xx(serve: ServerFactory, case: str) -> None:
    server = await serve()
    port = server.sip_port  # type: ignore[attr-defined]
    oddity, sanitised = BAD_INVITES[case]
    async with client(server) as lk:
        # A trunk and a rule that would take the call, ringing for 1 s at most: only the bad
        # part of the INVITE can refuse it, and anything that rings still ends with a 4xx.
        await inbound_trunk(
            lk,
            include_headers=sip.SIPHeaderOptions.SIP_X_HEADERS,
            ringing_timeout=Duration(seconds=1),
            ringing_timeout_status=sip.SIPStatusCode.SIP_STATUS_TEMPORARILY_UNAVAILABLE,
        )
        await dispatch_rule(lk, direct("bad"))
        unique = secrets.token_hex(4)  # the server is shared: a new transaction, a new call
        request = invite(
            port,
            **{"call_id": f"bad-{unique}@127.0.0.1", "branch": f"z9hG4bKbad-{unique}", **oddity},
        )
        replies = asyncio.create_task(udp_transaction(port, request, timeout=4))
        if sanitised is not None:
            p = await wait_for_participant(lk, "bad", timeout=3)
            assert p.attributes["sip.h.x-bad"] == sanitised, p.attributes
        got = await replies
        assert got, f"{case}: no answer at all"
        final = status_of(got[-1])
        assert 400 <= final < 500, got[-1]
        if sanitised is None:
            assert 180 not in [status_of(r) for r in got], got
        assert await sip_participants(lk, "bad") == []

    assert server.proc is not None and server.proc.poll() is None, server.log.read_text()
    pong = await udp_transaction(port, options(port))
    assert pong and status_of(pong[-1]) == 200, pong
    assert "Traceback" not in server.log.read_text()
