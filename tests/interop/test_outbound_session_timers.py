"""RFC 4028 session timers on outbound calls, against sipp as the carrier: `CreateSIPParticipant`
through the official `livekit-api` client, answered with a Session-Expires that makes us the
refresher (`refresher=uac`) or the refreshee (`refresher=uas`).

Kept short for CI: the server runs with `--session-min-se 4` and sipp answers an interval of 4 s,
so what takes 90 s at RFC 4028's floor takes 4 here. The behaviour is the same at any interval
(the unit tests in tests/sip/test_session_timer.py run 90 and 1800 s with fake time):
- as refresher we refresh at half the interval, each time: sipp's scenario refuses a refresh
  that comes later than half the interval plus 1 s of scheduling slack, answers four of them
  200, and the call is still up after them (UPDATE when the carrier allows it, else a re-INVITE
  carrying our SDP);
- as refreshee we hang up a session the carrier does not refresh, before the interval passes.
sipp also checks our INVITE: `Supported: timer` and nothing else, `Session-Expires: 1800`, and
our `Min-SE`; and a carrier answering 422 with a larger Min-SE gets the INVITE again asking for
that (RFC 4028 s7.4).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit.protocol import room, sip

from tests.harness import served, sip_server_process
from tests.helpers import ServerProcess
from tests.interop.test_outbound import (
    NUMBER,
    ROOM,
    call_log,
    carrier,
    client,
    eventually,
    make_trunk,
    participants,
)

pytestmark = pytest.mark.skipif(not shutil.which("sipp"), reason="sipp comes with `make test`")
INTERVAL = 4  # seconds: sipp's Session-Expires, and our Min-SE
HALF_MS = INTERVAL * 1000 // 2
REFRESHES = 4  # in the scenarios
UPDATE_ALLOWED = "INVITE, ACK, BYE, CANCEL, UPDATE"
NO_UPDATE = "INVITE, ACK, BYE, CANCEL"


@pytest.fixture
def sip_server(tmp_path: Path) -> Iterator[ServerProcess]:
    flags = ("--rtp-ports", "18000-18999", "--session-min-se", str(INTERVAL))
    with served(sip_server_process(tmp_path, *flags)) as proc:
        yield proc


@pytest.mark.parametrize(
    ("scenario", "allow"),
    [
        ("uas_session_refresh_update.xml", UPDATE_ALLOWED),
        ("uas_session_refresh_reinvite.xml", NO_UPDATE),
    ],
    ids=["update", "reinvite"],
)
async def test_as_refresher_we_refresh_at_half_the_interval_and_the_call_stays_up(
    sip_server: ServerProcess, scenario: str, allow: str
) -> None:
    fill = {"interval": str(INTERVAL), "window": str(HALF_MS + 1000), "allow": allow}
    async with (
        client(sip_server) as lk,
        carrier(scenario, fill=fill, timeout=60) as (port, sipp_task),
    ):
        trunk_id = await make_trunk(lk, port)
        created = await lk.sip.create_sip_participant(
            sip.CreateSIPParticipantRequest(
                sip_trunk_id=trunk_id, sip_call_to=NUMBER, room_name=ROOM, wait_until_answered=True
            )
        )
        answered = time.monotonic()
        identity = created.participant_identity

        # Each refresh within half the interval (+1 s) of the last is sipp's check; here: the
        # call stays up while four go out, and they take about four half-intervals.
        deadline = REFRESHES * (HALF_MS / 1000 + 1) + 5
        while (await outbound_counters(sip_server)).get("session_refreshed", 0) < REFRESHES:
            assert not sipp_task.done(), f"sipp gave up: {(await sipp_task)[1]}"
            phone = (await participants(lk)).get(identity)
            assert phone is not None, "the call ended while we were its refresher"
            assert phone.attributes["sip.callStatus"] == "active"
            assert time.monotonic() - answered < deadline, "four refreshes took too long"
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - answered
        assert REFRESHES * HALF_MS / 1000 - 1 <= elapsed <= deadline, elapsed
        assert not sipp_task.done(), await sipp_task  # it waits for our BYE: the call is up
        phone = (await participants(lk))[identity]
        assert phone.attributes["sip.callStatus"] == "active"
        await lk.room.remove_participant(room.RoomParticipantIdentity(room=ROOM, identity=identity))
        code, out = await sipp_task
        assert code == 0, out
    entry = next(e for e in await call_log(sip_server) if e["call_id"] == created.sip_call_id)
    assert entry["call_status"] == "SCS_DISCONNECTED" and not entry.get("error"), entry


async def outbound_counters(server: ServerProcess) -> dict[str, float]:
    """`sipbridge_outbound_total{outcome=...}` from /metrics, by outcome."""
    metrics = await asyncio.to_thread(server.metrics)
    prefix = 'sipbridge_outbound_total{outcome="'
    return {
        key[len(prefix) :].split('"', 1)[0]: value
        for key, value in metrics.items()
        if key.startswith(prefix)
    }


async def test_as_refreshee_we_hang_up_a_session_nobody_refreshes(
    sip_server: ServerProcess,
) -> None:
    fill = {"interval": str(INTERVAL), "window": str(INTERVAL * 1000), "allow": UPDATE_ALLOWED}
    async with (
        client(sip_server) as lk,
        carrier("uas_session_expires.xml", fill=fill, timeout=30) as (port, sipp_task),
    ):
        trunk_id = await make_trunk(lk, port)
        created = await lk.sip.create_sip_participant(
            sip.CreateSIPParticipantRequest(
                sip_trunk_id=trunk_id, sip_call_to=NUMBER, room_name=ROOM, wait_until_answered=True
            )
        )
        answered = time.monotonic()
        identity = created.participant_identity

        async def gone() -> bool:
            return identity not in await participants(lk)

        await eventually(gone, "no BYE before the session expired", timeout=INTERVAL + 2)
        elapsed = time.monotonic() - answered
        # RFC 4028 s10: the BYE at the interval less min(32 s, a third of it): 2.7 s here.
        expected = INTERVAL - min(32, INTERVAL / 3)
        assert expected - 0.5 <= elapsed < INTERVAL, elapsed
        code, out = await sipp_task  # its BYE came within the interval, and was answered 200
        assert code == 0, out
    entry = next(e for e in await call_log(sip_server) if e["call_id"] == created.sip_call_id)
    assert entry["call_status"] == "SCS_DISCONNECTED", entry
    assert "session expired" in entry["error"], entry


async def test_a_422_is_retried_with_the_interval_the_carrier_asks_for(
    sip_server: ServerProcess,
) -> None:
    async with (
        client(sip_server) as lk,
        carrier("uas_session_422.xml", timeout=20) as (port, sipp_task),
    ):
        trunk_id = await make_trunk(lk, port)
        created = await lk.sip.create_sip_participant(
            sip.CreateSIPParticipantRequest(
                sip_trunk_id=trunk_id, sip_call_to=NUMBER, room_name=ROOM, wait_until_answered=True
            )
        )
        identity = created.participant_identity
        phone = (await participants(lk))[identity]
        assert phone.attributes["sip.callStatus"] == "active"
        await lk.room.remove_participant(room.RoomParticipantIdentity(room=ROOM, identity=identity))
        code, out = await sipp_task  # it saw 1800, then 1900 with Min-SE 1900 in CSeq 2
        assert code == 0, out
