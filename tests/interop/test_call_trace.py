"""A call's SIP trace end to end: sipp calls a `sipbridge serve`, RTP tracing is asked for
while it rings, an agent answers, a few RTP packets come in, sipp hangs up; `sipbridge call
trace` prints the ladder, `sipbridge call pcap` writes a capture file that reads back (and that
`tshark`, when installed, dissects) with every SIP message of the call and the RTP headers.
Unknown calls are a 404 / `not_found` and a clear CLI error."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit import api as livekit_api
from livekit.protocol import room, sip

from sipbridge.server.api.auth import sign_token
from tests.harness import (
    bound,
    client,
    eventually,
    module_server,
    run,
    sip_server_process,
    sipp_args,
    sipp_port,
    stop_cleanly,
)
from tests.helpers import API_KEY, API_SECRET, ServerProcess
from tests.pcap_reader import read_pcap
from tests.signal_client import SignalClient

pytestmark = pytest.mark.skipif(not shutil.which("sipp"), reason="sipp comes with `make test`")
CALLER = "+15550001"
CALLED = "+15105550100"
LADDER = ["INVITE", "100 Trying", "180 Ringing", "200 OK", "ACK", "BYE", "200 OK"]


@pytest.fixture(scope="module")
def sip_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory, "trace", sip=True)


async def cli(server: ServerProcess, *args: str) -> tuple[int, bytes, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env["PYTHONWARNINGS"] = "ignore"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipbridge", *args, "--url", server.url,
        "--api-key", API_KEY, "--api-secret", API_SECRET,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode or 0, out, err.decode(errors="replace")


async def answered_call(
    server: ServerProcess,
    lk: livekit_api.LiveKitAPI,
    while_ringing: Callable[[str], Awaitable[None]],
    while_up: Callable[[str], Awaitable[None]],
) -> str:
    """One inbound call from sipp, answered by an agent, hung up by sipp after 2 s: our call
    id. `while_ringing` and `while_up` run in the call, before and after it is answered."""
    await lk.sip.create_inbound_trunk(
        sip.CreateSIPInboundTrunkRequest(
            trunk=sip.SIPInboundTrunkInfo(name="carrier", numbers=[CALLED])
        )
    )
    await lk.sip.create_dispatch_rule(
        sip.CreateSIPDispatchRuleRequest(
            dispatch_rule=sip.SIPDispatchRuleInfo(
                rule=sip.SIPDispatchRule(
                    dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name="traced")
                )
            )
        )
    )
    async with SignalClient(server.url, "traced", "agent"):
        args = sipp_args(
            "uac_inbound.xml",
            server.sip_port,  # type: ignore[attr-defined]
            hold_ms=2000,
            keys={"caller": CALLER, "called": CALLED, "customer": "c"},
            limit=20,
        )
        call = asyncio.create_task(run(*args, timeout=25))

        async def ringing() -> tuple[str, str] | None:
            listed = await lk.room.list_participants(room.ListParticipantsRequest(room="traced"))
            for p in listed.participants:
                if p.attributes.get("sip.callStatus") == "ringing" and p.tracks:
                    return p.attributes["sip.callID"], p.tracks[0].sid
            return None

        call_id, track = await eventually(ringing, "the caller ringing in the room")
        await while_ringing(call_id)
        await lk.room.update_subscriptions(
            room.UpdateSubscriptionsRequest(
                room="traced", identity="agent", track_sids=[track], subscribe=True
            )
        )
        await while_up(call_id)
        code, out = await call
        assert code == 0, out
    return call_id


def labels(ladder: str) -> list[str]:
    """The arrow labels of a ladder, without request URIs."""
    found = []
    for line in ladder.splitlines():
        if "|" not in line:
            continue
        text = line.split("|")[1].strip("<->").strip(" -")
        found.append(text.split(" sip:")[0])
    return found


def get(server: ServerProcess, path: str, token: str | None) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(server.url + path)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {}
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def api(server: ServerProcess, method: str, path: str) -> Any:
    token = sign_token(API_KEY, API_SECRET, sip={"admin": True})
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, server.url + path, headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


RTP = bytes.fromhex("80000001000000a0deadbeef") + b"\xff" * 160  # PCMU, 20 ms


async def test_trace_and_pcap_of_an_answered_call(sip_server: ServerProcess) -> None:
    sent_from: list[tuple[str, int]] = []

    async def trace_rtp(call_id: str) -> None:  # asked for while the call rings
        assert await api(sip_server, "POST", f"/sipbridge/v1/calls/{call_id}/rtp") == {
            "call_id": call_id,
            "rtp": "traced",
        }

    async def send_rtp(call_id: str) -> None:  # once answered: 5 packets to our RTP port
        async def answer_sdp() -> str | None:
            trace = await api(sip_server, "GET", f"/sipbridge/v1/calls/{call_id}/trace")
            texts = [e["text"] for e in trace["entries"] if e["direction"] == "out"]
            return next((t for t in texts if t.startswith("SIP/2.0 200")), None)

        port = int(re.search(r"m=audio (\d+)", await eventually(answer_sdp, "the 200")).group(1))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            sent_from.append(udp.getsockname())
            for _ in range(5):
                udp.sendto(RTP, ("127.0.0.1", port))

        async def kept() -> bool:
            trace = await api(sip_server, "GET", f"/sipbridge/v1/calls/{call_id}/trace")
            return bool(trace["rtp_packets"] >= 5)

        await eventually(kept, "the RTP headers in the trace")

    async with client(sip_server) as lk:
        call_id = await answered_call(sip_server, lk, trace_rtp, send_rtp)

    async def whole_trace() -> tuple[int, bytes, str] | None:
        result = await cli(sip_server, "call", "trace", call_id)
        # the final 200 to sipp's BYE leaves just after sipp exits: wait for it to be there
        return result if result[1].decode().count("200 OK") == 2 else None

    code, out, err = await eventually(whole_trace, "the trace to show the BYE's 200")
    text = out.decode()
    assert code == 0, err
    assert f"call {call_id} Call-ID " in text
    assert labels(text) == LADDER, text
    sip_call_id = text.split("Call-ID ", 1)[1].split()[0]

    code, raw, err = await cli(sip_server, "call", "trace", sip_call_id, "--json")
    assert code == 0, err
    data = json.loads(raw)
    assert data["names"] == [call_id] and data["dropped"] == 0
    assert [e["direction"] for e in data["entries"]] == [
        "in",
        "out",
        "out",
        "out",
        "in",
        "in",
        "out",
    ]

    assert data["rtp_packets"] >= 5

    code, pcap, err = await cli(sip_server, "call", "pcap", call_id)
    assert code == 0, err
    everything = read_pcap(pcap)
    packets = [p for p in everything if not p.original_length]  # SIP, whole
    assert [p.payload for p in packets] == [e["text"].encode() for e in data["entries"]]
    rtp = [p for p in everything if p.source == sent_from[0]]  # ours: headers only
    assert [(p.payload, p.original_length) for p in rtp] == [(RTP[:12], len(RTP))] * 5
    port = sip_server.sip_port  # type: ignore[attr-defined]
    assert packets[0].destination == ("127.0.0.1", port) and packets[0].protocol == "udp"
    assert packets[1].source == ("127.0.0.1", port)
    if shutil.which("tshark"):
        path = Path(sip_server.db).parent / "call.pcap"
        path.write_bytes(pcap)
        code, out_text = await run(
            "tshark", "-r", str(path), "-Y", "sip", "-T", "fields", "-e", "sip.Call-ID",
            timeout=30,
        )  # fmt: skip
        assert code == 0, out_text
        rows = [line for line in out_text.splitlines() if line and "Running as" not in line]
        assert rows == [sip_call_id] * len(LADDER), out_text
        # the RTP from the SDP in the same capture: Wireshark follows it without being told
        code, out_text = await run(
            "tshark", "-r", str(path), "-Y", "rtp.ssrc == 0xdeadbeef", "-T", "fields",
            "-e", "rtp.seq", timeout=30,
        )  # fmt: skip
        assert code == 0, out_text
        assert [x for x in out_text.splitlines() if x.isdigit()] == ["1"] * 5, out_text


async def test_unknown_calls_are_not_found(sip_server: ServerProcess) -> None:
    code, out, err = await cli(sip_server, "call", "trace", "SCL_nosuchcall")
    assert code == 1 and out == b""
    assert "sipbridge call trace: not_found: no SIP trace for call 'SCL_nosuchcall'" in err
    code, out, err = await cli(sip_server, "call", "pcap", "no/such@call")
    assert code == 1 and out == b"" and "not_found" in err
    code, out, err = await cli(sip_server, "call", "rtp", "SCL_nosuchcall")
    assert code == 1 and "not_found: no live call 'SCL_nosuchcall'" in err

    admin = sign_token(API_KEY, API_SECRET, sip={"admin": True})
    status, body = get(sip_server, "/sipbridge/v1/calls/SCL_nosuchcall/pcap", admin)
    assert status == 404 and body["code"] == "not_found"
    status, body = get(sip_server, "/sipbridge/v1/calls/SCL_nosuchcall/trace", None)
    assert status == 401 and body["code"] == "unauthenticated"
    no_grant = sign_token(API_KEY, API_SECRET, video={"roomList": True})
    status, body = get(sip_server, "/sipbridge/v1/calls/SCL_nosuchcall/trace", no_grant)
    assert status == 403 and body["code"] == "permission_denied"


@pytest.fixture
def rtp_server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = sip_server_process(tmp_path, "--trace-rtp", "all")
    proc.start()
    yield proc
    stop_cleanly(proc)


async def test_a_trunk_flag_traces_rtp_from_the_first_invite(rtp_server: ServerProcess) -> None:
    port = sipp_port()
    args = sipp_args("uas_answer_hangup.xml", port=port, limit=20)
    carrier = asyncio.create_task(run(*args, timeout=25))
    await eventually(lambda: bound(port) or carrier.done(), "sipp listening")
    async with client(rtp_server) as lk:
        trunk = await lk.sip.create_outbound_trunk(
            sip.CreateSIPOutboundTrunkRequest(
                trunk=sip.SIPOutboundTrunkInfo(
                    name="carrier", address=f"127.0.0.1:{port}", numbers=[CALLER]
                )
            )
        )
        participant = await lk.sip.create_sip_participant(
            sip.CreateSIPParticipantRequest(
                sip_trunk_id=trunk.sip_trunk_id,
                sip_call_to=CALLED,
                room_name="out",
                participant_identity="phone",
                wait_until_answered=True,
            )
        )
    # its media was set up before its INVITE left: the trace opened then has the INVITE
    path = f"/sipbridge/v1/calls/{participant.sip_call_id}/trace"
    trace = await api(rtp_server, "GET", path)
    assert trace["rtp_traced"] is True
    first = trace["entries"][0]
    assert first["direction"] == "out" and first["text"].startswith("INVITE sip:")
    ours = int(re.search(r"m=audio (\d+)", first["text"]).group(1))  # type: ignore[union-attr]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(RTP, ("127.0.0.1", ours))

    async def kept() -> bool:
        return bool((await api(rtp_server, "GET", path))["rtp_packets"] >= 1)

    await eventually(kept, "the RTP header in the trace")
    code, out = await carrier  # it hangs up 1.5 s after answering
    assert code == 0, out
