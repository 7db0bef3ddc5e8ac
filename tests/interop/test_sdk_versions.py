"""The official Python realtime SDK (`livekit`) at two releases against a real phone.

`livekit-agents` pins one release of `livekit` (the one in .venv); users who write their own
clients take the newest (in .venv-sdk-newest, built by `make test` from
tests/sdk-newest-requirements.txt). Each runs tests/sdk_client.py inside a network namespace
(libwebrtc ignores loopback; WIRE.md s6) while a baresip phone calls a direct-rule room: the SDK
sees the caller as the seed page says (kind SIP, the `sip.*` attributes), hears the phone and is
heard by it (`windows_heard` >= 0.8 each way), gets the phone's keys as `sip_dtmf_received` and
sends its own with `publish_dtmf`, which reach the phone as RFC 4733 events.
The newest release also joins with two peer connections (`/rtc`, sdk_client.py --two-pc:
`single_peer_connection=False`), as test_webrtc.py does with the pinned one.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import room, sip

from tests import baresip, netns
from tests.audio import distinct_signal, read_wav, write_wav
from tests.harness import eventually
from tests.helpers import API_KEY, API_SECRET, ServerProcess
from tests.interop.test_webrtc import heard_each_other
from tests.sdk_run import SdkRun, sdk_command

ROOT = Path(__file__).parents[2]
pytestmark = [
    # real time: alone after the parallel tests (the Makefile, `-m serial`)
    pytest.mark.serial,
    pytest.mark.skipif(not shutil.which("baresip"), reason="baresip comes with `make test`"),
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
]

PHONE_LEAD_S = 1.5  # the phone's silence after the answer: the SDK's jitter buffer settles
PHONE_TALK_S = 3.0  # twelve quarter seconds: one lost to a jitter-buffer shift costs 8 %
SDK_TALK_S = 3.0


def pinned(path: Path, package: str) -> str:
    """The version `package==X` is pinned to in `path` (pyproject.toml or a requirements file)."""
    match = re.search(rf'^\s*"?{re.escape(package)}==([^"\s,]+)', path.read_text(), re.M)
    assert match, f"no {package}== pin in {path}"
    return match.group(1)


@dataclass(frozen=True)
class Sdk:
    """An interpreter with one release of the `livekit` package."""

    name: str
    python: Path
    version: str
    options: tuple[str, ...] = ()  # sdk_client.py options: how it joins


SDKS = [
    # the release livekit-agents pins, installed with it in the project's venv
    Sdk("agents-pin", Path(sys.executable), pinned(ROOT / "pyproject.toml", "livekit")),
    Sdk(
        "newest",
        ROOT / ".venv-sdk-newest" / "bin" / "python",
        pinned(ROOT / "tests" / "sdk-newest-requirements.txt", "livekit"),
    ),
    # and with the two peer connections on `/rtc` (single_peer_connection=False)
    Sdk(
        "newest-two-pc",
        ROOT / ".venv-sdk-newest" / "bin" / "python",
        pinned(ROOT / "tests" / "sdk-newest-requirements.txt", "livekit"),
        ("--two-pc",),
    ),
]


def seconds_recorded(path: Path) -> float:
    """How much sdk_client.py has recorded so far: it writes a 44-byte header (whose sizes are
    those of its first frame until it closes the file) and flushes 48 kHz 16-bit mono frames."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0.0
    return max(0, size - 44) / (2 * 48000)


@pytest.mark.parametrize("sdk", SDKS, ids=[f"{s.name}-{s.version}" for s in SDKS])
async def test_the_sdk_hears_the_phone_is_heard_and_trades_keys(
    sdk: Sdk, rtc_server: ServerProcess, namespace: netns.VethNamespace, tmp_path: Path
) -> None:
    if not sdk.python.exists():
        pytest.skip(f"{sdk.python.parent.parent.name} comes with `make test` (make sdk-newest)")
    async with api.LiveKitAPI(url=rtc_server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        rule = await lk.sip.create_dispatch_rule(
            sip.CreateSIPDispatchRuleRequest(
                dispatch_rule=sip.SIPDispatchRuleInfo(
                    rule=sip.SIPDispatchRule(
                        dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name="versions")
                    )
                )
            )
        )
    sent = distinct_signal(sdk.name, 48000, SDK_TALK_S, pad_s=0.5, top_hz=3400.0)
    write_wav(tmp_path / "sdk.wav", sent, 48000)
    heard = tmp_path / "sdk_heard.wav"
    async with baresip.phone(
        tmp_path / "phone",
        codecs="PCMU",
        top_hz=3400.0,
        lead_s=PHONE_LEAD_S,
        signal_s=PHONE_TALK_S,
    ) as phone:
        await phone.dial(f"sip:versions@127.0.0.1:{rtc_server.sip_port}")  # type: ignore[attr-defined]
        await phone.wait_event("CALL_RINGING", fail_on=("CALL_CLOSED",))
        proc = await asyncio.create_subprocess_exec(
            *sdk_command(
                namespace,
                rtc_server.port,
                "sdk",
                "versions",
                "--record",
                str(heard),
                "--publish",
                str(tmp_path / "sdk.wav"),
                "--publish-after-record",
                "--publish-when-subscribed",
                "--dtmf",
                "*5",
                "--dtmf-after-publish",
                "--dtmf-delay",
                "0.2",
                "--seconds",
                "15",  # a bound: it leaves when removed from the room below
                *sdk.options,
                python=str(sdk.python),
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        client = SdkRun(proc)
        try:
            # answered once the SDK subscribed to the phone's track
            await phone.wait_event("CALL_ESTABLISHED", timeout=15, fail_on=("CALL_CLOSED",))
            # what the phone said has reached the SDK's recording
            await eventually(
                lambda: seconds_recorded(heard) >= PHONE_LEAD_S + PHONE_TALK_S + 0.5,
                "the SDK to record the phone's signal",
                timeout=10,
            )
            await phone.send_dtmf("12#")
            await eventually(
                lambda: len(client.of("sip_dtmf_received")) >= 3, "the phone's keys at the SDK"
            )
            # the SDK's keys, sent once its signal has played out
            got = await phone.wait_dtmf("*5", timeout=10)
            await phone.hang_up_and_stop()
            phone_heard, phone_rate = read_wav(phone.recorded())
            async with api.LiveKitAPI(
                url=rtc_server.url, api_key=API_KEY, api_secret=API_SECRET
            ) as lk:
                await lk.room.remove_participant(
                    room.RoomParticipantIdentity(room="versions", identity="sdk")
                )
        finally:
            code = await client.finish(tmp_path / f"sdk-{sdk.name}.log")
    events = client.events
    assert code == 0, (events, (tmp_path / f"sdk-{sdk.name}.log").read_text()[-3000:])
    (connected,) = client.of("connected")
    assert connected["sdk_version"] == sdk.version
    # The seed page: `participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP` and the
    # `sip.*` attributes, as the SDK presents them
    (caller,) = connected["participants"]
    assert caller["kind"] == "PARTICIPANT_KIND_SIP", caller
    attributes = dict(caller["attributes"])
    statuses = [attributes["sip.callStatus"]]
    for changed in client.of("participant_attributes_changed"):
        if changed["identity"] == caller["identity"]:
            attributes = changed["attributes"]
            statuses.append(attributes["sip.callStatus"])
    assert attributes["sip.phoneNumber"] == phone.user, attributes
    assert attributes["sip.trunkPhoneNumber"] == "versions", attributes
    assert attributes["sip.ruleID"] == rule.sip_dispatch_rule_id, attributes
    assert attributes["sip.callID"], attributes
    # its subscription answered the call (the SDK may apply that change before it reports the
    # room it joined: "ringing" is not always seen); then the phone hung up
    assert "active" in statuses and statuses[-1] == "hangup", statuses
    # keys both ways
    digits = client.of("sip_dtmf_received")
    assert "".join(e["digit"] for e in digits) == "12#", events
    assert {e["identity"] for e in digits} == {caller["identity"]}, digits
    assert got == "*5"
    # audio both ways, per quarter second (a jitter buffer that shifts time once keeps the rest)
    heard_each_other(phone, heard, sent, phone_heard, phone_rate)
