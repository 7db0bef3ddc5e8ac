"""Rooms owned by one node and reached from any (issue 13, docs/cluster.md s3-s4): two
`sipbridge serve` nodes on 127.0.0.2 and 127.0.0.3 (loopback aliases, no setup on Linux) and a
third address on a veth pair for the SDK, sharing one real redis-server.

- The Twirp RoomService on either node reaches the room's owner (the reply as the owner gives
  it), the owner named by `room:{name}` in Redis; a room ends and its key goes.
- An official `livekit` SDK client whose WebSocket lands on node B joins a room node A owns and
  hears the phone (baresip) that called node A: signalling relayed by B, media straight to A.
- Two sipp calls, one to each node, with a direct rule into one room: node B proxies its INVITE
  to the owner A, both callers are participants of that one room on A, listed through either;
  two real phones (baresip) the same way hear each other.
- CreateSIPParticipant on a node that does not own the room is placed on its owner: the owner
  dials, the callee joins the room there.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import signal
import statistics
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from livekit import api
from livekit.protocol import models
from livekit.protocol import room as room_proto
from livekit.protocol import sip as sip_proto

from sipbridge.telephony.placement import sign_hop
from tests import baresip, netns
from tests.agent_process import agent_worker
from tests.audio import read_wav, windows_heard
from tests.cluster import node_list
from tests.harness import all_served, direct_rule, eventually, sipp, sipp_port
from tests.helpers import API_KEY, API_SECRET, ServerProcess, token, twirp
from tests.interop.test_inbound_cases import header_of, status_of
from tests.redis_server import RedisServer, redis_server
from tests.sdk_run import sdk_command
from tests.udp_peer import udp_peer

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
]
RTC_PORTS_A, RTC_PORTS_B = "16000-16499", "16500-16999"


class Hooks:
    """A webhook receiver for every node (`?node=` in each node's URL says who sent what): a
    loopback HTTP server in a thread, keeping (node, event, room name) of each POST."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                node = self.path.partition("node=")[2]
                hooks.events.append(
                    (node, body.get("event", ""), body.get("room", {}).get("name", ""))
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def of_room(self, name: str) -> list[tuple[str, str]]:
        return [(node, event) for node, event, room in list(self.events) if room == name]


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    made = Hooks()
    made.thread.start()
    yield made
    made.http.shutdown()
    made.http.server_close()
    made.thread.join()


class Node(ServerProcess):
    """A `sipbridge serve` node of the cluster: SIP and RTP on `ip`, the API on `http_host`."""

    def __init__(
        self, tmp: Path, redis: RedisServer, prefix: str, node_id: str, ip: str, **kw: str
    ) -> None:
        self.node_id, self.ip = node_id, ip
        self.sip_port = sipp_port()
        super().__init__(
            tmp,
            *("--redis", redis.url, "--redis-prefix", prefix, "--node-id", node_id),
            *("--sip", f"{ip}:{self.sip_port}", "--rtp-ports", kw["rtp"]),
            *("--rtc-ip", kw["rtc_ip"], "--rtc-ports", kw["rtc_ports"]),
            *(("--webhook", f"{kw['hooks']}?node={node_id}") if "hooks" in kw else ()),
            http_host=kw.get("http_host", ip),
        )


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def namespace() -> Iterator[netns.VethNamespace]:
    with netns.veth_namespace() as ns:
        yield ns


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"rooms{secrets.token_hex(4)}:"


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory,
    redis: RedisServer,
    prefix: str,
    namespace: netns.VethNamespace,
    hooks: Hooks,
) -> Iterator[tuple[Node, Node]]:
    """A on 127.0.0.2; B's SIP on 127.0.0.3, its API on the veth address (where the SDK in the
    namespace reaches it). Both gather ICE candidates on the veth address, in ranges of their
    own, so the SDK's media goes to whichever node it talks to over that address."""
    a = Node(
        tmp_path_factory.mktemp("node-a"), redis, prefix, "node-a", "127.0.0.2",
        rtp="14000-14499", rtc_ip=namespace.host_ip, rtc_ports=RTC_PORTS_A, hooks=hooks.url,
    )  # fmt: skip
    b = Node(
        tmp_path_factory.mktemp("node-b"), redis, prefix, "node-b", "127.0.0.3",
        rtp="14500-14999", rtc_ip=namespace.host_ip, rtc_ports=RTC_PORTS_B, hooks=hooks.url,
        http_host=namespace.host_ip,
    )  # fmt: skip
    with all_served(a, b):
        yield a, b


@asynccontextmanager
async def client(node: ServerProcess) -> AsyncIterator[api.LiveKitAPI]:
    async with api.LiveKitAPI(url=node.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        yield lk


@asynccontextmanager
async def raw_redis(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis.url)
    try:
        yield r
    finally:
        await r.aclose()


async def owner(redis: RedisServer, prefix: str, room: str) -> str | None:
    async with raw_redis(redis) as r:
        value = await r.get(f"{prefix}room:{room}")
    return value.decode() if value is not None else None


async def test_the_room_api_on_any_node_reaches_the_owner(
    nodes: tuple[Node, Node], redis: RedisServer, prefix: str, hooks: Hooks
) -> None:
    a, b = nodes
    async with client(a) as on_a, client(b) as on_b:
        made = await on_a.room.create_room(
            room_proto.CreateRoomRequest(name="hall", metadata="first")
        )
        assert await owner(redis, prefix, "hall") == "node-a"
        # B serves nothing of "hall" itself: every answer is A's.
        again = await on_b.room.create_room(room_proto.CreateRoomRequest(name="hall"))
        assert again.sid == made.sid and again.metadata == "first"
        updated = await on_b.room.update_room_metadata(
            room_proto.UpdateRoomMetadataRequest(room="hall", metadata="second")
        )
        assert updated.sid == made.sid and updated.metadata == "second"
        listed = await on_a.room.list_rooms(room_proto.ListRoomsRequest(names=["hall"]))
        assert [r.metadata for r in listed.rooms] == ["second"]
        # an error comes back as the owner gave it
        with pytest.raises(api.TwirpError) as err:
            await on_b.room.get_participant(
                room_proto.RoomParticipantIdentity(room="hall", identity="nobody")
            )
        assert err.value.code == "not_found"
        # A room made through B is B's. ListRooms through either node lists both rooms.
        await on_b.room.create_room(room_proto.CreateRoomRequest(name="porch"))
        assert await owner(redis, prefix, "porch") == "node-b"
        for lk in (on_a, on_b):
            listed = await lk.room.list_rooms(room_proto.ListRoomsRequest())
            assert sorted(r.name for r in listed.rooms) == ["hall", "porch"]
        assert await local_rooms(a) == {"hall"} and await local_rooms(b) == {"porch"}
        # a client's own hop header is no hop: its request is routed as any other
        forged = await twirp(
            b.url, "livekit.RoomService", "CreateRoom",
            room_proto.CreateRoomRequest(name="hall").SerializeToString(),
            auth="Bearer " + token(api.VideoGrants(room_create=True)),
            headers={"X-Sipbridge-Hop": "node-a;sig=00"},
        )  # fmt: skip
        assert forged[0] == 200 and models.Room.FromString(forged[2]).sid == made.sid
        assert await local_rooms(b) == {"porch"}
        # Deleted through the other node: gone on its owner, and its key with it.
        await on_b.room.delete_room(room_proto.DeleteRoomRequest(room="hall"))
        await on_a.room.delete_room(room_proto.DeleteRoomRequest(room="porch"))
        for name in ("hall", "porch"):
            assert await eventually(
                lambda name=name: _none(owner(redis, prefix, name)), f"{name} freed"
            )  # type: ignore[misc]
        assert (await on_a.room.list_rooms(room_proto.ListRoomsRequest())).rooms == []
        assert (await on_b.room.list_rooms(room_proto.ListRoomsRequest())).rooms == []
    # Webhooks once per event, from the owner only, whichever node the API call went to.
    for name, node in (("hall", "node-a"), ("porch", "node-b")):
        expected = [(node, "room_started"), (node, "room_finished")]
        await eventually(lambda name=name: len(hooks.of_room(name)) >= 2, f"{name}'s webhooks")  # type: ignore[misc]
        assert hooks.of_room(name) == expected


async def _none(value: object) -> bool:
    return await value is None  # type: ignore[misc]


def cluster(node: Node) -> dict[str, float]:
    """`sipbridge_cluster_rooms_total` by event, from /metrics."""
    counters = node.metrics()
    prefix = "sipbridge_cluster_rooms_total{"
    return {k.split('"')[1]: v for k, v in counters.items() if k.startswith(prefix)}


def rtc_audio(node: Node) -> dict[str, float]:
    counters = node.metrics()
    return {k.split('"')[1]: v for k, v in counters.items() if k.startswith("sipbridge_rtc_audio{")}


SDK_LEAD_S = 3.5  # the phone's silence before it talks to an SDK client


@pytest.mark.skipif(not shutil.which("baresip"), reason="baresip comes with `make test`")
@pytest.mark.serial  # real time: alone after the parallel tests
async def test_an_sdk_client_on_node_b_hears_a_phone_on_node_a(
    nodes: tuple[Node, Node], namespace: netns.VethNamespace, tmp_path: Path
) -> None:
    """The phone calls A (a direct rule: A owns "agentroom"); the SDK client's WebSocket goes to
    B, which relays it to A; its media goes to A's ICE candidates: A forwards the phone's audio
    to it, B none, and it hears the phone from the first second."""
    a, b = nodes
    rule = await shared_rule(a, b, "agentroom")
    heard = tmp_path / "heard.wav"
    sdk_log = tmp_path / "sdk.log"
    try:
        # The phone talks SDK_LEAD_S into its stream, once the SDK's jitter buffer has settled:
        # NetEq shortens time in its first 1-3 s (0.73 of the windows heard once at 1.5 s)
        async with baresip.phone(
            tmp_path / "phone", codecs="PCMU", top_hz=3400.0, lead_s=SDK_LEAD_S
        ) as phone:
            await phone.dial(f"sip:agent@{a.ip}:{a.sip_port}")
            await phone.wait_event("CALL_RINGING", fail_on=("CALL_CLOSED",))
            cmd = sdk_command(
                namespace,
                b.port,
                "agent",
                "agentroom",
                "--record",
                str(heard),
                "--seconds",
                str(SDK_LEAD_S + 6.5),
            )
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            # answered once the client (through B) subscribed to the phone's track on A
            await phone.wait_event("CALL_ESTABLISHED", timeout=15, fail_on=("CALL_CLOSED",))
            out, err = await asyncio.wait_for(proc.communicate(), 40)
            sdk_log.write_bytes(err)
            events = [json.loads(line) for line in out.decode().splitlines() if line[:1] == "{"]
            assert proc.returncode == 0, (events, err.decode()[-2000:])
            on_a, on_b = (
                await asyncio.to_thread(rtc_audio, a),
                await asyncio.to_thread(rtc_audio, b),
            )
            await phone.hangup()
            await phone.wait_event("CALL_CLOSED")
    finally:
        async with client(a) as lk:
            await lk.sip.delete_dispatch_rule(
                api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule)
            )
    connected = next(e for e in events if e["event"] == "connected")
    (caller,) = connected["participants"]
    assert caller["kind"] == "PARTICIPANT_KIND_SIP"
    assert caller["attributes"]["sip.phoneNumber"] == phone.user
    # the media path: A sent the phone's audio to the client, B sent nothing
    assert on_a.get("forwarded", 0) > 2 / 0.02, on_a
    assert on_b.get("forwarded", 0) == 0, on_b
    assert (await asyncio.to_thread(cluster, b)).get("join_relayed") == 1
    recording, rate = read_wav(heard)
    assert phone.reference is not None
    assert windows_heard(phone.reference, recording, phone.rate, recorded_rate=rate) >= 0.8


async def participants(node: Node, room: str) -> set[str]:
    async with client(node) as lk:
        listed = await lk.room.list_participants(room_proto.ListParticipantsRequest(room=room))
    return {p.identity for p in listed.participants}


async def local_rooms(node: Node) -> set[str]:
    """The rooms `node` itself holds: ListRooms handed to it by another node (`X-Sipbridge-Hop`,
    signed with the cluster's secret) is answered with its own rooms only."""
    auth = "Bearer " + token(api.VideoGrants(room_list=True))
    request = room_proto.ListRoomsRequest().SerializeToString()
    hop = sign_hop(API_SECRET, "test", "/twirp/livekit.RoomService/ListRooms")
    status, _, body = await twirp(
        node.url, "livekit.RoomService", "ListRooms", request, auth=auth,
        headers={"X-Sipbridge-Hop": hop},
    )  # fmt: skip
    assert status == 200, body
    return {r.name for r in room_proto.ListRoomsResponse.FromString(body).rooms}


async def test_calls_to_two_nodes_meet_in_the_room_of_one(
    nodes: tuple[Node, Node], redis: RedisServer, prefix: str
) -> None:
    """A direct rule puts every call into "bridge". The first call comes to A, which makes and
    owns the room; the second comes to B, which proxies its INVITE to A: the caller's ACK and
    BYE then go to A directly (the 200's Contact), and both callers are participants of the
    one room on A, listed through either node; B holds no room and no call."""
    a, b = nodes
    rule = await shared_rule(a, b, "bridge")
    try:
        first = asyncio.create_task(
            sipp("uac_follow_contact.xml", a.sip_port, host=a.ip, hold_ms=6000,
                 keys={"caller": "+15550001", "called": "+15550100"}, limit=20)
        )  # fmt: skip
        await eventually(lambda: _has(participants(b, "bridge"), "sip_+15550001"), "caller 1")
        assert await owner(redis, prefix, "bridge") == "node-a"
        second = asyncio.create_task(
            sipp("uac_follow_contact.xml", b.sip_port, host=b.ip, hold_ms=3000,
                 keys={"caller": "+15550002", "called": "+15550100"}, limit=20)
        )  # fmt: skip
        both = {"sip_+15550001", "sip_+15550002"}
        for node in (a, b):
            await eventually(lambda node=node: _is(participants(node, "bridge"), both), "both")  # type: ignore[misc]
        assert "bridge" in await local_rooms(a)
        assert "bridge" not in await local_rooms(b)
        done_second, done_first = await second, await first
        assert done_second.code == 0, done_second.out[-3000:]
        assert done_first.code == 0, done_first.out[-3000:]
        # B proxied one INVITE, and A took it as vouched for by B; A proxied nothing
        on_a, on_b = await asyncio.to_thread(cluster, a), await asyncio.to_thread(cluster, b)
        assert on_b.get("invite_proxied") == 1 and on_a.get("invite_vouched") == 1, (on_a, on_b)
        assert "invite_proxied" not in on_a and "invite_vouched" not in on_b
        async with client(b) as lk:  # (the room would close 20 s after its last caller left)
            await lk.room.delete_room(room_proto.DeleteRoomRequest(room="bridge"))
        await eventually(lambda: _none(owner(redis, prefix, "bridge")), "the room's key freed")
    finally:
        async with client(a) as lk:
            await lk.sip.delete_dispatch_rule(
                sip_proto.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule)
            )


async def shared_rule(made_on: ServerProcess, other: ServerProcess, room_name: str) -> str:
    """A direct rule made through one node, returned once the other lists it too: a change
    reaches the other nodes' caches through Redis within milliseconds, and a call that comes to
    a node before it does is refused (404) like a call no rule matches."""
    rule = await direct_rule(made_on, room_name)

    async def listed() -> bool:
        async with client(other) as lk:
            rules = await lk.sip.list_dispatch_rule(sip_proto.ListSIPDispatchRuleRequest())
        return any(r.sip_dispatch_rule_id == rule for r in rules.items)

    await eventually(listed, f"the rule for {room_name} on the other node")
    return rule


async def _has(value: object, item: object) -> bool:
    return item in await value  # type: ignore[misc,operator]


async def _is(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]


async def test_create_sip_participant_on_b_is_placed_by_the_rooms_owner(
    nodes: tuple[Node, Node], redis: RedisServer, prefix: str
) -> None:
    from tests.interop.test_outbound import carrier, make_trunk  # noqa: PLC0415

    a, b = nodes
    before_a, before_b = await asyncio.to_thread(cluster, a), await asyncio.to_thread(cluster, b)
    async with client(a) as on_a, client(b) as on_b, carrier("uas_answer.xml") as (port, uas):
        await on_a.room.create_room(room_proto.CreateRoomRequest(name="dial"))
        trunk = await make_trunk(on_b, port)
        try:
            created = await on_b.sip.create_sip_participant(
                sip_proto.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk,
                    sip_call_to="+15550199",
                    room_name="dial",
                    wait_until_answered=True,
                )
            )
            assert created.room_name == "dial" and created.sip_call_id.startswith("SCL_")
            assert await participants(b, "dial") == {created.participant_identity}
            assert "dial" in await local_rooms(a) and "dial" not in await local_rooms(b)
            on_a_now = await asyncio.to_thread(cluster, a)
            on_b_now = await asyncio.to_thread(cluster, b)
            assert on_b_now["forwarded"] >= before_b.get("forwarded", 0) + 1
            assert on_a_now.get("forwarded", 0) == before_a.get("forwarded", 0)
            # A dialled it, B did not
            dialled = 'sipbridge_outbound_total{outcome="dialled"}'
            assert (await asyncio.to_thread(a.metrics)).get(dialled) == 1
            assert (await asyncio.to_thread(b.metrics)).get(dialled, 0) == 0
            await on_b.room.remove_participant(
                room_proto.RoomParticipantIdentity(
                    room="dial", identity=created.participant_identity
                )
            )
            code, out = await uas  # our BYE (from A) ended its call
            assert code == 0, out[-3000:]
        finally:
            await on_b.sip.delete_trunk(sip_proto.DeleteSIPTrunkRequest(sip_trunk_id=trunk))
            await on_b.room.delete_room(room_proto.DeleteRoomRequest(room="dial"))


async def test_a_dead_owners_room_is_taken_over(
    nodes: tuple[Node, Node],
    redis: RedisServer,
    prefix: str,
    namespace: netns.VethNamespace,
    tmp_path: Path,
) -> None:
    """A third node on 127.0.0.4 makes a room and is SIGKILLed. Until its heartbeat expires the
    room is still its own: a request for it through B fails `unavailable` (never a second room
    beside the first); within 5 s of the kill B takes the room over (the compare-and-set) and
    serves it, once."""
    _, b = nodes
    c = Node(
        tmp_path, redis, prefix, "node-c", "127.0.0.4",
        rtp="15000-15099", rtc_ip=namespace.host_ip, rtc_ports="17000-17099",
    )  # fmt: skip
    c.start()
    try:
        async with client(c) as on_c:
            await on_c.room.create_room(room_proto.CreateRoomRequest(name="orphan"))
        assert await owner(redis, prefix, "orphan") == "node-c"
        assert c.proc is not None
        c.proc.send_signal(signal.SIGKILL)
        c.proc.wait(10)
        killed = time.monotonic()
    finally:
        if c.proc is not None and c.proc.poll() is None:
            c.proc.kill()
        c.proc = None
    async with client(b) as on_b:
        with pytest.raises(api.TwirpError) as err:
            await on_b.room.create_room(room_proto.CreateRoomRequest(name="orphan"))
        assert err.value.code == "unavailable"

        async def taken_over() -> bool:
            try:
                await on_b.room.create_room(room_proto.CreateRoomRequest(name="orphan"))
            except api.TwirpError:
                return False
            return True

        await eventually(taken_over, "B taking the room over", timeout=8, interval=0.1)
        took = time.monotonic() - killed
        assert took <= 6.0, took  # the heartbeat's 5 s TTL, and this test's polling
        assert await owner(redis, prefix, "orphan") == "node-b"
        assert await local_rooms(b) == {"orphan"}
        assert (await asyncio.to_thread(cluster, b)).get("route_took_over") == 1
        await on_b.room.delete_room(room_proto.DeleteRoomRequest(room="orphan"))
    print(f"\nroom of a SIGKILLed owner taken over {took:.2f} s after the kill")


async def timed_call(host: str, port: int) -> float:
    """One call by hand over UDP: INVITE to host:port, then ACK and BYE to the 200's Contact.
    Milliseconds from sending the INVITE to receiving the 200."""
    async with udp_peer() as (transport, received, me):
        tag = secrets.token_hex(4)
        common = (
            f"From: <sip:+15550010@127.0.0.1>;tag={tag}\r\nCall-ID: timed-{tag}\r\n"
            f"Contact: <sip:timer@127.0.0.1:{me}>\r\nMax-Forwards: 70\r\n"
        )
        sdp = (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        )
        invite = (
            f"INVITE sip:+15550100@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK{tag}i;rport\r\n{common}"
            f"To: <sip:+15550100@{host}>\r\nCSeq: 1 INVITE\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
        )
        started = time.perf_counter()
        transport.sendto(invite.encode(), (host, port))
        while True:
            reply = await asyncio.wait_for(received.get(), 5)
            status = status_of(reply)
            assert status < 300, reply
            if status == 200:
                took = (time.perf_counter() - started) * 1e3
                break
        to, contact = header_of(reply, "To"), header_of(reply, "Contact")
        assert to is not None and contact is not None
        target = contact.split("sip:", 1)[1].split(">")[0].split(";")[0]
        there, _, there_port = target.rpartition("@")[2].partition(":")
        for n, method in ((1, "ACK"), (2, "BYE")):
            transport.sendto(
                (
                    f"{method} sip:{target} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK{tag}{method};rport\r\n"
                    f"{common}To: {to}\r\nCSeq: {n} {method}\r\nContent-Length: 0\r\n\r\n"
                ).encode(),
                (there, int(there_port)),
            )
        while True:  # the BYE's 200 (the INVITE's may come again first)
            reply = await asyncio.wait_for(received.get(), 5)
            if status_of(reply) == 200 and b" BYE\r\n" in reply:
                break
        return took


@pytest.mark.serial  # real time: alone after the parallel tests
async def test_the_extra_latency_of_a_room_on_another_node(
    nodes: tuple[Node, Node], redis: RedisServer, prefix: str
) -> None:
    """INVITE -> 200 for a room on A, called at A and called at B (proxied), twenty calls one
    after the other each (answered at once: a caller is already in the room); and an API call
    about that room through A and through B. Printed (the hop costs a few ms)."""
    a, b = nodes
    rule = await shared_rule(a, b, "timed")
    try:
        anchor = asyncio.create_task(
            sipp("uac_follow_contact.xml", a.sip_port, host=a.ip, hold_ms=6000,
                 keys={"caller": "+15550009", "called": "+15550100"}, limit=25)
        )  # fmt: skip
        await eventually(lambda: _has(participants(a, "timed"), "sip_+15550009"), "the anchor")
        invite_ms: dict[str, list[float]] = {}
        for node in (a, b) * 20:  # interleaved: the machine's load changes
            took = await timed_call(node.ip, node.sip_port)
            invite_ms.setdefault(node.node_id, []).append(took)
        api_ms: dict[str, list[float]] = {}
        async with client(a) as on_a, client(b) as on_b:
            for node, lk in ((a, on_a), (b, on_b)) * 30:
                started = time.perf_counter()
                await lk.room.list_participants(room_proto.ListParticipantsRequest(room="timed"))
                api_ms.setdefault(node.node_id, []).append((time.perf_counter() - started) * 1e3)
        done = await anchor
        assert done.code == 0, done.out[-3000:]
    finally:
        async with client(a) as lk:
            await lk.sip.delete_dispatch_rule(
                sip_proto.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule)
            )
    invite = {node: statistics.median(values) for node, values in invite_ms.items()}
    listing = {node: statistics.median(values) for node, values in api_ms.items()}
    print(
        f"\nINVITE->200 (median of 20): at the owner {invite['node-a']:.2f} ms, proxied by "
        f"another node {invite['node-b']:.2f} ms; ListParticipants (median of 30): owner "
        f"{listing['node-a']:.2f} ms, through another node {listing['node-b']:.2f} ms"
    )
    # (a guard against a hop that waits for something - a timer, a retransmission - not a
    # benchmark: on this shared machine a busy run triples both)
    assert invite["node-b"] < invite["node-a"] + 50, invite
    assert listing["node-b"] < listing["node-a"] + 50, listing


@pytest.mark.skipif(not shutil.which("baresip"), reason="baresip comes with `make test`")
@pytest.mark.serial  # real time: alone after the parallel tests
async def test_an_agent_worker_on_node_b_answers_a_phone_on_node_a(
    nodes: tuple[Node, Node], namespace: netns.VethNamespace, tmp_path: Path
) -> None:
    """A `livekit-agents` worker (the seed page's agent, tests/agent_worker.py) registers on B;
    a phone calls A, whose new room has no worker of its own: A offers the job to B, B's worker
    takes it, its agent joins A's room through B's relay, subscribes - which answers the call -
    and echoes the caller, who hears its own voice come back."""
    from tests.interop.test_agent import WORKER, events_of  # noqa: PLC0415

    a, b = nodes
    # Rooms earlier tests left (closing 20 s after their last caller) wait for a worker too:
    # gone first, so that B's worker is offered this test's room only.
    async with client(a) as lk:
        for left in (await lk.room.list_rooms(room_proto.ListRoomsRequest())).rooms:
            await lk.room.delete_room(room_proto.DeleteRoomRequest(room=left.name))
    rule = await shared_rule(a, b, "support")
    events_file = tmp_path / "agent_events.jsonl"
    try:
        async with agent_worker(
            WORKER,
            namespace,
            b,
            tmp_path / "worker.log",
            registered="the worker to register on B",
            EXAMPLE_EVENTS_FILE=str(events_file),
        ):
            async with baresip.phone(
                tmp_path / "phone", codecs="PCMU", top_hz=3400.0, lead_s=1.5
            ) as phone:
                await phone.dial(f"sip:support@{a.ip}:{a.sip_port}")
                await phone.wait_event("CALL_ESTABLISHED", timeout=25, fail_on=("CALL_CLOSED",))
                # the conversation: 1.5 s of silence, 3 s, its echo 0.5 s on
                await asyncio.sleep(7.0)
                await phone.hang_up_and_stop()
                heard, rate = read_wav(phone.recorded())
            on_a = await asyncio.to_thread(cluster, a)
            on_b = await asyncio.to_thread(cluster, b)
    finally:
        async with client(a) as lk:
            await lk.sip.delete_dispatch_rule(
                sip_proto.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule)
            )
    assert on_a.get("agent_taken_elsewhere") == 1 and on_b.get("agent_taken_here") == 1, (
        on_a,
        on_b,
    )
    (caller,) = [e for e in events_of(events_file) if e["event"] == "caller"]
    assert caller["phone_number"] == phone.user
    assert phone.reference is not None
    # The caller hears itself echoed by the agent (most of the signal: on this shared machine
    # a loaded run loses a few quarter seconds; the echo's quality is test_agent.py's matter)
    echo = windows_heard(phone.reference, heard, phone.rate, recorded_rate=rate)
    assert echo >= 0.5, echo


async def node_calls(node: Node) -> dict[str, int]:
    """Calls per node, as the node list (heartbeats) says."""
    return {n["id"]: n["calls"] for n in await node_list(node)}


@asynccontextmanager
async def ringing_call(host: str, port: int) -> AsyncIterator[None]:
    """A hand-made call to +15550100 that rings while inside (nobody answers a caller alone
    in its room), then is cancelled (487, ACKed)."""
    async with udp_peer() as (transport, received, me):
        tag = secrets.token_hex(4)
        via = f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK{tag};rport\r\n"
        common = (
            f"From: <sip:+15550012@127.0.0.1>;tag={tag}\r\nCall-ID: ringing-{tag}\r\n"
            "Max-Forwards: 70\r\n"
        )
        uri = f"sip:+15550100@{host}:{port}"
        to = f"<sip:+15550100@{host}>"
        transport.sendto(
            (
                f"INVITE {uri} SIP/2.0\r\n{via}{common}To: {to}\r\nCSeq: 1 INVITE\r\n"
                f"Contact: <sip:x@127.0.0.1:{me}>\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            (host, port),
        )
        while status_of(await asyncio.wait_for(received.get(), 5)) != 180:
            pass
        yield
        transport.sendto(
            (
                f"CANCEL {uri} SIP/2.0\r\n{via}{common}To: {to}\r\nCSeq: 1 CANCEL\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            (host, port),
        )
        while True:
            reply = await asyncio.wait_for(received.get(), 5)
            if status_of(reply) == 487:
                break
        final_to = header_of(reply, "To")
        transport.sendto(
            (
                f"ACK {uri} SIP/2.0\r\n{via}{common}To: {final_to}\r\nCSeq: 1 ACK\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            (host, port),
        )


async def test_a_new_rooms_call_is_placed_on_the_least_loaded_node(
    nodes: tuple[Node, Node], redis: RedisServer, prefix: str
) -> None:
    """B has a call (ringing), A none: CreateSIPParticipant through B for a room nobody has
    yet is placed on A (LiveKit's affinity, 1 - calls/max_calls), which dials and owns it."""
    from tests.interop.test_outbound import carrier, make_trunk  # noqa: PLC0415

    a, b = nodes
    rule = await shared_rule(a, b, "busy")
    dialled = 'sipbridge_outbound_total{outcome="dialled"}'
    try:
        async with ringing_call(b.ip, b.sip_port):
            await eventually(
                lambda: _is(node_calls(b), {"node-a": 0, "node-b": 1}), "B's call listed"
            )
            before = (await asyncio.to_thread(a.metrics)).get(dialled, 0)
            async with client(b) as on_b, carrier("uas_answer.xml") as (port, uas):
                trunk = await make_trunk(on_b, port)
                try:
                    created = await on_b.sip.create_sip_participant(
                        sip_proto.CreateSIPParticipantRequest(
                            sip_trunk_id=trunk,
                            sip_call_to="+15550198",
                            room_name="placed",
                            wait_until_answered=True,
                        )
                    )
                    assert created.room_name == "placed"
                    assert await owner(redis, prefix, "placed") == "node-a"
                    assert (await asyncio.to_thread(a.metrics)).get(dialled, 0) == before + 1
                    await on_b.room.delete_room(room_proto.DeleteRoomRequest(room="placed"))
                    code, out = await uas  # our BYE (from A) ended its call
                    assert code == 0, out[-3000:]
                finally:
                    await on_b.sip.delete_trunk(sip_proto.DeleteSIPTrunkRequest(sip_trunk_id=trunk))
    finally:
        async with client(a) as lk:
            await lk.sip.delete_dispatch_rule(
                sip_proto.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule)
            )


async def final_status(host: str, port: int, extra: str = "", body: str = "") -> int:
    """The final status a hand-made INVITE (to +15550100) gets, with `extra` header lines."""
    async with udp_peer() as (transport, received, me):
        tag = secrets.token_hex(4)
        invite = (
            f"INVITE sip:+15550100@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK{tag};rport\r\n"
            f"From: <sip:+15550011@127.0.0.1>;tag={tag}\r\nTo: <sip:+15550100@{host}>\r\n"
            f"Call-ID: forged-{tag}\r\nCSeq: 1 INVITE\r\nContact: <sip:x@127.0.0.1:{me}>\r\n"
            f"Max-Forwards: 70\r\n{extra}Content-Length: {len(body)}\r\n\r\n{body}"
        )
        transport.sendto(invite.encode(), (host, port))
        while (status := status_of(await asyncio.wait_for(received.get(), 5))) < 200:
            pass
        return status


async def test_what_one_node_tells_another_cannot_be_forged(nodes: tuple[Node, Node]) -> None:
    """An INVITE whose X-Sipbridge-Proxied header is not signed with our secret gets no trust:
    the trunk it names as authenticated challenges it as ever (407). The endpoints nodes offer
    agent jobs on refuse requests without the cluster's token, or with a bad body."""
    a, _ = nodes
    async with client(a) as lk:
        trunk = await lk.sip.create_inbound_trunk(
            sip_proto.CreateSIPInboundTrunkRequest(
                trunk=sip_proto.SIPInboundTrunkInfo(
                    name="guarded", numbers=["+15550100"], auth_username="u", auth_password="p"
                )
            )
        )
    trunk_id = trunk.sip_trunk_id
    try:
        await eventually(lambda: _is(final_status(a.ip, a.sip_port), 407), "the trunk on A")
        before = (await asyncio.to_thread(cluster, a)).get("invite_forged", 0)
        forged = (
            f"X-Sipbridge-Proxied: source=127.0.0.1;trunk={trunk_id};node=node-b;sig={'0' * 32}\r\n"
        )
        assert await final_status(a.ip, a.sip_port, forged) == 407
        assert (await asyncio.to_thread(cluster, a)).get("invite_forged", 0) == before + 1
    finally:
        async with client(a) as lk:
            await lk.sip.delete_trunk(sip_proto.DeleteSIPTrunkRequest(sip_trunk_id=trunk_id))

    jobs = f"{a.url}/sipbridge/v1/cluster/jobs"
    participant = "Bearer " + token(api.VideoGrants(room_join=True, room="x"), identity="p")
    admin = "Bearer " + token(api.VideoGrants(agent=True, room_admin=True))
    async with aiohttp.ClientSession() as http:
        for path, auth, body, status in (
            (jobs, None, b"", 401),
            (jobs, "Bearer not-a-token", b"", 401),
            (jobs, participant, b"", 403),
            (jobs, admin, b"\xff\xff\xff", 400),
            (jobs, admin, b"", 404),  # an empty job: no worker of its (empty) name here
            (f"{jobs}/end", None, b"AJ_x", 401),
            (f"{jobs}/lost", None, b"AJ_x", 401),
            (f"{jobs}/lost", participant, b"AJ_x", 403),
            (f"{jobs}/lost", admin, b"AJ_unknown", 200),  # no such job here: nothing happens
        ):
            headers = {"Authorization": auth} if auth else {}
            async with http.post(path, data=body, headers=headers) as reply:
                assert reply.status == status, (path, auth, body, reply.status)


async def test_a_call_refused_before_its_room_leaves_no_owner_behind(
    nodes: tuple[Node, Node], redis: RedisServer, prefix: str
) -> None:
    """An INVITE whose room B claims but whose offer has nothing B can use (488): no room was
    made, and the claim is let go - the room's key does not name B for ever."""
    _, b = nodes
    rule = await direct_rule(b, "nocodec")
    try:
        g729 = (
            "Content-Type: application/sdp\r\n",
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n",
        )
        assert await final_status(b.ip, b.sip_port, extra=g729[0], body=g729[1]) == 488
        await eventually(lambda: _none(owner(redis, prefix, "nocodec")), "the claim let go")
        assert "nocodec" not in await local_rooms(b)
    finally:
        async with client(b) as lk:
            await lk.sip.delete_dispatch_rule(
                sip_proto.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule)
            )


@pytest.mark.skipif(not shutil.which("baresip"), reason="baresip comes with `make test`")
@pytest.mark.serial  # real time: alone after the parallel tests
async def test_two_phones_on_two_nodes_hear_each_other(
    nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    """Real phones (baresip, which follows the 200's Contact as RFC 3261 says): one calls A,
    one calls B, a direct rule puts both into one room; B proxies its INVITE, and the media of
    both calls runs through A, where each phone hears the other."""
    from tests.interop.test_call_audio import CALL_S, heard  # noqa: PLC0415

    a, b = nodes
    rule = await shared_rule(a, b, "duet")
    before = (await asyncio.to_thread(cluster, b)).get("invite_proxied", 0)
    try:
        async with (
            baresip.phone(tmp_path / "p1", codecs="PCMU", top_hz=3400.0) as one,
            baresip.phone(tmp_path / "p2", codecs="PCMU", top_hz=3400.0) as two,
        ):
            await one.dial(f"sip:duet@{a.ip}:{a.sip_port}")
            await one.wait_event("CALL_RINGING", fail_on=("CALL_CLOSED",))
            await two.dial(f"sip:duet@{b.ip}:{b.sip_port}", established=True)
            await one.wait_event("CALL_ESTABLISHED", fail_on=("CALL_CLOSED",))
            assert len(await participants(b, "duet")) == 2
            await asyncio.sleep(CALL_S)  # the conversation itself
            await one.hangup()
            await two.hangup()  # its BYE to A directly: B knows nothing of the call
            await one.wait_event("CALL_CLOSED")
            await two.wait_event("CALL_CLOSED")
            await one.stop()
            await two.stop()
            one_heard_two, two_heard_one = heard(one, two), heard(two, one)
    finally:
        async with client(a) as lk:
            await lk.sip.delete_dispatch_rule(
                sip_proto.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule)
            )
    assert (await asyncio.to_thread(cluster, b)).get("invite_proxied", 0) == before + 1
    assert one_heard_two > 0.9, f"the phone on A heard the one on B at {one_heard_two:.3f}"
    assert two_heard_one > 0.9, f"the phone on B heard the one on A at {two_heard_one:.3f}"


async def test_without_redis_held_rooms_go_on_and_new_ones_wait(
    nodes: tuple[Node, Node], redis: RedisServer, prefix: str
) -> None:
    """Redis stops (the last test of the module: it comes back empty, as a Redis without
    persistence would). A room held by A is served by A as ever; a room B does not hold cannot
    be placed: the API answers `unavailable`, an INVITE 503 with Retry-After. Redis back, the
    nodes name their rooms in it again and new rooms are placed."""
    a, b = nodes
    await shared_rule(a, b, "steady")
    async with client(a) as on_a, client(b) as on_b:
        await on_a.room.create_room(room_proto.CreateRoomRequest(name="steady"))
        await eventually(lambda: _has(rules_on(b), "steady"), "the rule on B")
        redis.stop()
        try:
            listed = await on_a.room.list_participants(
                room_proto.ListParticipantsRequest(room="steady")
            )
            assert list(listed.participants) == []
            with pytest.raises(api.TwirpError) as err:
                await on_b.room.create_room(room_proto.CreateRoomRequest(name="fresh"))
            assert err.value.code == "unavailable"
            assert await final_status(b.ip, b.sip_port) == 503
        finally:
            redis.start()
        await eventually(
            lambda: _is(owner(redis, prefix, "steady"), "node-a"), "A naming its room again"
        )
        await eventually(lambda: beating(redis, prefix, {"node-a", "node-b"}), "both beating")

        async def placed() -> bool:
            try:
                await on_b.room.create_room(room_proto.CreateRoomRequest(name="fresh"))
            except api.TwirpError:
                return False
            return True

        await eventually(placed, "a new room placed again")
        assert await owner(redis, prefix, "fresh") == "node-b"
        for name in ("steady", "fresh"):
            await on_b.room.delete_room(room_proto.DeleteRoomRequest(room=name))


async def rules_on(node: Node) -> set[str]:
    """The room names of the direct rules `node` has."""
    async with client(node) as lk:
        listed = await lk.sip.list_dispatch_rule(sip_proto.ListSIPDispatchRuleRequest())
    return {r.rule.dispatch_rule_direct.room_name for r in listed.items}


async def beating(redis: RedisServer, prefix: str, node_ids: set[str]) -> bool:
    async with raw_redis(redis) as r:
        return all([await r.exists(f"{prefix}node:{node_id}") for node_id in node_ids])
