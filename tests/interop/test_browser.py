"""A real browser in a real call: Debian's Chromium, driven by playwright-core, runs a page built
from the official `livekit-client` (tests/browser/page.js) and meets a phone calling in from
"Twilio".

The phone is sipp (tests/interop/sipp/uac_browser.xml: an INVITE with X-Twilio-CallSid) for the
signalling and this test for its media (PCMU and RFC 4733 on a UDP port the SDP names), so what
the phone hears is measured exactly. Per call, the page
- runs the seed page's JS example as written (`participant.kind == ParticipantKind.SIP`, then
  `console.log(participant.attributes['sip.twilio.callSid'])`); the test prints what it logged;
- hears the phone: a WebAudio analyser on the phone's track finds its 1 kHz tone at its level;
- is heard by the phone: it publishes a 700 Hz tone made with WebAudio, which the phone receives;
- sends DTMF with `publishDtmf`, which reaches the phone as RFC 4733 events;
- sees the phone leave once it is hung up (RemoveParticipant: the server sends BYE).

Everything - server, phone, node, Chromium - runs in one network namespace whose only link is
`lo` (netns.loopback_namespace, which this test process enters for the module): Chromium finds
no address but 127.0.0.1 (`--allow-loopback-in-peer-connection`), the server gathers its ICE
candidates there (`--rtc-ip 127.0.0.1`), and nothing can leave the machine. One server and one
Chromium serve the module; each test opens a fresh page and places a fresh call.

The variants: 2.18.1, the first livekit-client to put its offer in the join; the page with
`singlePeerConnection: false` (the two-peer-connection protocol, /rtc); with its first offer after
the join (as livekit-client does on Firefox); and 2.17.3, the oldest supported, which always sends
its first offer after the join.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import api
from livekit.protocol import models, room, sip

from sipbridge.media.dtmf import DtmfEvent, digit_code
from sipbridge.media.g711 import ULAW_SILENCE, ulaw_decode, ulaw_encode
from sipbridge.media.rtp import RtpPacket, is_rtcp, parse_rtp
from tests import netns
from tests.audio import rms, tone_ratio
from tests.chromium import BROWSER_DIR, CHROMIUM, INSTALLED, NODE, DriverProcess
from tests.harness import eventually, sipp
from tests.helpers import API_KEY, API_SECRET, ServerProcess, free_port, token
from tests.interop.conftest import loopback_rtc_server

pytestmark = [
    # real time: alone after the parallel tests (the Makefile, `-m serial`)
    pytest.mark.serial,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium comes with `make test`"),
    pytest.mark.skipif(
        NODE is None or not INSTALLED, reason="node and `npm ci` in tests/browser: `make test`"
    ),
    pytest.mark.skipif(not shutil.which("sipp"), reason="sipp comes with `make test`"),
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
]


def _versions() -> tuple[str, list[str]]:
    """The newest livekit-client the page is built with, and the older ones (package.json: each
    a `livekit-client-<version>` alias), oldest first."""
    deps = json.loads((BROWSER_DIR / "package.json").read_text())["dependencies"]
    older = [v.rpartition("@")[2] for k, v in deps.items() if k.startswith("livekit-client-")]
    return deps["livekit-client"], sorted(older, key=lambda v: tuple(map(int, v.split("."))))


NEWEST, (DEFERRING, OLDEST_SUPPORTED) = _versions()
RATE = 8000
PHONE_HZ = 1000.0  # what the phone says
PAGE_HZ = 700.0  # what the page says (page.js, `toneHz`)
LEVEL_DBFS = -12.0  # both tones' RMS level
TWILIO_CALL_SID = "CA" + "0123456789abcdef" * 2
SIP_KIND = models.ParticipantInfo.Kind.SIP


# -- Chromium, through tests/browser/driver.mjs ----------------------------------------------------


class Browser(DriverProcess):
    """The driver process (one Chromium) and every line it printed, read by a thread."""

    def __init__(self, log: Path) -> None:
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        super().__init__("driver.mjs", log)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                message = json.loads(raw)
                with self._lock, self.log.open("a") as log:
                    self.messages.append(message)
                    log.write(raw.decode(errors="replace"))

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()

    def find(self, test: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages if test(m)]

    def ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if found := self.find(lambda m: "ready" in m or ("error" in m and "page" not in m)):
                assert "ready" in found[0], found[0]
                info: dict[str, Any] = found[0]["ready"]
                return info
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)  # (no event loop here: a module fixture)
        raise AssertionError(f"the browser driver did not start:\n{self.log.read_text()[-3000:]}")


@dataclass
class Page:
    """One page of the browser: a participant of `room_name` built on livekit-client `lib`."""

    browser: Browser
    name: str

    def reports(self, event: str, **match: Any) -> list[dict[str, Any]]:
        def wanted(m: dict[str, Any]) -> bool:
            report = m.get("report")
            return (
                m.get("page") == self.name
                and report is not None
                and report["event"] == event
                and all(report.get(k) == v for k, v in match.items())
            )

        return [m["report"] for m in self.browser.find(wanted)]

    def console(self) -> list[str]:
        return [
            m["console"]
            for m in self.browser.find(lambda m: m.get("page") == self.name and "console" in m)
        ]

    def failure(self) -> str | None:
        """What went wrong in the page, if anything did (a page error or a failed connect)."""
        mine = self.browser.find(lambda m: m.get("page") == self.name)
        errors = [str(m["error"]) for m in mine if "error" in m]
        errors += [
            json.dumps(m["report"]) for m in mine if m.get("report", {}).get("event") == "error"
        ]
        if errors:
            return "; ".join(errors)
        ended = [
            json.dumps(m["report"])
            for m in mine
            if m.get("report", {}).get("event") == "disconnected"
        ]
        return ended[0] if ended else None

    async def wait(
        self, event: str, what: str, timeout: float = 10, **match: Any
    ) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            found = self.reports(event, **match)
            if found:
                return found[-1]
            if failure := self.failure():
                raise AssertionError(f"the page failed waiting for {what}: {failure}")
            return None

        return await eventually(seen, f"the page to report {what}", timeout=timeout)


# -- the phone's media -----------------------------------------------------------------------------


def tone_ulaw(freq: float, level_dbfs: float, start: int, count: int) -> bytes:
    """`count` µ-law samples of a sine from sample `start` on, at `level_dbfs` RMS."""
    amplitude = 32767 * 10 ** (level_dbfs / 20) * math.sqrt(2)
    t = np.arange(start, start + count) / RATE
    pcm = np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2")
    return ulaw_encode(pcm.tobytes())


@dataclass
class PhoneMedia(asyncio.DatagramProtocol):
    """The phone's RTP: sends a PCMU tone every 20 ms to where the server's RTP comes from, and
    keeps what it hears (decoded PCMU) and the RFC 4733 events it gets (each event once)."""

    heard: list[np.ndarray[Any, Any]] = field(default_factory=list)
    digits: list[int] = field(default_factory=list)
    silent: bool = False  # the phone still sends, but silence
    keys: list[str] = field(default_factory=list)  # digits to press, as RFC 4733 events
    remote: tuple[str, int] | None = None
    transport: asyncio.DatagramTransport | None = None
    _events: set[int] = field(default_factory=set)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if is_rtcp(data):
            return
        packet = parse_rtp(data)
        self.remote = addr  # symmetric RTP: where the server sends from
        if packet.payload_type == 0:
            pcm = np.frombuffer(ulaw_decode(packet.payload), dtype="<i2") / 32768.0
            self.heard.append(pcm)
        elif (
            # RFC 4733 s2.3: an event's packets share one timestamp; the end bit is 0x80
            packet.payload_type == 101
            and len(packet.payload) >= 4
            and packet.payload[1] & 0x80
            and packet.timestamp not in self._events
        ):
            self._events.add(packet.timestamp)
            self.digits.append(packet.payload[0])

    def recent(self, seconds: float) -> np.ndarray[Any, Any]:
        frames = int(seconds * RATE / 160)
        return np.concatenate(self.heard[-frames:]) if len(self.heard) >= frames else np.zeros(0)

    async def talk(self, messages: Path) -> None:
        """Send the tone, paced by the loop's clock, to the audio port of the server's 200 (in
        sipp's message trace), or to where the server's RTP comes from if that is seen first."""
        loop = asyncio.get_running_loop()

        def server_address() -> tuple[str, int] | None:
            if self.remote is None and messages.exists():
                _, ok, answer = messages.read_text(errors="replace").partition("SIP/2.0 200 OK")
                port = re.search(r"\nm=audio (\d+) ", answer) if ok else None
                if port:
                    self.remote = ("127.0.0.1", int(port.group(1)))
            return self.remote

        await eventually(server_address, "the server's answer", timeout=60)
        print(f"the phone talks to {self.remote}")
        seq, sample, ssrc = 0, 0, 0x5B1D6E
        next_at = loop.time()
        event: list[bytes] = []  # the RFC 4733 payloads of a key press still to send
        event_start = 0
        while True:
            assert self.transport is not None and self.remote is not None
            if self.keys and not event:
                event, event_start = key_press(self.keys.pop(0)), sample
            if event:  # s2.5.1: one timestamp, the key's start, while the audio clock runs on
                packet = RtpPacket(
                    payload_type=101,
                    sequence_number=seq & 0xFFFF,
                    timestamp=event_start & 0xFFFFFFFF,
                    ssrc=ssrc,
                    payload=event.pop(0),
                    marker=sample == event_start,
                )
                self.transport.sendto(packet.serialize(), self.remote)
                seq, sample = seq + 1, sample + 160
                next_at += 0.02
                await asyncio.sleep(max(0.0, next_at - loop.time()))  # pacing, not waiting
                continue
            if self.silent:
                payload = bytes([ULAW_SILENCE]) * 160
            else:
                payload = tone_ulaw(PHONE_HZ, LEVEL_DBFS, sample, 160)
            packet = RtpPacket(
                payload_type=0,
                sequence_number=seq & 0xFFFF,
                timestamp=sample & 0xFFFFFFFF,
                ssrc=ssrc,
                payload=payload,
                marker=seq == 0,
            )
            self.transport.sendto(packet.serialize(), self.remote)
            seq, sample = seq + 1, sample + 160
            next_at += 0.02
            await asyncio.sleep(max(0.0, next_at - loop.time()))  # pacing, not waiting


def key_press(digit: str) -> list[bytes]:
    """A 160 ms key press as RFC 4733 payloads, one per 20 ms; the end report three times."""
    code = digit_code(digit)
    reports = [DtmfEvent(event=code, volume=10, duration=160 * n).serialize() for n in range(1, 8)]
    return reports + [DtmfEvent(event=code, end=True, volume=10, duration=1280).serialize()] * 3


def dbfs(pcm: np.ndarray[Any, Any]) -> float:
    level = rms(pcm)
    return 20 * math.log10(level) if level > 0 else -200.0


# -- fixtures: one namespace, one server, one browser per module -----------------------------------


@pytest.fixture(scope="module")
def loopback() -> Iterator[str]:
    with netns.loopback_namespace() as name:
        yield name


@pytest.fixture(scope="module")
def server(loopback: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from loopback_rtc_server(tmp_path_factory.mktemp("server"))


@pytest.fixture(scope="module")
def browser(loopback: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    started = time.monotonic()
    driver = Browser(tmp_path_factory.mktemp("browser") / "driver.log")
    try:
        info = driver.ready()
        print(
            f"\nchromium {info['chromium']}, livekit-client {sorted(info['libs'])}, "
            f"ready in {time.monotonic() - started:.1f} s"
        )
        yield driver
    finally:
        driver.close()


# -- the call --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    lib: str
    single_pc: bool = True
    defer_offer: bool = False


async def route_to_room(server: ServerProcess, number: str, room_name: str) -> None:
    """An inbound trunk for `number` and a direct rule from it to `room_name`."""
    async with api.LiveKitAPI(url=server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        trunk = await lk.sip.create_inbound_trunk(
            sip.CreateSIPInboundTrunkRequest(
                trunk=sip.SIPInboundTrunkInfo(name="twilio", numbers=[number])
            )
        )
        await lk.sip.create_dispatch_rule(
            sip.CreateSIPDispatchRuleRequest(
                dispatch_rule=sip.SIPDispatchRuleInfo(
                    trunk_ids=[trunk.sip_trunk_id],
                    rule=sip.SIPDispatchRule(
                        dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name=room_name)
                    ),
                )
            )
        )


async def hang_up(server: ServerProcess, room_name: str, identity: str) -> None:
    async with api.LiveKitAPI(url=server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        await lk.room.remove_participant(
            room.RoomParticipantIdentity(room=room_name, identity=identity)
        )


async def call_the_page(server: ServerProcess, browser: Browser, variant: Variant) -> None:
    started = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    room_name, number = f"browser-{tag}", f"+1510{int(tag, 16) % 10**7:07d}"
    await route_to_room(server, number, room_name)
    loop = asyncio.get_running_loop()
    rtp_port = free_port(socket.SOCK_DGRAM)
    transport, media = await loop.create_datagram_endpoint(
        PhoneMedia, local_addr=("127.0.0.1", rtp_port)
    )
    keys = {"caller": "+15105550199", "called": number, "callsid": TWILIO_CALL_SID}
    phone_dir = server.log.parent / f"phone-{tag}"
    phone_dir.mkdir()
    phone = asyncio.create_task(
        sipp(
            "uac_browser.xml",
            server.sip_port,  # type: ignore[attr-defined]
            keys={**keys, "rtp_port": str(rtp_port)},
            limit=60,
            extra=["-trace_msg", "-message_file", str(phone_dir / "messages.log")],
        )
    )
    talk = asyncio.create_task(media.talk(phone_dir / "messages.log"))
    page = Page(browser, f"page-{tag}")
    query = {
        "url": f"ws://127.0.0.1:{server.port}",
        "token": token(api.VideoGrants(room_join=True, room=room_name), identity=f"web-{tag}"),
        "singlePeerConnection": "1" if variant.single_pc else "0",
        "deferOffer": "1" if variant.defer_offer else "0",
        "toneHz": str(PAGE_HZ),
        "peerConnectionTimeout": "6000",  # 0.2 s here: a failing variant fails sooner
    }
    browser.send(cmd="open", page=page.name, lib=variant.lib, query=query)
    try:
        await page.wait("version", f"livekit-client {variant.lib}", version=variant.lib)
        await page.wait("connected", "a connected room", timeout=12)
        # the seed page's example, on the phone's participant: it logs the Twilio call SID
        joined = await page.wait("joined", "the phone's participant", kind=SIP_KIND)
        assert joined["attributes"]["sip.twilio.callSid"] == TWILIO_CALL_SID, joined
        await eventually(
            lambda: TWILIO_CALL_SID in page.console(), "the seed example's console.log"
        )
        print(f"\n[{variant}] the seed example printed: {TWILIO_CALL_SID}")
        phone_identity = joined["identity"]

        # the page hears the phone: its tone, at its level, steady over five readings (0.5 s)
        def hears_phone() -> dict[str, Any] | None:
            levels = page.reports("level", identity=phone_identity)[-5:]
            steady = len(levels) == 5 and all(
                abs(level["peakHz"] - PHONE_HZ) < 10 and level["dbfs"] > LEVEL_DBFS - 20
                for level in levels
            )
            spread = (
                max(x["dbfs"] for x in levels) - min(x["dbfs"] for x in levels) if steady else 99
            )
            return levels[-1] if steady and spread < 1 else None

        try:
            heard = await eventually(hears_phone, "the page's analyser to hear the phone's tone")
        except AssertionError as err:  # what it heard instead (a flake in CI left no trace)
            levels = page.reports("level", identity=phone_identity)[-12:]
            raise AssertionError(f"{err}; its last level reports: {levels}") from None
        print(f"page heard the phone at {heard['dbfs']:.1f} dBFS, peak {heard['peakHz']:.0f} Hz")
        assert abs(heard["dbfs"] - LEVEL_DBFS) < 1, heard

        # the phone hears the page: its tone, at its level
        def phone_hears() -> float | None:
            pcm = media.recent(0.5)
            return dbfs(pcm) if pcm.size and tone_ratio(pcm, RATE, PAGE_HZ) > 0.8 else None

        level = await eventually(phone_hears, "the phone to hear the page's tone")
        print(f"phone heard the page at {level:.1f} dBFS")
        assert abs(level - LEVEL_DBFS) < 1, level

        # DTMF from the page reaches the phone as RFC 4733 events (1, then # = 11)
        browser.send(cmd="eval", page=page.name, js="window.sbDtmf('1#')")
        await eventually(lambda: media.digits[-2:] == [1, 11], "RFC 4733 events 1 and #")

        # ActiveSpeakersChanged names the phone while it speaks, and not once it is silent
        def speakers() -> list[list[str]]:
            return [r["identities"] for r in page.reports("speakers")]

        await eventually(
            lambda: any(phone_identity in s for s in speakers()), "the phone among the speakers"
        )
        media.silent = True
        await eventually(
            lambda: phone_identity not in (speakers() or [[phone_identity]])[-1],
            "the silent phone to leave the speakers",
        )

        # the phone is hung up: the page sees it leave, sipp sees the BYE
        await hang_up(server, room_name, phone_identity)
        await page.wait("left", "the phone leaving", identity=phone_identity)
        ended = await asyncio.wait_for(phone, 10)
        assert ended.code == 0, ended.out[-3000:]
        print(f"[{variant}] call done in {time.monotonic() - started:.1f} s")
    finally:
        browser.send(cmd="close", page=page.name)
        talk.cancel()
        phone.cancel()
        with contextlib.suppress(BaseException):
            await phone
        with contextlib.suppress(asyncio.CancelledError):
            await talk
        transport.close()


# -- the tests -------------------------------------------------------------------------------------


async def test_newest_livekit_client_in_chromium(server: ServerProcess, browser: Browser) -> None:
    await call_the_page(server, browser, Variant(NEWEST))


async def test_oldest_supported_livekit_client(server: ServerProcess, browser: Browser) -> None:
    """2.18.1: the first livekit-client that puts its first offer in the join request."""
    await call_the_page(server, browser, Variant(OLDEST_SUPPORTED))


async def test_two_peer_connections(server: ServerProcess, browser: Browser) -> None:
    await call_the_page(server, browser, Variant(NEWEST, single_pc=False))


async def test_first_offer_after_the_join(server: ServerProcess, browser: Browser) -> None:
    await call_the_page(server, browser, Variant(NEWEST, defer_offer=True))


async def test_livekit_client_that_defers_its_offer(
    server: ServerProcess, browser: Browser
) -> None:
    """2.17.3, the oldest supported: /rtc/v1 and one peer connection, the first offer always
    after the join."""
    await call_the_page(server, browser, Variant(DEFERRING))
