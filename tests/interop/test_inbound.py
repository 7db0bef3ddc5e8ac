"""Inbound calls end to end: sipp calls a `sipbridge serve` configured with the official
`livekit-api` client; the caller appears as a SIP participant with its `sip.*` attributes, is
answered when a participant subscribes to its audio, and leaves when either side hangs up."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import models, room, sip

from tests.harness import (
    call_log,
    client,
    eventually,
    leave_clean,
    module_server,
    run,
    sip_server_process,
    sipp_args,
    stop_cleanly,
)
from tests.helpers import ServerProcess
from tests.signal_client import SignalClient

pytestmark = pytest.mark.skipif(not shutil.which("sipp"), reason="sipp comes with `make test`")
CALLER = "+15550001"
CALLED = "+15105550100"


# No per-address rate limit here: the flood below tests what is answered, not the limit
# (test_hostile_invites.py tests that).
FLAGS = ("--sip-rate", "1000000")


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The server of the module's tests but the one that restarts its own."""
    yield from module_server(tmp_path_factory, "inbound", *FLAGS, sip=True)


@pytest.fixture
async def sip_server(shared_server: ServerProcess) -> AsyncIterator[ServerProcess]:
    """The module's server; after each test its trunks, rules and rooms are deleted and no
    call is left."""
    yield shared_server
    await leave_clean(shared_server)


@pytest.fixture
def own_sip_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own (one it restarts)."""
    proc = sip_server_process(tmp_path, *FLAGS)
    proc.start()
    yield proc
    stop_cleanly(proc)


async def sipp_call(
    server: ServerProcess,
    *,
    caller: str = CALLER,
    called: str = CALLED,
    hold_ms: int = 1500,
    customer: str = "cust-42",
    timeout: float = 30,
) -> asyncio.Task[tuple[int, str]]:
    """One call of uac_inbound.xml, running: its task gives (exit code, output)."""
    args = sipp_args(
        "uac_inbound.xml",
        server.sip_port,  # type: ignore[attr-defined]
        hold_ms=hold_ms,
        keys={"caller": caller, "called": called, "customer": customer},
        limit=timeout + 1,
    )
    return asyncio.create_task(run(*args, timeout=timeout + 10))


async def wait_for_participant(
    lk: api.LiveKitAPI, room_name: str, *, status: str | None = None, timeout: float = 10
) -> models.ParticipantInfo:
    async def found() -> models.ParticipantInfo | None:
        listed = await lk.room.list_participants(room.ListParticipantsRequest(room=room_name))
        for p in listed.participants:
            if p.kind == models.ParticipantInfo.Kind.SIP and (
                status is None or p.attributes.get("sip.callStatus") == status
            ):
                return p
        return None

    return await eventually(
        found, f"a SIP participant ({status}) in {room_name!r}", timeout=timeout
    )


async def setup_trunk_and_rule(lk: api.LiveKitAPI, **rule: object) -> tuple[str, str]:
    trunk = await lk.sip.create_inbound_trunk(
        sip.CreateSIPInboundTrunkRequest(
            trunk=sip.SIPInboundTrunkInfo(
                name="carrier",
                numbers=[CALLED],
                headers_to_attributes={"x-customer-id": "customer.id", "X-Evil": "sip.callStatus"},
                include_headers=sip.SIPHeaderOptions.SIP_X_HEADERS,
            )
        )
    )
    info = sip.SIPDispatchRuleInfo(
        rule=sip.SIPDispatchRule(
            dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name="support")
        ),
        attributes={"team": "support"},
        metadata='{"line":"support"}',
    )
    for key, value in rule.items():
        setattr(info, key, value)
    created = await lk.sip.create_dispatch_rule(
        sip.CreateSIPDispatchRuleRequest(dispatch_rule=info)
    )
    return trunk.sip_trunk_id, created.sip_dispatch_rule_id


async def test_inbound_call_joins_answers_and_hangs_up(own_sip_server: ServerProcess) -> None:
    sip_server = own_sip_server  # the call log is read across a restart
    async with client(sip_server) as lk:
        trunk_id, rule_id = await setup_trunk_and_rule(lk)
        async with SignalClient(sip_server.url, "support", "agent"):
            call = await sipp_call(sip_server, hold_ms=1500)
            p = await wait_for_participant(lk, "support", status="ringing")
            attrs = dict(p.attributes)
            assert p.identity == f"sip_{CALLER}" and p.name == f"Phone {CALLER}"
            assert p.metadata == '{"line":"support"}'
            assert attrs["sip.callID"].startswith("SCL_")
            assert attrs["sip.callIDFull"] and attrs["sip.callTag"]
            assert attrs["sip.phoneNumber"] == CALLER
            assert attrs["sip.trunkPhoneNumber"] == CALLED
            assert attrs["sip.hostname"] == "127.0.0.1"
            assert attrs["sip.trunkID"] == trunk_id and attrs["sip.ruleID"] == rule_id
            assert attrs["sip.twilio.accountSid"] == "AC0123456789abcdef0123456789abcdef"
            assert attrs["sip.twilio.callSid"].startswith("CA")
            assert attrs["sip.telnyx.callLegID"].startswith("leg-")
            assert attrs["sip.telnyx.callSessionID"].startswith("session-")
            assert attrs["sip.amazon.contactId"].startswith("contact-")
            assert attrs["customer.id"] == "cust-42"
            assert attrs["sip.h.x-customer-id"] == "cust-42"
            assert attrs["team"] == "support"
            assert attrs["sip.callStatus"] == "ringing"  # X-Evil could not overwrite it
            assert [t.type for t in p.tracks] == [models.TrackType.AUDIO]

            # The agent subscribes to the caller's audio: the call is answered.
            await lk.room.update_subscriptions(
                room.UpdateSubscriptionsRequest(
                    room="support", identity="agent", track_sids=[p.tracks[0].sid], subscribe=True
                )
            )
            active = await wait_for_participant(lk, "support", status="active")
            assert active.sid == p.sid
            code, out = await call  # sipp hangs up after its pause
            assert code == 0, out

            async def gone() -> bool:
                listed = await lk.room.list_participants(
                    room.ListParticipantsRequest(room="support")
                )
                return [x.identity for x in listed.participants] == ["agent"]

            await eventually(gone, "the SIP participant to leave", timeout=5)

    # The call log has it, and keeps it across a restart.
    await asyncio.to_thread(sip_server.restart)
    calls = await call_log(sip_server)
    assert len(calls) == 1
    entry = calls[0]
    assert entry["call_id"] == attrs["sip.callID"]
    assert entry["trunk_id"] == trunk_id and entry["dispatch_rule_id"] == rule_id
    assert entry["room_name"] == "support"
    assert entry["participant_identity"] == f"sip_{CALLER}"
    assert entry["call_status"] == "SCS_DISCONNECTED"
    assert entry["call_direction"] == "SCD_INBOUND"
    assert entry["disconnect_reason"] == "CLIENT_INITIATED"
    assert int(entry["ended_at_ns"]) > int(entry["started_at_ns"]) > 0


async def test_remove_participant_sends_bye(sip_server: ServerProcess) -> None:
    async with client(sip_server) as lk:
        await setup_trunk_and_rule(lk)
        async with SignalClient(sip_server.url, "support", "agent"):
            call = await sipp_call(sip_server, hold_ms=20_000)
            p = await wait_for_participant(lk, "support", status="ringing")
            await lk.room.update_subscriptions(
                room.UpdateSubscriptionsRequest(
                    room="support", identity="agent", track_sids=[p.tracks[0].sid], subscribe=True
                )
            )
            await wait_for_participant(lk, "support", status="active")
            await lk.room.remove_participant(
                room.RoomParticipantIdentity(room="support", identity=p.identity)
            )
            code, out = await call
            # sipp, in its pause, gets our BYE: its scenario did not expect one and aborts.
            assert "unexpected BYE" in out or code != 0, out


@pytest.mark.parametrize(
    ("setup", "status"),
    [
        ("no rule", 404),
        ("no trunk", 404),
        ("no codec", 488),
    ],
)
async def test_refused_calls_get_a_status(
    sip_server: ServerProcess, setup: str, status: int
) -> None:
    async with client(sip_server) as lk:
        if setup == "no rule":
            await lk.sip.create_inbound_trunk(
                sip.CreateSIPInboundTrunkRequest(trunk=sip.SIPInboundTrunkInfo(numbers=[CALLED]))
            )
        elif setup == "no trunk":
            await lk.sip.create_inbound_trunk(
                sip.CreateSIPInboundTrunkRequest(
                    trunk=sip.SIPInboundTrunkInfo(numbers=["+19999999999"])
                )
            )
        else:
            await setup_trunk_and_rule(lk)
    port = sip_server.sip_port  # type: ignore[attr-defined]
    codec = "m=audio 4000 RTP/AVP 18\r\n" if setup == "no codec" else None
    reply = await asyncio.to_thread(_exchange, port, _invite(port, codec_line=codec))
    assert reply.startswith(f"SIP/2.0 {status} ".encode()), reply


def _invite(
    port: int,
    codec_line: str | None = None,
    *,
    call_id: str | None = None,
    branch: str | None = None,
) -> bytes:
    """An INVITE from CALLER to CALLED. A new transaction and call by default (a branch and
    Call-ID of its own): on the module's server, a branch used before is a retransmission."""
    unique = secrets.token_hex(4)
    call_id = call_id or f"refused-{unique}@127.0.0.1"
    branch = branch or f"z9hG4bKinv-{unique}"
    body = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        + (codec_line or "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    ).encode()
    head = (
        f"INVITE sip:{CALLED}@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch={branch};rport\r\n"
        f"From: <sip:{CALLER}@127.0.0.1>;tag=f1\r\n"
        f"To: <sip:{CALLED}@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:caller@127.0.0.1:5999>\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _exchange(port: int, data: bytes) -> bytes:
    import socket  # noqa: PLC0415

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(3)
        sock.sendto(data, ("127.0.0.1", port))
        while True:
            reply = sock.recv(65535)
            status = int(reply.split(b" ", 2)[1])
            if status >= 200:
                return reply


async def test_a_flood_of_invites_is_answered_and_contained(sip_server: ServerProcess) -> None:
    """2,000 INVITEs with random Call-IDs to a number no trunk has: every one answered 404,
    the rejected-INVITE cache stays bounded, and the server keeps answering."""
    import socket  # noqa: PLC0415

    async with client(sip_server) as lk:
        await setup_trunk_and_rule(lk)
    port = sip_server.sip_port  # type: ignore[attr-defined]

    def flood() -> int:
        answered = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            sock.settimeout(5)
            for i in range(2000):
                invite = _invite(port, call_id=f"flood-{i}@127.0.0.1", branch=f"z9hG4bKflood{i}")
                invite = invite.replace(f"sip:{CALLED}@".encode(), b"sip:+19990000000@")
                sock.sendto(invite, ("127.0.0.1", port))
                if i % 50 == 49:  # keep the flood bounded by what we read back
                    while answered < i - 100:
                        if int(sock.recv(65535).split(b" ", 2)[1]) >= 200:
                            answered += 1
            deadline = time.monotonic() + 20
            while answered < 2000 and time.monotonic() < deadline:
                try:
                    reply = sock.recv(65535)
                except TimeoutError:
                    break
                if reply.startswith(b"SIP/2.0 404 "):
                    answered += 1
        return answered

    answered = await asyncio.to_thread(flood)
    assert answered >= 1990, answered  # UDP on loopback: allow for a few lost datagrams
    from tests.interop.test_sip_peers import request, udp_exchange  # noqa: PLC0415

    reply = await asyncio.to_thread(udp_exchange, port, request("OPTIONS", port))
    assert reply is not None and reply.startswith(b"SIP/2.0 200 OK"), reply
    assert "Traceback" not in sip_server.log.read_text()


async def test_ringing_timeout_defaults_to_486(sip_server: ServerProcess) -> None:
    """Nobody answers within the trunk's ringing_timeout: 486 Busy Here (SIP-BEHAVIOUR s1.11)."""
    from google.protobuf.duration_pb2 import Duration  # noqa: PLC0415

    async with client(sip_server) as lk:
        await lk.sip.create_inbound_trunk(
            sip.CreateSIPInboundTrunkRequest(
                trunk=sip.SIPInboundTrunkInfo(numbers=[CALLED], ringing_timeout=Duration(seconds=1))
            )
        )
        await lk.sip.create_dispatch_rule(
            sip.CreateSIPDispatchRuleRequest(
                dispatch_rule=sip.SIPDispatchRuleInfo(
                    rule=sip.SIPDispatchRule(
                        dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name="quiet")
                    )
                )
            )
        )
        port = sip_server.sip_port  # type: ignore[attr-defined]
        began = time.monotonic()
        reply = await asyncio.to_thread(_exchange, port, _invite(port))
        assert reply.startswith(b"SIP/2.0 486 Busy Here\r\n"), reply
        assert 0.8 < time.monotonic() - began < 3
        listed = await lk.room.list_participants(room.ListParticipantsRequest(room="quiet"))
        assert not listed.participants
