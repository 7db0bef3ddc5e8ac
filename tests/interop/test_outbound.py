"""Outbound calls end to end: `CreateSIPParticipant` through the official `livekit-api` client
against a `sipbridge serve`, the called side a sipp UAS running our own scenarios: answering
(with X- headers), hanging up, refusing (486, 603, 404, 503, a 302 redirect), never answering,
challenging, registering, testing us with a REFER and a forged NOTIFY.

Each test checks what users program against: `create_sip_participant` with and without
`wait_until_answered`, the `SipCallError` fields, the participant's `sip.*` attributes and
statuses, its `disconnect_reason` when it leaves, and the call log.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from livekit import api
from livekit.protocol import models, room, sip

from tests.harness import (
    SIPP_DIR,
    bound,
    call_log,
    client,
    eventually,
    leave_clean,
    module_server,
    run,
    sipp_args,
    sipp_port,
)
from tests.helpers import ServerProcess
from tests.signal_client import SignalClient

pytestmark = pytest.mark.skipif(not shutil.which("sipp"), reason="sipp comes with `make test`")
CALLER_ID = "+15550001"
NUMBER = "+15551234"
ROOM = "outbound"


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module's tests (all but the one that needs a tiny RTP range)."""
    yield from module_server(tmp_path_factory, "outbound", "--rtp-ports", "17000-17999", sip=True)


@pytest.fixture
async def sip_server(shared_server: ServerProcess) -> AsyncIterator[ServerProcess]:
    """The module's server; after each test its trunks and rooms are deleted, no call is left."""
    yield shared_server
    await leave_clean(shared_server)


async def calls_of(server: ServerProcess, trunk_id: str) -> list[dict[str, Any]]:
    """The call log entries of the calls placed through `trunk_id` (made by one test)."""
    return [e for e in await call_log(server) if e["trunk_id"] == trunk_id]


@asynccontextmanager
async def carrier(
    scenario: str,
    *keys: tuple[str, str],
    timeout: float = 30,
    fill: dict[str, str] | None = None,
    transport: str = "udp",
) -> AsyncIterator[tuple[int, asyncio.Task[tuple[int, str]]]]:
    """A sipp UAS playing one call of `scenario`: (its port, its task -> (exit code, output)).
    `fill` replaces `[name]` in the scenario's text before sipp reads it: sipp checks status
    lines when it loads a file and never puts `-key` values in XML attributes."""
    port = sipp_port()
    path: str | Path = scenario
    if fill:
        text = (SIPP_DIR / scenario).read_text()
        for name, value in fill.items():
            text = text.replace(f"[{name}]", value)
        path = Path(tempfile.mkdtemp()) / scenario
        path.write_text(text)
    args = sipp_args(
        path,
        port=port,
        transport="t1" if transport == "tcp" else None,
        keys=dict(keys),
        limit=timeout + 1,
    )
    task = asyncio.create_task(run(*args, timeout=timeout + 10))
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    await eventually(lambda: bound(port, kind) or task.done(), f"sipp listening on {port}")
    try:
        yield port, task
    finally:
        if not task.done():
            task.cancel()


async def make_trunk(lk: api.LiveKitAPI, port: int, **fields: Any) -> str:
    trunk = await lk.sip.create_outbound_trunk(
        sip.CreateSIPOutboundTrunkRequest(
            trunk=sip.SIPOutboundTrunkInfo(
                name="carrier", address=f"127.0.0.1:{port}", numbers=[CALLER_ID], **fields
            )
        )
    )
    return trunk.sip_trunk_id


async def participants(lk: api.LiveKitAPI, name: str = ROOM) -> dict[str, models.ParticipantInfo]:
    listed = await lk.room.list_participants(room.ListParticipantsRequest(room=name))
    return {p.identity: p for p in listed.participants}


def statuses_seen(client: SignalClient, identity: str) -> list[str]:
    """sip.callStatus values in the ParticipantUpdates a room member received, in order."""
    seen: list[str] = []
    for message in client.log:
        if message.WhichOneof("message") != "update":
            continue
        for p in message.update.participants:
            status = p.attributes.get("sip.callStatus")
            if p.identity == identity and status and (not seen or seen[-1] != status):
                seen.append(status)
    return seen


async def test_an_answered_call_joins_the_room_and_our_hangup_ends_it(
    sip_server: ServerProcess,
) -> None:
    async with (
        client(sip_server) as lk,
        carrier("uas_answer.xml") as (port, sipp_task),
        SignalClient(sip_server.url, ROOM, "agent") as agent,
    ):
        trunk_id = await make_trunk(lk, port, headers_to_attributes={"X-Agent-Id": "agent.id"})
        created = await lk.sip.create_sip_participant(
            sip.CreateSIPParticipantRequest(
                sip_trunk_id=trunk_id,
                sip_call_to=NUMBER,
                room_name=ROOM,
                participant_attributes={"campaign": "spring"},
                wait_until_answered=True,
            )
        )
        identity = f"sip_{NUMBER}"
        assert created.participant_identity == identity and created.room_name == ROOM
        assert created.sip_call_id.startswith("SCL_")
        assert created.participant_id.startswith("PA_")
        phone = (await participants(lk))[identity]
        assert phone.kind == models.ParticipantInfo.Kind.SIP
        attrs = dict(phone.attributes)
        assert attrs["sip.callStatus"] == "active"
        assert attrs["sip.callID"] == created.sip_call_id
        assert attrs["sip.phoneNumber"] == NUMBER
        assert attrs["sip.trunkPhoneNumber"] == CALLER_ID
        assert attrs["sip.trunkID"] == trunk_id
        assert attrs["sip.hostname"] == "127.0.0.1"
        assert attrs["sip.callTag"].endswith("SIPpTag011")
        assert attrs["sip.callIDFull"]
        assert attrs["sip.twilio.accountSid"] == "AC123"  # from the 180
        assert attrs["sip.twilio.callSid"] == "CA456"  # from the 200
        assert attrs["agent.id"] == "42"  # headers_to_attributes, from the 200
        assert attrs["campaign"] == "spring"
        # the room saw it dial, ring and answer
        await eventually(
            lambda: "active" in statuses_seen(agent, identity),
            "statuses in the room",
        )
        assert statuses_seen(agent, identity)[:3] == ["dialing", "ringing", "active"]
        # RemoveParticipant hangs up: BYE, which the carrier answers (its scenario then passes)
        await lk.room.remove_participant(room.RoomParticipantIdentity(room=ROOM, identity=identity))
        code, out = await sipp_task
        assert code == 0, out
    entry = next(e for e in await call_log(sip_server) if e["call_id"] == created.sip_call_id)
    assert entry["call_direction"] == "SCD_OUTBOUND"
    assert entry["call_status"] == "SCS_DISCONNECTED"
    assert entry["trunk_id"] == trunk_id and entry["room_name"] == ROOM
    assert int(entry["ended_at_ns"]) > int(entry["started_at_ns"]) > 0


async def test_the_called_side_hangs_up(sip_server: ServerProcess) -> None:
    async with client(sip_server) as lk, carrier("uas_answer_hangup.xml") as (port, sipp_task):
        trunk_id = await make_trunk(lk, port)
        async with SignalClient(sip_server.url, ROOM, "agent") as agent:
            created = await lk.sip.create_sip_participant(
                sip.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk_id, sip_call_to=NUMBER, room_name=ROOM
                )  # no wait: returns once the INVITE is out
            )
            identity = created.participant_identity
            assert identity in await participants(lk)

            async def gone() -> bool:
                return identity not in await participants(lk)

            await eventually(gone, "the participant did not leave after the BYE")
            code, out = await sipp_task
            assert code == 0, out

            async def left_update() -> list[models.ParticipantInfo]:
                # The agent's update may come a moment after the API shows the leave.
                return [
                    p
                    for m in agent.log
                    if m.WhichOneof("message") == "update"
                    for p in m.update.participants
                    if p.identity == identity
                    and p.state == models.ParticipantInfo.State.DISCONNECTED
                ]

            left = await eventually(left_update, "the agent to hear of the leave")
            assert left[-1].disconnect_reason == models.DisconnectReason.CLIENT_INITIATED
            assert left[-1].attributes["sip.callStatus"] == "hangup"


@pytest.mark.parametrize(
    ("status", "reason", "code", "disconnect"),
    [
        (486, "Busy Here", "resource_exhausted", models.DisconnectReason.USER_REJECTED),
        (603, "Decline", "permission_denied", models.DisconnectReason.USER_REJECTED),
        (404, "Not Found", "not_found", models.DisconnectReason.USER_UNAVAILABLE),
        # a redirect is not followed: the caller learns where the carrier pointed
        (302, "Moved Temporarily", "invalid_argument", models.DisconnectReason.SIP_TRUNK_FAILURE),
        (
            503,
            "Service Unavailable",
            "failed_precondition",
            models.DisconnectReason.SIP_TRUNK_FAILURE,
        ),
    ],
)
async def test_a_refused_call_raises_sip_call_error(
    sip_server: ServerProcess, status: int, reason: str, code: str, disconnect: int
) -> None:
    async with (
        client(sip_server) as lk,
        carrier("uas_refuse.xml", fill={"status": str(status), "reason": reason}) as (
            port,
            sipp_task,
        ),
        SignalClient(sip_server.url, ROOM, "agent") as agent,
    ):
        trunk_id = await make_trunk(lk, port)
        with pytest.raises(api.SipCallError) as raised:
            await lk.sip.create_sip_participant(
                sip.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk_id,
                    sip_call_to=NUMBER,
                    room_name=ROOM,
                    wait_until_answered=True,
                )
            )
        err = raised.value
        assert err.sip_status_code == status
        assert err.sip_status == reason
        assert err.code == code
        code_, out = await sipp_task
        assert code_ == 0, out
        assert f"sip_{NUMBER}" not in await participants(lk)
        left = [
            p
            for m in agent.log
            if m.WhichOneof("message") == "update"
            for p in m.update.participants
            if p.state == models.ParticipantInfo.State.DISCONNECTED
        ]
        assert left and left[-1].disconnect_reason == disconnect
    (entry,) = await calls_of(sip_server, trunk_id)
    assert entry["call_status"] == "SCS_ERROR"
    assert entry["call_status_code"]["code"] == sip.SIPStatusCode.Name(status)


async def test_no_answer_within_the_ringing_timeout_cancels(sip_server: ServerProcess) -> None:
    async with client(sip_server) as lk, carrier("uas_never_answer.xml") as (port, sipp_task):
        trunk_id = await make_trunk(lk, port)
        started = time.monotonic()
        request = sip.CreateSIPParticipantRequest(
            sip_trunk_id=trunk_id, sip_call_to=NUMBER, room_name=ROOM, wait_until_answered=True
        )
        request.ringing_timeout.seconds = 2
        with pytest.raises(api.SipCallError) as raised:
            await lk.sip.create_sip_participant(request)
        assert 1.8 < time.monotonic() - started < 5
        assert raised.value.sip_status_code == 408
        assert raised.value.code == "deadline_exceeded"
        code, out = await sipp_task  # it got our CANCEL, answered 487, got the ACK
        assert code == 0, out
        assert f"sip_{NUMBER}" not in await participants(lk)


async def test_digest_challenge_is_answered(sip_server: ServerProcess) -> None:
    async with client(sip_server) as lk, carrier("uas_digest.xml") as (port, sipp_task):
        trunk_id = await make_trunk(lk, port, auth_username="acme", auth_password="s3cret")
        created = await lk.sip.create_sip_participant(
            sip.CreateSIPParticipantRequest(
                sip_trunk_id=trunk_id,
                sip_call_to=NUMBER,
                room_name=ROOM,
                wait_until_answered=True,
            )
        )
        await lk.room.remove_participant(
            room.RoomParticipantIdentity(room=ROOM, identity=created.participant_identity)
        )
        code, out = await sipp_task
        assert code == 0, out


async def test_wrong_credentials_fail_with_the_carriers_status(sip_server: ServerProcess) -> None:
    async with client(sip_server) as lk, carrier("uas_digest.xml") as (port, _):
        trunk_id = await make_trunk(lk, port, auth_username="acme", auth_password="wrong")
        with pytest.raises(api.SipCallError) as raised:
            await lk.sip.create_sip_participant(
                sip.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk_id,
                    sip_call_to=NUMBER,
                    room_name=ROOM,
                    wait_until_answered=True,
                )
            )
        assert raised.value.sip_status_code == 403


async def test_bad_requests_are_refused_before_dialling(sip_server: ServerProcess) -> None:
    async with client(sip_server) as lk:
        trunk_id = await make_trunk(lk, sipp_port())
        cases: list[tuple[dict[str, Any], str]] = [
            ({"sip_call_to": NUMBER, "room_name": ROOM}, "invalid_argument"),  # no trunk
            ({"sip_trunk_id": "ST_nope", "sip_call_to": NUMBER, "room_name": ROOM}, "not_found"),
            ({"sip_trunk_id": trunk_id, "room_name": ROOM}, "invalid_argument"),  # no number
            ({"sip_trunk_id": trunk_id, "sip_call_to": NUMBER}, "invalid_argument"),  # no room
            (
                {"sip_trunk_id": trunk_id, "sip_call_to": "a@b", "room_name": ROOM},
                "invalid_argument",
            ),
            (
                {
                    "sip_trunk_id": trunk_id,
                    "sip_call_to": NUMBER,
                    "room_name": ROOM,
                    "headers": {"Call-ID": "x"},
                },
                "invalid_argument",
            ),
            (
                {
                    "trunk": sip.SIPOutboundConfig(hostname="no-such-host.invalid"),
                    "sip_call_to": NUMBER,
                    "room_name": ROOM,
                },
                "failed_precondition",
            ),
        ]
        for fields, code in cases:
            with pytest.raises(api.TwirpError) as raised:
                await lk.sip.create_sip_participant(sip.CreateSIPParticipantRequest(**fields))
            assert raised.value.code == code, (fields, raised.value)
        listed = await lk.room.list_rooms(room.ListRoomsRequest())
        assert [r.name for r in listed.rooms] == []  # nothing was left behind


async def test_a_trunk_that_refuses_the_connection_fails_fast(sip_server: ServerProcess) -> None:
    async with client(sip_server) as lk:
        trunk_id = await make_trunk(
            lk, sipp_port(), transport=sip.SIPTransport.SIP_TRANSPORT_TCP
        )  # nobody listens there
        started = time.monotonic()
        with pytest.raises(api.SipCallError) as raised:
            await lk.sip.create_sip_participant(
                sip.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk_id,
                    sip_call_to=NUMBER,
                    room_name=ROOM,
                    wait_until_answered=True,
                )
            )
        assert time.monotonic() - started < 3
        assert raised.value.sip_status_code == 503
        assert raised.value.code == "failed_precondition"
        assert f"sip_{NUMBER}" not in await participants(lk)
    (entry,) = await calls_of(sip_server, trunk_id)
    assert entry["call_status"] == "SCS_ERROR"
    assert entry["disconnect_reason"] == "SIP_TRUNK_FAILURE"


async def test_a_trunk_registers_refreshes_and_unregisters(sip_server: ServerProcess) -> None:
    """An outbound trunk whose metadata asks for it registers at its carrier: challenged, it
    answers with the trunk's credentials; granted 2 s, it refreshes in time (reusing the
    challenge); /metrics shows it registered; deleting the trunk stops it."""
    async with client(sip_server) as lk, carrier("uas_register.xml") as (port, sipp_task):
        trunk_id = await make_trunk(
            lk,
            port,
            auth_username="acme",
            auth_password="s3cret",
            metadata=json.dumps({"register": {"expires": 120}}),
        )
        code, out = await sipp_task  # challenge, registration, refresh: every step passed
        assert code == 0, out

        async def registered() -> bool:
            metrics = await asyncio.to_thread(sip_server.metrics)
            return metrics.get('sipbridge_registrations{state="registered"}', 0) == 1

        await eventually(registered, "the trunk is not shown registered")
        await lk.sip.delete_trunk(sip.DeleteSIPTrunkRequest(sip_trunk_id=trunk_id))

        async def gone() -> bool:
            metrics = await asyncio.to_thread(sip_server.metrics)
            return not any(k.startswith("sipbridge_registrations{") for k in metrics)

        await eventually(gone, "the deleted trunk still registers")


async def test_a_carriers_refer_and_forged_notify_are_refused_and_our_bye_maps_attributes(
    sip_server: ServerProcess,
) -> None:
    async with (
        client(sip_server) as lk,
        carrier("uas_answer_checks.xml") as (port, sipp_task),
    ):
        trunk_id = await make_trunk(lk, port, attributes_to_headers={"customer": "X-Customer"})
        request = sip.CreateSIPParticipantRequest(
            sip_trunk_id=trunk_id,
            sip_call_to=NUMBER,
            room_name=ROOM,
            participant_attributes={"customer": "vip"},
            wait_until_answered=True,
        )
        request.max_call_duration.seconds = 2  # then we hang up, with X-Customer on the BYE
        created = await lk.sip.create_sip_participant(request)
        code, out = await sipp_task  # 405 to its REFER, 481 to the forged NOTIFY, our BYE
        assert code == 0, out

        async def gone() -> bool:
            return created.participant_identity not in await participants(lk)

        await eventually(gone, "the participant did not leave at max_call_duration")


async def test_a_trunk_found_by_its_number(sip_server: ServerProcess) -> None:
    """No trunk id: the outbound trunk is the one whose numbers include `sip_number`."""
    async with client(sip_server) as lk, carrier("uas_answer.xml") as (port, sipp_task):
        await make_trunk(lk, sipp_port())  # another trunk, for another number
        other = await lk.sip.create_outbound_trunk(
            sip.CreateSIPOutboundTrunkRequest(
                trunk=sip.SIPOutboundTrunkInfo(
                    name="by number", address=f"127.0.0.1:{port}", numbers=["+15550999"]
                )
            )
        )
        created = await lk.sip.create_sip_participant(
            sip.CreateSIPParticipantRequest(
                sip_number="+15550999",
                sip_call_to=NUMBER,
                room_name=ROOM,
                wait_until_answered=True,
            )
        )
        phone = (await participants(lk))[created.participant_identity]
        assert phone.attributes["sip.trunkID"] == other.sip_trunk_id
        assert phone.attributes["sip.trunkPhoneNumber"] == "+15550999"
        await lk.room.remove_participant(
            room.RoomParticipantIdentity(room=ROOM, identity=created.participant_identity)
        )
        code, out = await sipp_task
        assert code == 0, out
        with pytest.raises(api.TwirpError) as raised:  # a number no trunk has
            await lk.sip.create_sip_participant(
                sip.CreateSIPParticipantRequest(
                    sip_number="+19999999", sip_call_to=NUMBER, room_name=ROOM
                )
            )
        assert raised.value.code == "not_found"


async def test_removing_a_ringing_participant_cancels_the_call(sip_server: ServerProcess) -> None:
    async with client(sip_server) as lk, carrier("uas_never_answer.xml") as (port, sipp_task):
        trunk_id = await make_trunk(lk, port)
        created = await lk.sip.create_sip_participant(
            sip.CreateSIPParticipantRequest(
                sip_trunk_id=trunk_id, sip_call_to=NUMBER, room_name=ROOM
            )
        )

        async def ringing() -> bool:
            phone = (await participants(lk)).get(created.participant_identity)
            return phone is not None and phone.attributes["sip.callStatus"] == "ringing"

        await eventually(ringing, "the call did not ring")
        await lk.room.remove_participant(
            room.RoomParticipantIdentity(room=ROOM, identity=created.participant_identity)
        )
        code, out = await sipp_task  # CANCEL, 487, ACK
        assert code == 0, out
    (entry,) = await calls_of(sip_server, trunk_id)
    assert entry["disconnect_reason"] == "PARTICIPANT_REMOVED"
    assert entry["call_status"] == "SCS_ERROR"


async def test_no_rtp_port_left_is_a_clear_error_and_logged(tmp_path: Path) -> None:
    port = sipp_port()
    server = ServerProcess(tmp_path, "--sip", f"127.0.0.1:{port}", "--rtp-ports", "17100-17101")
    server.start()
    try:
        async with client(server) as lk, carrier("uas_answer.xml") as (uas, sipp_task):
            trunk_id = await make_trunk(lk, uas)
            first = await lk.sip.create_sip_participant(
                sip.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk_id,
                    sip_call_to=NUMBER,
                    room_name=ROOM,
                    wait_until_answered=True,
                )
            )
            with pytest.raises(api.TwirpError) as raised:  # the one RTP pair is taken
                await lk.sip.create_sip_participant(
                    sip.CreateSIPParticipantRequest(
                        sip_trunk_id=trunk_id, sip_call_to="+15559999", room_name=ROOM
                    )
                )
            assert raised.value.code == "resource_exhausted"
            assert "+15559999" not in "".join(await participants(lk))  # nobody joined for it
            await lk.room.remove_participant(
                room.RoomParticipantIdentity(room=ROOM, identity=first.participant_identity)
            )
            code, out = await sipp_task
            assert code == 0, out
        statuses = sorted(e["call_status"] for e in await call_log(server))
        assert statuses == ["SCS_DISCONNECTED", "SCS_ERROR"]
    finally:
        assert server.stop() == 0, server.log.read_text()
