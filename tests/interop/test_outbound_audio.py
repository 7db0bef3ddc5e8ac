"""Outbound call audio with a real phone: baresip B is dialled through an outbound trunk into a
room where baresip A already called in; each hears the other (correlation above 0.9), the
request's `dtmf` string reaches B after the answer, B's keys reach A through the room, and
SendData DTMF reaches B. B hangs up; the room sees its participant leave."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
from livekit import api
from livekit.protocol import models, room, sip

from sipbridge.media import codecs
from tests import baresip
from tests.audio import read_wav, tone_ratio
from tests.harness import client, eventually, sipp_port
from tests.helpers import ServerProcess
from tests.interop.test_call_audio import direct_rule, heard, target, wait_participants
from tests.interop.test_outbound import carrier
from tests.interop.test_sip_tls import make_certificate
from tests.signal_client import SignalClient

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
            await asyncio.sleep(4.5)  # the conversation itself: both 3 s signals pass
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

            async def left() -> bool:
                listed = await lk.room.list_participants(
                    room.ListParticipantsRequest(room="bridge")
                )
                return created.participant_identity not in {p.identity for p in listed.participants}

            await eventually(left, "the dialled participant to leave", timeout=5)
            await a.hangup()
            await a.wait_event("CALL_CLOSED")
            await a.stop()
            await b.stop()
            a_to_b, b_to_a = heard(b, a), heard(a, b)
    assert a_to_b > 0.9, f"B heard A at {a_to_b:.3f}"
    assert b_to_a > 0.9, f"A heard B at {b_to_a:.3f}"


async def test_a_phone_dialled_over_tls(tmp_path: Path) -> None:
    """The trunk is TLS: the server opens a TLS connection to the phone, checks its certificate
    against `--tls-ca`, and the call carries audio; our hangup goes over the same connection.
    A server that does not trust the certificate fails the call as a trunk failure."""
    cert, key = make_certificate(tmp_path)
    combined = tmp_path / "phone.pem"
    combined.write_text(cert.read_text() + key.read_text())
    port = sipp_port()
    server = ServerProcess(
        tmp_path,
        "--sip",
        f"127.0.0.1:{port}",
        "--rtp-ports",
        "14000-14999",
        "--tls-ca",
        str(cert),
    )
    server.start()
    try:
        async with (
            client(server) as lk,
            baresip.phone(tmp_path / "b", codecs="PCMU", top_hz=3400.0, cert=combined) as b,
        ):
            trunk = await lk.sip.create_outbound_trunk(
                sip.CreateSIPOutboundTrunkRequest(
                    trunk=sip.SIPOutboundTrunkInfo(
                        name="tls",
                        address=f"127.0.0.1:{b.sip_port + 1}",
                        transport=sip.SIPTransport.SIP_TRANSPORT_TLS,
                        numbers=["+15550100"],
                    )
                )
            )
            async with SignalClient(server.url, "secure", "agent"):
                created = await lk.sip.create_sip_participant(
                    sip.CreateSIPParticipantRequest(
                        sip_trunk_id=trunk.sip_trunk_id,
                        sip_call_to=b.user,
                        room_name="secure",
                        wait_until_answered=True,
                    )
                )
                await b.wait_event("CALL_ESTABLISHED", fail_on=("CALL_CLOSED",))

                async def heard_us() -> baresip.AudioStats | None:
                    stats = await b.audio_stats()
                    return stats if stats.rx_packets > 10 else None

                stats = await eventually(heard_us, "our RTP to reach the phone", timeout=5)
                await lk.room.remove_participant(
                    room.RoomParticipantIdentity(
                        room="secure", identity=created.participant_identity
                    )
                )
                await b.wait_event("CALL_CLOSED", timeout=8)
        assert stats.codec == "PCMU" and stats.rx_packets > 10, stats  # our RTP reached it
    finally:
        assert server.stop() == 0, server.log.read_text()


async def test_an_untrusted_tls_trunk_is_a_trunk_failure(
    media_server: ServerProcess, tmp_path: Path
) -> None:
    cert, key = make_certificate(tmp_path)
    combined = tmp_path / "phone.pem"
    combined.write_text(cert.read_text() + key.read_text())
    async with (
        client(media_server) as lk,
        baresip.phone(tmp_path / "b", codecs="PCMU", cert=combined) as b,
    ):
        trunk = await lk.sip.create_outbound_trunk(
            sip.CreateSIPOutboundTrunkRequest(
                trunk=sip.SIPOutboundTrunkInfo(
                    name="tls",
                    address=f"127.0.0.1:{b.sip_port + 1}",
                    transport=sip.SIPTransport.SIP_TRANSPORT_TLS,
                    numbers=["+15550100"],
                )
            )
        )
        with pytest.raises(api.SipCallError) as raised:
            await lk.sip.create_sip_participant(
                sip.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk.sip_trunk_id,
                    sip_call_to=b.user,
                    room_name="secure",
                    wait_until_answered=True,
                )
            )
        assert raised.value.sip_status_code == 503
        assert not [e for e in b.events if e.get("type") == "CALL_INCOMING"]


def mulaw_tone(path: Path, freq: float, seconds: float) -> Path:
    """Raw 8 kHz mu-law of a tone at half scale (what sipp's rtp_stream sends)."""
    t = np.arange(int(8000 * seconds)) / 8000
    pcm = (np.sin(2 * np.pi * freq * t) * 16000).astype(np.int16)
    path.write_bytes(codecs.ulaw_encode_array(pcm))
    return path


async def test_ringback_while_dialling_then_the_carriers_early_media(
    media_server: ServerProcess, tmp_path: Path
) -> None:
    """play_dialtone: the room hears 425 Hz ringback from the dialled participant's track while
    the call rings; a 183 with SDP then brings the carrier's own audio (a 1 kHz tone here)
    before the answer."""
    early = mulaw_tone(tmp_path / "early.ul", 1000.0, 2.0)
    async with client(media_server) as lk:
        await direct_rule(lk)
        async with baresip.phone(tmp_path / "a", codecs="PCMU") as a:
            fill = {"early_audio": str(early)}
            async with carrier("uas_early_media.xml", fill=fill) as (port, sipp_task):
                trunk = await lk.sip.create_outbound_trunk(
                    sip.CreateSIPOutboundTrunkRequest(
                        trunk=sip.SIPOutboundTrunkInfo(
                            name="early", address=f"127.0.0.1:{port}", numbers=["+15550100"]
                        )
                    )
                )
                await a.dial(target(media_server))
                await a.wait_event("CALL_RINGING", fail_on=("CALL_CLOSED",))
                created = await lk.sip.create_sip_participant(
                    sip.CreateSIPParticipantRequest(
                        sip_trunk_id=trunk.sip_trunk_id,
                        sip_call_to="+15551234",
                        room_name="bridge",
                        play_dialtone=True,
                        wait_until_answered=True,
                    )
                )
                # Half a second of the answered call before the room ends it: part of what A's
                # recording covers, not a wait for something.
                await asyncio.sleep(0.5)
                await lk.room.remove_participant(
                    room.RoomParticipantIdentity(
                        room="bridge", identity=created.participant_identity
                    )
                )
                code, out = await sipp_task
                assert code == 0, out
            await a.hangup()
            await a.wait_event("CALL_CLOSED")
            await a.stop()
            heard, rate = read_wav(a.recorded())
    # A was answered when the dialled participant joined: first the ringback (1 s on from the
    # start of its cadence), then, after the 183, the carrier's 1 kHz
    first = heard[int(0.2 * rate) : int(0.9 * rate)]
    assert tone_ratio(first, rate, 425.0) > 0.8, tone_ratio(first, rate, 425.0)
    windows = [heard[i : i + rate // 2] for i in range(0, len(heard) - rate // 2, rate // 4)]
    assert any(tone_ratio(w, rate, 1000.0) > 0.8 for w in windows), "no early media heard"
