"""TransferSIPParticipant end to end with real phones: baresip A calls into a room, the API
transfers it to baresip C (REFER); A calls C, reports progress in NOTIFYs, and once C answered
the API call returns, our call with A ends a second later and A's participant leaves. Failures
come back as SipCallError with the target's status; the carrier's own REFERs are refused."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import models, room, sip

from tests import baresip
from tests.harness import call_log, client, eventually, leave_clean, module_server
from tests.helpers import ServerProcess
from tests.interop.test_call_audio import direct_rule, sip_participants, target
from tests.signal_client import SignalClient

pytestmark = pytest.mark.skipif(
    not shutil.which("baresip"), reason="baresip comes with `make test`"
)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module's calls (conftest's `media_server` is one per test)."""
    yield from module_server(tmp_path_factory, "transfer", "--rtp-ports", "14000-14999", sip=True)


@pytest.fixture
async def media_server(shared_server: ServerProcess) -> AsyncIterator[ServerProcess]:
    """The module's server; after each test its trunks, rules and rooms are deleted and no
    call is left."""
    yield shared_server
    await leave_clean(shared_server)


async def answered_caller(
    lk: api.LiveKitAPI, server: ServerProcess, phone: baresip.Phone
) -> models.ParticipantInfo:
    """`phone` calls the bridge room and is answered (a room member subscribes to it)."""
    await phone.dial(target(server))
    await phone.wait_event("CALL_RINGING", fail_on=("CALL_CLOSED",))
    (caller,) = await sip_participants(lk, "bridge")
    await lk.room.update_subscriptions(
        room.UpdateSubscriptionsRequest(
            room="bridge",
            identity="agent",
            track_sids=[t.sid for t in caller.tracks],
            subscribe=True,
        )
    )
    await phone.wait_event("CALL_ESTABLISHED", fail_on=("CALL_CLOSED",))
    return caller


async def test_a_caller_is_transferred_to_another_phone(
    media_server: ServerProcess, tmp_path: Path
) -> None:
    async with client(media_server) as lk:
        await direct_rule(lk)
        async with (
            SignalClient(media_server.url, "bridge", "agent"),
            baresip.phone(tmp_path / "a", codecs="PCMU") as a,
            baresip.phone(tmp_path / "c", codecs="PCMU") as c,
        ):
            caller = await answered_caller(lk, media_server, a)
            started = time.monotonic()
            done = await lk.sip.transfer_sip_participant(
                sip.TransferSIPParticipantRequest(
                    room_name="bridge",
                    participant_identity=caller.identity,
                    transfer_to=f"sip:{c.user}@127.0.0.1:{c.sip_port}",
                    play_dialtone=True,
                )
            )
            assert time.monotonic() - started < 10
            # TransferSIPParticipantResponse: the transfer's id, done, and the final NOTIFY's status
            assert done.transfer_id.startswith("STR_"), done
            assert done.status == sip.SIPTransferStatus.STS_TRANSFER_SUCCESSFUL, done
            assert done.reason == sip.SIPTransferReason.STR_COMPLETED, done
            assert done.sip_status.code == 200, done
            await c.wait_event("CALL_ESTABLISHED", timeout=5)  # A now talks to C

            async def left() -> bool:  # our call with A ends
                return not await sip_participants(lk, "bridge")

            await eventually(left, "the transferred caller to leave", timeout=5)
            await a.hangup()
            await c.wait_event("CALL_CLOSED", timeout=8)
    # the call log has the transfer, done, with the call it moved
    (entry,) = [e for e in await call_log(media_server) if e["from_uri"]["user"] == a.user]
    (transfer,) = entry["transfers"]
    assert transfer["transfer_id"] == done.transfer_id and transfer["call_id"] == entry["call_id"]
    assert transfer["transfer_status"] == "STS_TRANSFER_SUCCESSFUL"
    assert transfer["transfer_to"].startswith(f"sip:{c.user}@")


async def test_a_transfer_the_target_refuses_fails_with_its_status(
    media_server: ServerProcess, tmp_path: Path
) -> None:
    async with client(media_server) as lk:
        await direct_rule(lk)
        async with (
            SignalClient(media_server.url, "bridge", "agent"),
            baresip.phone(tmp_path / "a", codecs="PCMU") as a,
            baresip.phone(tmp_path / "c", codecs="PCMU", answermode="manual") as c,
        ):
            caller = await answered_caller(lk, media_server, a)
            transfer = asyncio.create_task(
                lk.sip.transfer_sip_participant(
                    sip.TransferSIPParticipantRequest(
                        room_name="bridge",
                        participant_identity=caller.identity,
                        transfer_to=f"sip:{c.user}@127.0.0.1:{c.sip_port}",
                    )
                )
            )
            await c.wait_event("CALL_INCOMING", timeout=8)
            await c.hangup()  # C declines the REFERred call
            with pytest.raises(api.SipCallError) as raised:
                await transfer
            assert raised.value.sip_status_code is not None
            assert raised.value.sip_status_code >= 400
            # the original call goes on
            assert [p.identity for p in await sip_participants(lk, "bridge")] == [caller.identity]
            # a second attempt is possible once the first is over; a bad target is refused
            with pytest.raises(api.TwirpError) as bad:
                await lk.sip.transfer_sip_participant(
                    sip.TransferSIPParticipantRequest(
                        room_name="bridge",
                        participant_identity=caller.identity,
                        transfer_to="not a uri",
                    )
                )
            assert bad.value.code == "invalid_argument"
            await a.hangup()
            await a.wait_event("CALL_CLOSED")
