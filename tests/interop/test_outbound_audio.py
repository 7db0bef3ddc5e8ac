"""Outbound call audio with a real phone: baresip B is dialled through an outbound trunk into a
room where baresip A already called in; each hears the other (correlation above 0.9), the
request's `dtmf` string reaches B after the answer, B's keys reach A through the room, and
SendData DTMF reaches B. B hangs up; the room sees its participant leave."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from livekit.protocol import models, room, sip

from tests import baresip
from tests.helpers import ServerProcess
from tests.interop.test_call_audio import client, direct_rule, heard, target, wait_participants

pytestmark = pytest.mark.skipif(
    not shutil.which("baresip"), reason="baresip comes with `make test`"
)


async def test_a_dialled_phone_talks_with_the_room(
    media_server: ServerProcess, tmp_path: Path
) -> None:
    async with client(media_server) as lk:
        await direct_rule(lk)
        async with (
            # A talks once B's DTMF string is over (events replace audio while they play)
            baresip.phone(tmp_path / "a", codecs="PCMU", top_hz=3400.0, lead_s=2.0) as a,
            baresip.phone(tmp_path / "b", codecs="PCMA", top_hz=3400.0, lead_s=0.5) as b,
        ):
            trunk = await lk.sip.create_outbound_trunk(
                sip.CreateSIPOutboundTrunkRequest(
                    trunk=sip.SIPOutboundTrunkInfo(
                        name="to b", address=f"127.0.0.1:{b.sip_port}", numbers=["+15550100"]
                    )
                )
            )
            await a.dial(target(media_server))
            await a.wait_event("CALL_RINGING", fail_on=("CALL_CLOSED",))
            created = await lk.sip.create_sip_participant(
                sip.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk.sip_trunk_id,
                    sip_call_to=b.user,
                    room_name="bridge",
                    dtmf="1w#",
                    wait_until_answered=True,
                )
            )
            await b.wait_event("CALL_ESTABLISHED", fail_on=("CALL_CLOSED",))
            await a.wait_event("CALL_ESTABLISHED", fail_on=("CALL_CLOSED",))  # someone to talk to
            assert await b.wait_dtmf("1#", timeout=8) == "1#"  # the dtmf string, then active
            members = await wait_participants(lk, "bridge", 2)
            assert created.participant_identity in {p.identity for p in members}
            await asyncio.sleep(4.5)  # both signals pass
            await b.send_dtmf("57")  # B's keys: a sip_dtmf packet from its participant, to A
            assert await a.wait_dtmf("57", timeout=8) == "57"
            await lk.room.send_data(
                room.SendDataRequest(
                    room="bridge",
                    data=b"9",
                    kind=models.DataPacket.Kind.RELIABLE,
                    destination_identities=[created.participant_identity],
                    topic="sip_dtmf",
                )
            )
            assert await b.wait_dtmf("9", timeout=8) == "9"
            await b.hangup()  # the dialled side ends: its participant leaves, A stays
            await b.wait_event("CALL_CLOSED")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while created.participant_identity in {
                p.identity
                for p in (
                    await lk.room.list_participants(room.ListParticipantsRequest(room="bridge"))
                ).participants
            }:
                assert loop.time() < deadline, "the dialled participant did not leave"
                await asyncio.sleep(0.1)
            await a.hangup()
            await a.wait_event("CALL_CLOSED")
            await a.stop()
            await b.stop()
            a_to_b, b_to_a = heard(b, a), heard(a, b)
    assert a_to_b > 0.9, f"B heard A at {a_to_b:.3f}"
    assert b_to_a > 0.9, f"A heard B at {b_to_a:.3f}"
