"""The web console (`console/`, served at /console) used as a person would, in Debian's Chromium
driven by playwright-core (tests/browser/console_driver.mjs), against a real server and a phone
calling in from "Twilio" (sipp tests/interop/sipp/uac_browser.xml for its signalling, this test
for its RTP, as in test_browser.py):

- sign-in: a wrong secret first (the form says so), then the right one;
- live: the call appears with its kind and `sip.*` attributes (the Twilio call SID), its
  `sip.callStatus` going ringing -> active, and hangup once it is hung up;
- listening in: the page joins the room hidden and its level meter (WebAudio) hears the phone's
  tone; talking: it publishes Chromium's fake microphone and the phone hears it; DTMF from the
  page's keypad reaches the phone as RFC 4733 events;
- the call's page: its SIP ladder (expandable messages), its quality over time, its pcap;
- configuration: a trunk refused by the server with the error at the field, then created;
- nodes.

Everything runs in one network namespace with only `lo` (tests/netns.py). Screenshots of each
page go to artifacts/console/ (or $SIPBRIDGE_ARTIFACTS/console/), which git ignores.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import numpy as np
import pytest
from livekit import api
from livekit.protocol import sip

from sipbridge.server.console_web import CONSOLE_DIST
from tests import baresip, netns
from tests.chromium import CHROMIUM, INSTALLED, NODE, DriverProcess
from tests.harness import client, eventually, leave_clean, sipp
from tests.helpers import (
    API_KEY,
    API_SECRET,
    ServerProcess,
    free_port,
    token,
)
from tests.interop.conftest import loopback_rtc_server
from tests.interop.test_browser import (
    LEVEL_DBFS,
    TWILIO_CALL_SID,
    PhoneMedia,
    dbfs,
    route_to_room,
)
from tests.interop.test_call_audio import direct_rule
from tests.interop.test_transfer import answered_caller
from tests.redis_server import redis_server, require_redis_server
from tests.signal_client import SignalClient

ROOT = Path(__file__).parents[2]
# How long the phone stays up once answered before it hangs up (BYE): everything the console does
# with the live call (hear it, talk, DTMF) must fit, with room for a loaded machine.
HOLD_MS = 15_000
ARTIFACTS = Path(os.environ.get("SIPBRIDGE_ARTIFACTS", ROOT / "artifacts")) / "console"
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium comes with `make test`"),
    pytest.mark.skipif(
        NODE is None or not INSTALLED,
        reason="node and `npm ci` in tests/browser: `make test`",
    ),
    pytest.mark.skipif(
        not (CONSOLE_DIST / "index.html").is_file(), reason="the console is built by `make test`"
    ),
    pytest.mark.skipif(not shutil.which("sipp"), reason="sipp comes with `make test`"),
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
]


class Chromium(DriverProcess):
    """console_driver.mjs: one page of Chromium, commands answered by id."""

    def __init__(self, log: Path) -> None:
        self.replies: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        super().__init__("console_driver.mjs", log)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("ab") as log:
            for raw in self.proc.stdout:
                log.write(raw)
                with contextlib.suppress(ValueError):
                    message = json.loads(raw)
                    with self._cond:
                        if "id" in message:
                            self.replies[message["id"]] = message
                        else:
                            self.events.append(message)
                        self._cond.notify_all()

    def _call(self, command: dict[str, Any], timeout: float) -> Any:
        number = next(self._ids)
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"id": number, **command}) + "\n").encode())
        self.proc.stdin.flush()
        with self._cond:
            if not self._cond.wait_for(lambda: number in self.replies, timeout):
                raise AssertionError(f"the browser did not answer {command}")
            reply = self.replies.pop(number)
        if "error" in reply:
            raise AssertionError(f"{command['cmd']} failed: {reply['error']}\n{self.errors()}")
        return reply["ok"]

    async def do(self, cmd: str, timeout: float = 20, **args: Any) -> Any:
        """One command, off the event loop (the phone's RTP runs on it)."""
        return await asyncio.to_thread(self._call, {"cmd": cmd, **args}, timeout)

    async def js(self, script: str) -> Any:
        return await self.do("eval", js=script)

    async def until(self, script: str, what: str, timeout: float = 10) -> Any:
        """Poll a JS expression in the page until it is truthy; its value."""
        return await eventually(lambda: self.js(script), what, timeout=timeout)

    async def shot(self, name: str) -> Path:
        """A screenshot of the page, after checking that each of its form controls has a label
        and each button a name (what a screen reader announces)."""
        unlabelled = await self.js(
            "[...document.querySelectorAll('input, select, button, meter')]"
            ".filter(e => e.type !== 'hidden' && !(e.labels?.length || e.getAttribute('aria-label')"
            " || (e.tagName === 'BUTTON' && e.textContent.trim()))).map(e => e.outerHTML)"
        )
        assert not unlabelled, f"{name}: controls without a label: {unlabelled}"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.do("screenshot", path=str(path))
        return path

    def ready(self) -> str:
        with self._cond:
            self._cond.wait_for(lambda: any("ready" in e or "error" in e for e in self.events), 30)
            found = [e for e in self.events if "ready" in e or "error" in e]
        assert found and "ready" in found[0], f"driver did not start: {found}"
        return str(found[0]["ready"]["chromium"])

    def errors(self) -> list[str]:
        with self._cond:
            return [e["pageerror"] for e in self.events if "pageerror" in e]


@pytest.fixture(scope="module")
def loopback() -> Iterator[str]:
    with netns.loopback_namespace() as name:
        yield name


@pytest.fixture(scope="module")
def server(loopback: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from loopback_rtc_server(tmp_path_factory.mktemp("server"))


@pytest.fixture(scope="module")
def chromium(loopback: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # this run's screenshots only
    driver = Chromium(tmp_path_factory.mktemp("console") / "driver.log")
    try:
        print(f"\nchromium {driver.ready()}")
        yield driver
    finally:
        driver.close()


async def refused_at(page: Chromium, field: str, what: str) -> str:
    """Submit the editor form: the validation error it shows then at its input `field` (marked
    invalid, the message beside it), waited for as "the validation error at `what`"."""
    await page.do("click", selector="form.editor button[type=submit]")
    error = await page.until(
        f"(() => {{ const i = document.querySelector('form.editor input[name={field}]');"
        " return i.getAttribute('aria-invalid') === 'true' &&"
        " document.getElementById(i.id + '-error').textContent })()",
        f"the validation error at {what}",
    )
    return str(error)


async def sign_in(page: Chromium, server: ServerProcess, *, wrong_first: bool = True) -> None:
    await page.do("goto", url=f"{server.url}/console/")
    await page.until("document.querySelector('form.sign-in') !== null", "the sign-in form")
    await page.do("fill", selector="input[name=key]", value=API_KEY)
    if wrong_first:
        await page.shot("01-sign-in")
        await page.do("fill", selector="input[name=secret]", value="not-the-secret")
        await page.do("click", selector="form.sign-in button[type=submit]")
        refused = await page.until(
            "document.getElementById('sign-in-error')?.textContent", "the sign-in error"
        )
        assert "wrong API key or secret" in refused, refused
        assert await page.js("document.getElementById('nav').hidden") is True
        await page.shot("02-sign-in-refused")
    await page.do("fill", selector="input[name=secret]", value=API_SECRET)
    await page.do("click", selector="form.sign-in button[type=submit]")
    await page.until(
        "!document.getElementById('nav').hidden && document.getElementById('live-status')"
        "?.textContent.startsWith('Live')",
        "the live view after signing in",
    )


# What the listening page has, for a failure: its meter's last reading, the panel's state and
# each audio element's (a remote track reaches WebAudio only while an element plays it).
HEARING = (
    "JSON.stringify({dbfs: document.getElementById('level')?.dataset.dbfs,"
    " panel: {...(document.getElementById('level')?.closest('[data-room]')?.dataset ?? {})},"
    " audio: [...document.querySelectorAll('audio')].map(e => ({paused: e.paused,"
    " ready: e.readyState, muted: e.muted, tracks: e.srcObject ? e.srcObject.getTracks()"
    ".map(t => [t.readyState, t.muted, t.enabled]) : null}))})"
)


@pytest.mark.serial  # real time: alone after the parallel tests
async def test_console(server: ServerProcess, chromium: Chromium) -> None:
    page = chromium
    started = time.monotonic()
    await sign_in(page, server)

    # a call from "Twilio" into a room of its own
    tag = uuid.uuid4().hex[:8]
    room_name, number = f"console-{tag}", f"+1510{int(tag, 16) % 10**7:07d}"
    await route_to_room(server, number, room_name)
    loop = asyncio.get_running_loop()
    rtp_port = free_port(socket.SOCK_DGRAM)
    transport, media = await loop.create_datagram_endpoint(
        PhoneMedia, local_addr=("127.0.0.1", rtp_port)
    )
    phone_dir = server.log.parent / f"phone-{tag}"
    phone_dir.mkdir()
    keys = {"caller": "+15105550199", "called": number, "callsid": TWILIO_CALL_SID}
    phone = asyncio.create_task(
        sipp(
            "uac_console.xml",
            server.sip_port,  # type: ignore[attr-defined]
            keys={**keys, "rtp_port": str(rtp_port)},
            hold_ms=HOLD_MS,
            limit=90,
            extra=["-trace_msg", "-message_file", str(phone_dir / "messages.log")],
        )
    )
    talk: asyncio.Task[None] | None = None
    here = f"#rooms tr[data-kind=sip][data-room='{room_name}']"
    try:
        # live: the call rings in its room (it is answered once someone hears it)
        await page.until(
            f"document.querySelector(\"{here}\")?.dataset.callStatus === 'ringing'",
            "the call ringing in the live view",
        )
        attributes = await page.js(
            f'Object.fromEntries([...document.querySelectorAll("{here} dl.attributes dt")]'
            ".map(dt => [dt.textContent, dt.nextElementSibling.textContent]))"
        )
        assert attributes["sip.twilio.callSid"] == TWILIO_CALL_SID, attributes
        assert attributes["sip.phoneNumber"] == "+15105550199", attributes
        assert attributes["sip.trunkPhoneNumber"] == number, attributes
        call_id = attributes["sip.callID"]
        await page.shot("03-live-ringing")

        # listen in, hidden: the page subscribes to the caller, so the call is answered; it
        # turns active, and the level meter hears the phone's -12 dBFS tone
        await page.do("click", selector=f".listen-in[data-room='{room_name}']")
        talk = asyncio.create_task(media.talk(phone_dir / "messages.log"))
        history = await page.until(
            f"document.querySelector(\"{here}\")?.dataset.callStatus === 'active' && "
            f'document.querySelector("{here}").dataset.statusHistory',
            "the call active in the live view",
        )
        assert history == "ringing active", history
        print(f"live: {call_id} ringing -> active, {len(attributes)} sip.* attributes")
        seen: list[str] = []  # what the page had while waiting, a look a second

        async def meter() -> float | None:
            if not seen or len(seen) < (time.monotonic() - waited) + 1:
                seen.append(f"{time.monotonic() - waited:.1f} s: {await page.js(HEARING)}")
            return cast(
                "float | None",
                await page.js(
                    "(() => { const d = Number(document.getElementById('level')?.dataset.dbfs);"
                    " return d > -30 ? d : null })()"
                ),
            )

        waited = time.monotonic()
        try:
            level = await eventually(meter, "the listener's meter to hear the phone", timeout=20)
        except AssertionError as e:
            looks = "\n".join(seen)
            raise AssertionError(f"{e}\npage:\n{looks}\nserver: {server.log_tail(3000)}") from None
        print(f"listening: the page heard the phone at {level:.1f} dBFS")
        await page.until(
            f"document.querySelector(\"{here}\")?.classList.contains('speaking')",
            "the phone shown speaking",
        )
        assert abs(level - LEVEL_DBFS) < 6, level
        # the hidden listener is not in the room's list, and the phone heard nothing from it
        assert await page.js(f'document.querySelectorAll("{here}").length') == 1
        quiet = dbfs(media.recent(1.0))
        assert quiet < -60, quiet
        await eventually(
            lambda: page.js(
                f"document.querySelector(\"{here} td.quality\")?.textContent.startsWith('MOS')"
            ),
            "the call's running quality in the live view",
            timeout=15,
        )
        await page.shot("03-live-listening")

        # talk: Chromium's fake microphone (a beep) goes to the phone
        await page.do("click", selector=f".talk[data-room='{room_name}']")
        await page.until(
            "document.querySelector('.listen')?.dataset.state === 'connected' && "
            "document.querySelector('.listen').dataset.mode === 'talk'",
            "the page talking",
            timeout=20,
        )

        def phone_hears() -> float | None:
            frames = media.heard[-100:]  # the last 2 s, frame by frame
            loudest = max((dbfs(np.asarray(f)) for f in frames), default=-200.0)
            return loudest if loudest > -40 else None

        heard = await eventually(phone_hears, "the phone to hear the console", timeout=20)
        print(f"talking: the phone heard the console at {heard:.1f} dBFS (loudest 20 ms)")
        await page.do("click", selector=".keypad button[data-digit='5']")
        await eventually(lambda: 5 in media.digits, "the console's DTMF 5 at the phone")
        # the phone's keys (RFC 4733) are shown on the page, as the room's sip_dtmf packets
        media.keys += ["4", "2"]
        seen = await page.until(
            "(t => t === '42' && t)(document.getElementById('dtmf-received')?.textContent)",
            "the phone's DTMF on the page",
        )
        print(f"DTMF: the console sent 5 to the phone and saw {seen} from it")
        await page.shot("04-live-talking")
        await page.do("click", selector="#leave")

        # the phone hangs up (HOLD_MS after its ACK): hangup, then the call leaves the room and
        # stays listed among the ended calls
        ended = await page.until(
            f"document.querySelector(\"#ended tr[data-room='{room_name}']\")"
            "?.dataset.statusHistory",
            "the phone to hang up",
            timeout=HOLD_MS / 1000 + 10,
        )
        assert ended == "ringing active hangup", ended
        done = await asyncio.wait_for(phone, 15)
        assert done.code == 0, done.out[-2000:]
        await page.shot("05-live-ended")

        # the call log, then the call's page: ladder, quality, pcap
        await page.do("goto", url=f"{server.url}/console/#/calls")
        await page.until(
            f"document.querySelector(\"#calls tr[data-call-id='{call_id}']\")", "the call logged"
        )
        await page.shot("06-calls")
        # the filters: a room with no calls, then the call's own
        await page.do("fill", selector="form.filters input[name=room]", value="nowhere")
        await page.do("click", selector="form.filters button[type=submit]")
        await page.until(
            "document.getElementById('calls').textContent === 'No calls match.'", "no match"
        )
        await page.do("fill", selector="form.filters input[name=room]", value=room_name)
        await page.do("click", selector="form.filters button[type=submit]")
        await page.until(
            f"document.querySelector(\"#calls tr[data-call-id='{call_id}']\")", "the filtered call"
        )
        await page.do("click", selector=f"#calls tr[data-call-id='{call_id}'] a")
        ladder = await page.until(
            "(() => { const m = [...document.querySelectorAll('#ladder li.msg')];"
            " return m.length >= 5 && m.some(x => x.dataset.firstLine.startsWith('BYE')) &&"
            " m.map(x => x.dataset.direction + ' ' + x.dataset.firstLine) })()",
            "the call's ladder",
        )
        print("ladder:", ladder)
        assert ladder[0].startswith("in INVITE sip:"), ladder
        assert any(x.startswith("out 200 OK") for x in ladder), ladder
        await page.do("click", selector="#ladder li.msg summary")
        invite = await page.js(
            "document.querySelector('#ladder li.msg details[open] pre')?.textContent"
        )
        assert TWILIO_CALL_SID in invite, invite
        samples = await page.until(
            "Number(document.querySelector('#quality figure')?.dataset.samples)",
            "the call's quality",
        )
        mos = await page.js("Number(document.querySelector('#quality figure').dataset.mos)")
        print(f"quality: {samples} samples, MOS {mos}")
        # the server's last record of the call's quality (its value depends on the machine's
        # load: 4.38 measured idle, 3.96 busy)
        grants = api.VideoGrants(room_list=True)
        headers = {"Authorization": "Bearer " + token(grants, api.SIPGrants(admin=True))}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{server.url}/console/calls/{call_id}", headers=headers) as response,
        ):
            record = await response.json()
        assert len(record["quality"]) == samples and record["quality"][-1]["mos"] == mos, record
        await page.do("click", selector="#pcap")
        size = await page.until("Number(document.getElementById('pcap').dataset.bytes)", "pcap")
        assert size > 1000, size
        await page.shot("07-call")

        # configuration: the server's validation error at the field, then the trunk created
        await page.do("goto", url=f"{server.url}/console/#/config")
        await page.do("click", selector="button.create")
        await page.do("fill", selector="form.editor input[name=name]", value="console trunk")
        await page.do("fill", selector="form.editor input[name=numbers]", value="sales@example.com")
        error = await refused_at(page, "numbers", "the numbers field")
        assert "is not a phone number" in error, error
        await page.shot("08-config-refused")
        await page.do("fill", selector="form.editor input[name=numbers]", value="+15105550177")
        await page.do("click", selector="form.editor button[type=submit]")
        trunk_id = await page.until(
            "document.querySelector(\"tr[data-name='console trunk']\")?.dataset.id",
            "the new trunk listed",
        )
        async with api.LiveKitAPI(server.url, API_KEY, API_SECRET) as lk:
            trunks = await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
        created = [t for t in trunks.items if t.sip_trunk_id == trunk_id]
        assert created and list(created[0].numbers) == ["+15105550177"], trunks
        await page.shot("09-config")
        # a second trunk for the same number: the conflict is explained above the form
        await page.do("click", selector="button.create")
        await page.do("fill", selector="form.editor input[name=numbers]", value="+15105550177")
        await page.do("click", selector="form.editor button[type=submit]")
        conflict = await page.until(
            "document.querySelector('form.editor .form-error')?.textContent", "the conflict"
        )
        assert conflict.startswith("Conflict: conflicting inbound SIP trunks"), conflict
        assert trunk_id in conflict, conflict
        await page.shot("09-config-conflict")
        await page.do("click", selector="form.editor button[type=button]")  # Cancel
        # edited (the server's record replaced), then deleted after a confirmation
        await page.do("click", selector=f"tr[data-id='{trunk_id}'] button.edit")
        await page.do("fill", selector="form.editor input[name=name]", value="renamed trunk")
        await page.do("click", selector="form.editor button[type=submit]")
        await page.until(
            f"document.querySelector(\"tr[data-id='{trunk_id}']\")?.dataset.name === "
            "'renamed trunk'",
            "the trunk renamed",
        )
        await page.do("click", selector=f"tr[data-id='{trunk_id}'] button.danger")
        await page.do("click", selector=f"tr[data-id='{trunk_id}'] button.danger")
        await page.until(
            f"!document.querySelector(\"tr[data-id='{trunk_id}']\")", "the trunk deleted"
        )
        async with api.LiveKitAPI(server.url, API_KEY, API_SECRET) as lk:
            trunks = await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
        assert trunk_id not in [t.sip_trunk_id for t in trunks.items]

        # an outbound trunk, the tabs by keyboard: refused without numbers, at that field
        await page.do("press", selector="#tab-inbound", key="ArrowRight")
        await page.until(
            "document.getElementById('tab-outbound').getAttribute('aria-selected') === 'true'",
            "the outbound tab",
        )
        await page.do("click", selector="button.create")
        await page.do("fill", selector="form.editor input[name=name]", value="console carrier")
        await page.do("fill", selector="form.editor input[name=address]", value="sip.example.com")
        error = await refused_at(page, "numbers", "the outbound numbers field")
        assert "at least one number" in error, error
        await page.do("fill", selector="form.editor input[name=numbers]", value="+15105550188")
        await page.do("click", selector="form.editor button[type=submit]")
        await page.until(
            "document.querySelector(\"tr[data-name='console carrier']\")", "the outbound trunk"
        )

        # a dispatch rule: a direct rule with no room refused at the room field
        await page.do("press", selector="#tab-outbound", key="ArrowRight")
        await page.until(
            "document.getElementById('tab-rules').getAttribute('aria-selected') === 'true'",
            "the rules tab",
        )
        await page.do("click", selector="button.create")
        await page.do("fill", selector="form.editor input[name=name]", value="console rule")
        error = await refused_at(page, "room", "the room field")
        assert "room_name: must be set" in error, error
        await page.do("fill", selector="form.editor input[name=room]", value="front-desk")
        await page.do("click", selector="form.editor button[type=submit]")
        rule_id = await page.until(
            "document.querySelector(\"tr[data-name='console rule']\")?.dataset.id",
            "the new rule listed",
        )
        async with api.LiveKitAPI(server.url, API_KEY, API_SECRET) as lk:
            rules = await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())
        [rule] = [r for r in rules.items if r.sip_dispatch_rule_id == rule_id]
        assert rule.rule.dispatch_rule_direct.room_name == "front-desk", rule
        await page.shot("09-config-rules")

        await page.do("goto", url=f"{server.url}/console/#/nodes")
        await page.until("document.querySelector('tr[data-node]')", "the node list")
        await page.shot("10-nodes")
        await page.do("viewport", width=390, height=844)  # a phone's width
        await page.do("goto", url=f"{server.url}/console/#/calls/{call_id}")
        await page.until("document.querySelectorAll('#ladder li.msg').length", "the narrow page")
        await page.shot("11-call-narrow")
        await page.do("viewport", width=1280, height=720)
        # a session ends when its token does: back to the sign-in form, which says why
        await page.do("goto", url=f"{server.url}/console/?session=2#/live")
        await page.do("fill", selector="input[name=key]", value=API_KEY)
        await page.do("fill", selector="input[name=secret]", value=API_SECRET)
        await page.do("click", selector="form.sign-in button[type=submit]")
        await page.until("!document.getElementById('nav').hidden", "signed in for 2 s")
        expired = await page.until(
            "document.getElementById('nav').hidden && "
            "document.getElementById('sign-in-error')?.textContent",
            "the session to expire",
        )
        assert "expired" in expired, expired
        assert not page.errors(), page.errors()
        print(
            f"console test done in {time.monotonic() - started:.1f} s, screenshots in {ARTIFACTS}"
        )
    finally:
        if talk is not None:
            talk.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await talk
        phone.cancel()
        with contextlib.suppress(BaseException):
            await phone
        transport.close()


@pytest.mark.skipif(not shutil.which("baresip"), reason="baresip comes with `make test`")
async def test_console_shows_a_transfer(
    server: ServerProcess, chromium: Chromium, tmp_path: Path
) -> None:
    """A caller (baresip A) transferred by the API to baresip C: the call's page lists the
    transfer (its record: done, with C's status) and the REFER and NOTIFYs in the ladder."""
    await leave_clean(server)  # the first test's trunks and rules
    async with client(server) as lk:
        await direct_rule(lk)
        async with (
            SignalClient(server.url, "bridge", "agent"),
            baresip.phone(tmp_path / "a", codecs="PCMU") as a,
            baresip.phone(tmp_path / "c", codecs="PCMU") as c,
        ):
            caller = await answered_caller(lk, server, a)
            done = await lk.sip.transfer_sip_participant(
                sip.TransferSIPParticipantRequest(
                    room_name="bridge",
                    participant_identity=caller.identity,
                    transfer_to=f"sip:{c.user}@127.0.0.1:{c.sip_port}",
                )
            )
            await c.wait_event("CALL_ESTABLISHED", timeout=8)
            await a.hangup()
            await c.wait_event("CALL_CLOSED", timeout=8)
    call_id = caller.attributes["sip.callID"]
    page = chromium
    await sign_in(page, server, wrong_first=False)
    await page.do("goto", url=f"{server.url}/console/#/calls/{call_id}")
    status = await page.until(
        f"document.querySelector(\"tr[data-transfer-id='{done.transfer_id}']\")?.dataset.status",
        "the transfer on the call's page",
    )
    assert status == "transfer_successful", status
    refers = await page.until(
        "[...document.querySelectorAll('#transfers li')].map(li => li.textContent)",
        "the REFER in the ladder",
    )
    assert refers[0].startswith("to the carrier: REFER "), refers
    assert any("NOTIFY" in r for r in refers), refers
    await page.shot("13-call-transfer")


async def test_console_follows_a_deleted_room_and_a_restart(
    chromium: Chromium, tmp_path: Path
) -> None:
    """A room deleted while watched leaves the live view; the server going away is said on the
    page, which reconnects by itself when it is back (the token is still good)."""
    page = chromium
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = ServerProcess(tmp_path / "a")
    first.start()
    again: ServerProcess | None = None
    try:
        # signed in with the keyboard only: the key, Tab, the secret, Enter
        await page.do("goto", url=f"{first.url}/console/")
        await page.until(
            "document.activeElement?.name === 'key'", "the key field focused on the sign-in form"
        )
        await page.do("press", selector="input[name=key]", key="Tab")
        assert await page.js("document.activeElement.name") == "secret"
        await page.do("fill", selector="input[name=key]", value=API_KEY)
        await page.do("fill", selector="input[name=secret]", value=API_SECRET)
        await page.do("press", selector="input[name=secret]", key="Enter")
        await page.until(
            "document.getElementById('live-status')?.textContent.startsWith('Live')",
            "the live view after a keyboard sign-in",
        )
        async with api.LiveKitAPI(first.url, API_KEY, API_SECRET) as lk:
            await lk.room.create_room(api.CreateRoomRequest(name="watched"))
            await page.until(
                "document.querySelector(\"section.room[data-room='watched']\")", "the room"
            )
            await lk.room.delete_room(api.DeleteRoomRequest(room="watched"))
        await page.until(
            "!document.querySelector(\"section.room[data-room='watched']\")",
            "the deleted room gone",
        )
        assert first.stop() == 0
        banner = await page.until(
            "!document.getElementById('banner').hidden && "
            "document.getElementById('banner').textContent",
            "the page to say the server is gone",
        )
        assert "reconnecting" in banner, banner
        await page.shot("12-reconnecting")
        again = ServerProcess(tmp_path / "b", http_port=first.port)
        again.start()
        await page.until(
            "document.getElementById('banner').hidden && "
            "document.getElementById('live-status').textContent.startsWith('Live')",
            "the page back on the server",
        )
        assert not page.errors(), page.errors()
    finally:
        for proc in (first, again):
            if proc is not None and proc.proc is not None and proc.proc.poll() is None:
                proc.stop()


async def test_console_nodes_of_a_cluster(chromium: Chromium, tmp_path: Path) -> None:
    """Two nodes on one Redis: the Nodes page of either lists both, and a node that stops
    leaves the list."""
    require_redis_server()
    with redis_server(tmp_path / "redis") as redis:
        nodes = {
            name: ServerProcess(tmp_path / name, "--redis", redis.url, "--node-id", name)
            for name in ("alpha", "beta")
        }
        try:
            for name, node in nodes.items():
                (tmp_path / name).mkdir()
                node.start()
            page = chromium
            await sign_in(page, nodes["alpha"], wrong_first=False)
            await page.do("goto", url=f"{nodes['alpha'].url}/console/#/nodes")
            listed = await page.until(
                "(n => n.length === 2 && n)([...document.querySelectorAll('tr[data-node]')]"
                ".map(r => r.dataset.node + ' ' + r.cells[1].textContent))",
                "both nodes listed",
            )
            assert sorted(listed) == ["alpha serving", "beta serving"], listed
            await page.shot("14-nodes-cluster")
            assert nodes["beta"].stop() == 0
            await page.until(
                "[...document.querySelectorAll('tr[data-node]')].map(r => r.dataset.node)"
                ".join() === 'alpha'",
                "the stopped node gone from the list",
            )
        finally:
            for node in nodes.values():
                if node.proc is not None and node.proc.poll() is None:
                    node.stop()
