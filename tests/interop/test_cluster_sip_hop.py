"""The node-to-node SIP hop (issue 13, docs/cluster.md s4): two `sipbridge serve` nodes on
127.0.0.2-3 and one real redis-server; a direct rule puts every call into a room node A owns,
and callers call node B, which proxies their INVITEs to A:

- sipp over TCP and over UDP with its usual call (`uac_inbound.xml`: the ACK and BYE go back to
  where the INVITE went, B, ignoring the 200's Contact): the hop to A uses the caller's
  transport (A's trace of the call shows the INVITE, ACK and BYE arriving over it, B's Via on
  top), the ACK and BYE reach A through B, and the call ends with its BYE's 200 as on one
  node; A's own BYE (the caller removed from the room) goes to the caller straight, not
  through B (test_cluster_hop_loss.py: with B dead);
- A frozen (SIGSTOP: it answers nothing, its heartbeat lives out its 5 s) with B's INVITE on
  its way: once A's heartbeat expires, B answers the caller 503 with Retry-After at once, not
  408 after Timer B's 32 s; the caller's next INVITE is served by B, which takes the room over.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from livekit.protocol import room as room_proto
from livekit.protocol import sip

from sipbridge.server.api.auth import sign_token
from tests.cluster import Cluster, Held, Node, answer, cluster, lk_client, sip_rooms
from tests.harness import eventually, sipp_port
from tests.harness import sipp as run_sipp
from tests.helpers import API_KEY, API_SECRET
from tests.interop.test_cluster_faults import answered
from tests.interop.test_inbound_cases import header_of, status_of
from tests.redis_server import RedisServer, redis_server
from tests.udp_peer import udp_peer

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not shutil.which("sipp"), reason="sipp comes with `make test`"),
]

CALLED = "+15105550177"
ROOM = "hop"
TIMER_B_S = 32.0


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
async def two(tmp_path: Path, redis: RedisServer) -> AsyncIterator[Cluster]:
    """A and B, a trunk for CALLED and a rule into ROOM (known to both), ROOM made on A."""
    with cluster(tmp_path, redis, 2) as nodes:
        await rule_into_room_on(nodes)
        yield nodes
        codes = nodes.stop()
    nodes.assert_clean(codes)


async def rule_into_room_on(nodes: Cluster) -> None:
    """A trunk for CALLED and a rule into ROOM, known to both nodes; ROOM made on A."""
    a, b = nodes.nodes
    async with lk_client(a) as lk:
        await lk.sip.create_inbound_trunk(
            sip.CreateSIPInboundTrunkRequest(
                trunk=sip.SIPInboundTrunkInfo(name="carrier", numbers=[CALLED])
            )
        )
        rule = sip.SIPDispatchRule(dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name=ROOM))
        await lk.sip.create_dispatch_rule(
            sip.CreateSIPDispatchRuleRequest(dispatch_rule=sip.SIPDispatchRuleInfo(rule=rule))
        )
        await lk.room.create_room(room_proto.CreateRoomRequest(name=ROOM))

    async def b_has_the_rule() -> bool:
        async with lk_client(b) as lk:
            rules = await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())
        return len(rules.items) == 1

    await eventually(b_has_the_rule, "the rule on B")
    assert await owner(nodes, ROOM) == "n0"


async def owner(nodes: Cluster, room: str) -> str | None:
    r = aioredis.Redis.from_url(nodes.nodes[0].redis_url)
    try:
        value = await r.get(f"{nodes.prefix}room:{room}")
    finally:
        await r.aclose()
    return value.decode() if value is not None else None


def sip_messages(node: Node) -> dict[str, float]:
    prefix = 'sipbridge_sip_messages_total{kind="'
    return {
        k[len(prefix) :].split('"')[0]: v for k, v in node.metrics().items() if k.startswith(prefix)
    }


async def trace(node: Node, call_id: str) -> dict[str, Any]:
    auth = "Bearer " + sign_token(API_KEY, API_SECRET, sip={"admin": True})
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{node.url}/sipbridge/v1/calls/{call_id}/trace", headers={"Authorization": auth}
        ) as reply,
    ):
        assert reply.status == 200, await reply.text()
        return await reply.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_a_call_to_b_reaches_as_room_with_its_ack_and_bye_sent_to_b(
    two: Cluster, transport: str
) -> None:
    a, b = two.nodes
    number = "+15550123"
    call = asyncio.create_task(
        run_sipp(
            "uac_inbound.xml",
            b.sip_port,
            host=b.host,
            hold_ms=1500,
            transport={"tcp": "t1", "udp": "u1"}[transport],
            keys={"caller": number, "called": CALLED, "customer": "c"},
            limit=40,
        )
    )
    async with contextlib.AsyncExitStack() as agents:
        held = await answered(two.nodes, number, agents)
        assert held.node is a and held.room == ROOM
        done = await asyncio.wait_for(call, 40)
    assert done.code == 0, done.out[-3000:]  # the BYE (sent to B) answered 200 by A
    call_id = held.participant.attributes["sip.callID"]

    async def ended() -> dict[str, Any] | None:
        found = await trace(a, call_id)
        methods = [e["text"].split(" ", 1)[0] for e in found["entries"] if e["direction"] == "in"]
        return found if "BYE" in methods else None

    entries = (await eventually(ended, "A's trace to show the BYE"))["entries"]
    got = [
        (e["text"].split(" ", 1)[0], e["transport"], top_via(e["text"]))
        for e in entries
        if e["direction"] == "in"
    ]
    # every request of the call came to A from B (B's Via on top), over the caller's transport
    hop = f"SIP/2.0/{transport.upper()} {b.sip}"
    assert [m for m, _, _ in got] == ["INVITE", "ACK", "BYE"], got
    assert {(t, via.split(";")[0]) for _, t, via in got} == {(transport, hop)}, got
    strays = sip_messages(b)
    assert (strays.get("proxied_stray_ack"), strays.get("proxied_stray_bye")) == (1, 1), strays


def top_via(text: str) -> str:
    return header_of(text.encode(), "Via") or ""


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_the_owners_bye_reaches_a_caller_whose_invite_came_through_b(
    two: Cluster, transport: str
) -> None:
    """A sends its BYE (the caller removed from the room) straight to the caller, where B's
    signed header says it is (over TCP: a connection of A's own to the caller's Contact), not
    through B; the caller's 200 reaches A (over UDP sent per the BYE's Via)."""
    a, b = two.nodes
    number = "+15550125"
    call = asyncio.create_task(
        run_sipp(
            {"tcp": "uac_hung_up.xml", "udp": "uac_hung_up_via.xml"}[transport],
            b.sip_port,
            host=b.host,
            transport={"tcp": "t1", "udp": "u1"}[transport],
            keys={"caller": number, "called": CALLED, "customer": "c"},
            limit=40,
        )
    )
    async with contextlib.AsyncExitStack() as agents:
        held = await answered(two.nodes, number, agents)
        assert held.node is a
        async with lk_client(b) as lk:  # (handed to A)
            await lk.room.remove_participant(
                room_proto.RoomParticipantIdentity(room=ROOM, identity=f"sip_{number}")
            )
        done = await asyncio.wait_for(call, 40)
    assert done.code == 0, done.out[-3000:]  # the BYE came, and was answered
    call_id = held.participant.attributes["sip.callID"]
    found = await trace(a, call_id)
    bye = next(e for e in found["entries"] if e["direction"] == "out" and e["text"][:4] == "BYE ")
    assert (bye["transport"], bye["remote_host"]) == (transport, "127.0.0.1"), bye  # not B
    if transport == "tcp":
        # (sipp -t t1 sends its 200 on its one connection, to B, which drops it: no transaction
        # there - a caller answers on the connection the BYE came on, s18.2.2; once sipp closes
        # A's connection, A sends its BYE again through B, the fallback. test_cluster_hop_loss.py
        # has a TCP caller that answers where it should)
        return
    strays = sip_messages(b)
    assert strays.get("proxied_stray_bye") is None, strays  # (not through B)

    async def bye_answered() -> bool:
        found = await trace(a, call_id)
        texts = [e["text"] for e in found["entries"] if e["direction"] == "in"]
        return any(t.startswith("SIP/2.0 200") and "CSeq: 1 BYE" in t for t in texts)

    await eventually(bye_answered, "the caller's 200 to A's BYE, at A")


async def final_answer(node: Node, caller: str, wait_s: float) -> tuple[bytes, float, list[int]]:
    """One INVITE by hand over UDP to `node`: its first final response (ACKed, or CANCELled
    when the answer is 180: it rings until someone answers), the seconds it took, the statuses
    seen before it."""
    async with udp_peer() as (transport, received, me):
        tag = secrets.token_hex(4)
        via = f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK{tag};rport\r\n"
        common = (
            f"From: <sip:{caller}@127.0.0.1>;tag={tag}\r\nCall-ID: hop-{tag}\r\n"
            "Max-Forwards: 70\r\n"
        )
        uri = f"sip:{CALLED}@{node.host}:{node.sip_port}"
        to = f"<sip:{CALLED}@{node.host}>"
        started = time.monotonic()
        transport.sendto(
            (
                f"INVITE {uri} SIP/2.0\r\n{via}{common}To: {to}\r\nCSeq: 1 INVITE\r\n"
                f"Contact: <sip:{caller}@127.0.0.1:{me}>\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            (node.host, node.sip_port),
        )
        seen: list[int] = []
        async with asyncio.timeout(wait_s):
            while (status := status_of(reply := await received.get())) < 200:
                seen.append(status)
                if status == 180:
                    break
        took = time.monotonic() - started
        if status == 180:  # ringing at the node that now holds the room: hang up
            transport.sendto(
                (
                    f"CANCEL {uri} SIP/2.0\r\n{via}{common}To: {to}\r\nCSeq: 1 CANCEL\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode(),
                (node.host, node.sip_port),
            )
            async with asyncio.timeout(10):
                while status_of(final := await received.get()) != 487:
                    pass
        else:
            final = reply
        transport.sendto(
            (
                f"ACK {uri} SIP/2.0\r\n{via}{common}To: {header_of(final, 'To')}\r\n"
                "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            (node.host, node.sip_port),
        )
        return reply, took, seen


async def test_an_invite_for_an_owner_that_is_gone_gets_503_at_once(two: Cluster) -> None:
    a, b = two.nodes
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)  # A stops answering; its heartbeat lives up to 5 s
    try:
        reply, took, _ = await final_answer(b, "+15550124", wait_s=TIMER_B_S)
        assert status_of(reply) == 503, reply
        assert header_of(reply, "Retry-After") == "2"
        assert took < 12.0, took  # the heartbeat's 5 s and a look a second: not Timer B's 32 s
        metrics = b.metrics()
        assert metrics.get('sipbridge_cluster_rooms_total{event="invite_owner_gone"}') == 1
        # the caller tries again: B takes the room over (A's heartbeat is gone) and serves it
        reply, _, _ = await final_answer(b, "+15550124", wait_s=10)
        assert status_of(reply) == 180, reply
        assert await owner(two, ROOM) == "n1"
    finally:
        a.kill()  # (frozen: as good as dead to the cluster, which has moved on without it)


class SipStream:
    """A caller's SIP over one TLS connection, by hand: messages framed by Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> SipStream:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # (a throwaway certificate)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context), 10
        )
        return cls(reader, writer)

    @property
    def local(self) -> tuple[str, int]:
        return self.writer.get_extra_info("sockname")[:2]  # type: ignore[no-any-return]

    async def send(self, text: str) -> None:
        self.writer.write(text.encode())
        await self.writer.drain()

    async def receive(self, timeout: float = 15.0) -> bytes:
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = int(header_of(head, "Content-Length") or 0)
            return head + (await self.reader.readexactly(length) if length else b"")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


@pytest.fixture
async def two_tls(tmp_path: Path, redis: RedisServer) -> AsyncIterator[Cluster]:
    """A and B as `two`, each with a TLS listener (a throwaway certificate)."""
    from tests.interop.test_sip_tls import make_certificate  # noqa: PLC0415

    cert, key = await asyncio.to_thread(make_certificate, tmp_path)
    nodes = Cluster(tmp_path, redis, 2)
    for node in nodes.nodes:
        node.tls_port = sipp_port()  # type: ignore[attr-defined]
        node.extra += ["--sip-tls", f"{node.host}:{node.tls_port}"]  # type: ignore[attr-defined]
        node.extra += ["--tls-cert", str(cert), "--tls-key", str(key)]
    try:
        await asyncio.to_thread(nodes.start)
        await rule_into_room_on(nodes)
        yield nodes
    finally:
        codes = await asyncio.to_thread(nodes.stop)
    assert all(code in (None, 0) for code in codes.values()), codes


@pytest.mark.skipif(not shutil.which("openssl"), reason="the openssl CLI makes the cert")
async def test_a_tls_caller_proxied_over_tcp_is_given_the_owners_tls_contact(
    two_tls: Cluster,
) -> None:
    """A TLS caller's INVITE to B goes to A over TCP, and A's 200 names A's TLS listener as
    its Contact (not the hop's TCP): the caller's ACK and BYE reach A over TLS."""
    a, b = two_tls.nodes
    number = "+15550126"
    caller = await SipStream.open(b.host, b.tls_port)  # type: ignore[attr-defined]
    try:
        host, port = caller.local
        tag = secrets.token_hex(4)
        sdp = (
            "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {sipp_port()} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        )
        common = (
            f"From: <sip:{number}@{host}>;tag={tag}\r\nCall-ID: tls-{tag}\r\nMax-Forwards: 70\r\n"
        )
        uri = f"sip:{CALLED}@{b.host}:{b.tls_port};transport=tls"  # type: ignore[attr-defined]
        await caller.send(
            f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/TLS {host}:{port};branch=z9hG4bK{tag}1\r\n"
            f"{common}To: <sip:{CALLED}@{b.host}>\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:{number}@{host}:{port};transport=tls>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
        )
        async with contextlib.AsyncExitStack() as agents:

            async def ringing() -> Held | None:
                return (await sip_rooms(two_tls.nodes)).get(f"sip_{number}")

            held = await eventually(ringing, "the TLS caller ringing")
            assert held.node is a
            await answer(held, agents)
            while status_of(ok := await caller.receive()) < 200:
                pass
            assert status_of(ok) == 200, ok
            contact = header_of(ok, "Contact") or ""
            assert contact == f"<sip:{a.host}:{a.tls_port};transport=tls>"  # type: ignore[attr-defined]
            target = contact.strip("<>")
            to = header_of(ok, "To")
            direct = await SipStream.open(a.host, a.tls_port)  # type: ignore[attr-defined]
            try:
                here = direct.local
                for seq, method in ((1, "ACK"), (2, "BYE")):
                    await direct.send(
                        f"{method} {target} SIP/2.0\r\n"
                        f"Via: SIP/2.0/TLS {here[0]}:{here[1]};branch=z9hG4bK{tag}{seq}x\r\n"
                        f"{common}To: {to}\r\nCSeq: {seq} {method}\r\nContent-Length: 0\r\n\r\n"
                    )
                bye_answer = await direct.receive()
                assert status_of(bye_answer) == 200, bye_answer
                assert header_of(bye_answer, "CSeq") == "2 BYE"
            finally:
                await direct.close()
    finally:
        await caller.close()
