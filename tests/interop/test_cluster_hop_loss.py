"""A proxying node that dies costs no call the owner holds (issue 13, docs/cluster.md s4): two
`sipbridge serve` nodes on 127.0.0.2-3 and one real redis-server, every call ruled into a room
node A owns; sipp calls node B, which proxies its INVITE to A (no Record-Route).

The owner sends its own requests of the dialog straight to the caller, where B's signed header
says it is - not back through B: with B SIGKILLed after the call was answered, the room deleted
through A ends the call with A's BYE reaching the caller directly, answered by it, and A's call
log records a normal end (not a loss) - sipp following the 200's Contact, sipp sending its ACK
back to B and its answers per the Via, and a TCP caller by hand (A opens a connection to its
Contact). The fallback: a TCP caller that takes no connection at its Contact gets A's BYE
through B (alive), on its own connection, with the next CSeq.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
from typing import Any

import pytest
from livekit.protocol import room as room_proto

from tests.cluster import Cluster, Held, Node, answer, lk_client, sip_rooms
from tests.harness import eventually, sipp_port
from tests.harness import sipp as run_sipp
from tests.interop.test_cluster_faults import answered, list_calls
from tests.interop.test_cluster_sip_hop import (  # noqa: F401  (fixtures)
    CALLED,
    ROOM,
    SipStream,
    redis,
    sip_messages,
    trace,
    two,
)
from tests.interop.test_inbound_cases import header_of, status_of

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not shutil.which("sipp"), reason="sipp comes with `make test`"),
]


async def arrived(node: Node, call_id: str, first_line: str, what: str) -> dict[str, Any]:
    """The first message of `call_id` that came in to `node` starting `first_line` (its trace),
    once it has."""

    async def found() -> dict[str, Any] | None:
        entries = (await trace(node, call_id))["entries"]
        return next(
            (e for e in entries if e["direction"] == "in" and e["text"].startswith(first_line)),
            None,
        )

    return await eventually(found, what, timeout=15)


async def ended_normally(node: Node, call_id: str) -> None:
    """`node`'s call log ends the call as a room deleted, not lost."""

    async def logged() -> dict[str, Any] | None:
        entry = next((c for c in await list_calls(node) if c["call_id"] == call_id), None)
        ended = entry and entry.get("call_status") in ("SCS_DISCONNECTED", "SCS_ERROR")
        return entry if ended else None

    entry = await eventually(logged, "the call logged as ended")
    assert entry["call_status"] == "SCS_DISCONNECTED", entry
    assert entry["disconnect_reason"] == "ROOM_DELETED", entry
    assert not entry.get("error"), entry


def sent_to(node_trace: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    return [e for e in node_trace if e["direction"] == "out" and e["text"].startswith(f"{method} ")]


@pytest.mark.parametrize(
    "scenario",
    [
        "uac_follow_contact_hung_up.xml",  # its ACK to the 200's Contact: A
        "uac_hung_up_via.xml",  # its ACK back to B (through to A), the BYE's 200 per its Via
    ],
)
async def test_the_owners_bye_reaches_the_caller_with_the_proxying_node_dead(
    two: Cluster,  # noqa: F811
    scenario: str,
) -> None:
    a, b = two.nodes
    number = "+15550131"
    call = asyncio.create_task(
        run_sipp(
            scenario,
            b.sip_port,
            host=b.host,
            transport="u1",
            keys={"caller": number, "called": CALLED, "customer": "c"},
            limit=60,
        )
    )
    try:
        async with contextlib.AsyncExitStack() as agents:
            held = await answered(two.nodes, number, agents)
            assert held.node is a and held.room == ROOM
            call_id = held.participant.attributes["sip.callID"]
            await arrived(a, call_id, "ACK ", "the caller's ACK at A")

            b.kill()  # SIGKILL: B is gone, with its by-Call-ID memory of the call
            async with lk_client(a) as lk:
                await lk.room.delete_room(room_proto.DeleteRoomRequest(room=ROOM))
            done = await asyncio.wait_for(call, 60)
        assert done.code == 0, done.out[-3000:]  # the BYE came, and sipp answered it

        answer = await arrived(a, call_id, "SIP/2.0 200", "the caller's 200 to A's BYE, at A")
        assert header_of(answer["text"].encode(), "CSeq") == "1 BYE", answer
        entries = (await trace(a, call_id))["entries"]
        [bye] = sent_to(entries, "BYE")
        assert (bye["transport"], bye["remote_host"]) == ("udp", "127.0.0.1"), bye  # not B

        await ended_normally(a, call_id)
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await call


async def tcp_call(
    nodes: Cluster, number: str, contact_port: int, agents: contextlib.AsyncExitStack
) -> tuple[SipStream, str]:
    """A caller over TCP by hand, its INVITE to B (Contact: 127.0.0.1:`contact_port`), answered
    on A by an agent kept in `agents`, its ACK back to B (which sends it on): its connection to
    B, and the call's id once A has the ACK."""
    a, b = nodes.nodes
    reader, writer = await asyncio.wait_for(asyncio.open_connection(b.host, b.sip_port), 10)
    caller = SipStream(reader, writer)
    host, local = caller.local
    tag = secrets.token_hex(4)
    sdp = (
        "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {sipp_port()} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    common = f"From: <sip:{number}@{host}>;tag={tag}\r\nCall-ID: tcp-{tag}\r\nMax-Forwards: 70\r\n"
    uri = f"sip:{CALLED}@{b.host}:{b.sip_port};transport=tcp"
    await caller.send(
        f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/TCP {host}:{local};branch=z9hG4bK{tag}1\r\n"
        f"{common}To: <sip:{CALLED}@{b.host}>\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:{number}@127.0.0.1:{contact_port};transport=tcp>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    )

    async def ringing() -> Held | None:
        return (await sip_rooms(nodes.nodes)).get(f"sip_{number}")

    held = await eventually(ringing, "the TCP caller ringing")
    assert held.node is a
    await answer(held, agents)
    while status_of(ok := await caller.receive()) < 200:
        pass
    assert status_of(ok) == 200, ok
    await caller.send(  # (back where the INVITE went: B sends it on)
        f"ACK {uri} SIP/2.0\r\nVia: SIP/2.0/TCP {host}:{local};branch=z9hG4bK{tag}2\r\n"
        f"{common}To: {header_of(ok, 'To')}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
    call_id = held.participant.attributes["sip.callID"]
    await arrived(a, call_id, "ACK ", "the caller's ACK at A")
    return caller, call_id


async def answer_bye(stream: SipStream) -> bytes:
    """The BYE that comes on `stream`, answered 200 there."""
    bye = await stream.receive()
    assert bye.startswith(b"BYE "), bye
    reply = [
        "SIP/2.0 200 OK",
        *(f"{name}: {header_of(bye, name)}" for name in ("Via", "From", "To", "Call-ID")),
        f"CSeq: {header_of(bye, 'CSeq')}",
        "Content-Length: 0",
    ]
    await stream.send("\r\n".join(reply) + "\r\n\r\n")
    return bye


async def test_a_tcp_callers_bye_comes_on_a_connection_of_the_owners_own(
    two: Cluster,  # noqa: F811
) -> None:
    """A caller over TCP (by hand: its INVITE and ACK on its connection to B, a listener at its
    Contact): with B killed, A's BYE comes to the caller on a new connection A opens to the
    Contact's port (the source port was the far end of the connection to B), and the caller's
    200 on that connection reaches A."""
    a, b = two.nodes
    byes: asyncio.Queue[SipStream] = asyncio.Queue()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await byes.put(SipStream(reader, writer))

    listener = await asyncio.start_server(accepted, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    streams: list[SipStream] = []
    try:
        async with contextlib.AsyncExitStack() as agents:
            caller, call_id = await tcp_call(two, "+15550132", port, agents)
            streams.append(caller)
            b.kill()
            async with lk_client(a) as lk:
                await lk.room.delete_room(room_proto.DeleteRoomRequest(room=ROOM))
            incoming = await asyncio.wait_for(byes.get(), 15)
            streams.append(incoming)
            bye = await answer_bye(incoming)
        assert bye.startswith(f"BYE sip:+15550132@127.0.0.1:{port};transport=tcp ".encode())
        got = await arrived(a, call_id, "SIP/2.0 200", "the caller's 200 to A's BYE, at A")
        assert header_of(got["text"].encode(), "CSeq") == "1 BYE", got
        assert got["transport"] == "tcp"
        await ended_normally(a, call_id)
    finally:
        for stream in streams:
            await stream.close()
        listener.close()
        await listener.wait_closed()


async def test_a_caller_the_owner_cannot_reach_gets_its_bye_through_the_proxying_node(
    two: Cluster,  # noqa: F811
) -> None:
    """The fallback: a TCP caller that takes no connection at its Contact (nothing listens
    there: as behind a NAT) - A's BYE to it fails, and goes again, with the next CSeq, where
    the INVITE came from: B, which sends it on to the caller on its connection, and the
    caller's 200 back to A."""
    a, b = two.nodes
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with contextlib.AsyncExitStack() as agents:
        caller, call_id = await tcp_call(two, "+15550133", port, agents)
        try:
            async with lk_client(a) as lk:
                await lk.room.delete_room(room_proto.DeleteRoomRequest(room=ROOM))
            bye = await answer_bye(caller)  # on its connection to B
            assert header_of(bye, "CSeq") == "2 BYE", bye  # (the first, 1, went nowhere)
            got = await arrived(a, call_id, "SIP/2.0 200", "the caller's 200 to A's BYE, at A")
            assert header_of(got["text"].encode(), "CSeq") == "2 BYE", got
        finally:
            await caller.close()
    entries = (await trace(a, call_id))["entries"]
    first, again = sent_to(entries, "BYE")
    assert (first["remote_host"], first["remote_port"]) == ("127.0.0.1", port), first
    [invite] = [e for e in entries if e["direction"] == "in" and e["text"][:7] == "INVITE "]
    hop = (invite["remote_host"], invite["remote_port"])  # B's connection to A
    assert (again["remote_host"], again["remote_port"]) == hop, (again, invite)
    assert sip_messages(b).get("proxied_stray_bye") == 1
    assert sip_messages(a).get("dialog_target_unanswered") == 1
    await ended_normally(a, call_id)
