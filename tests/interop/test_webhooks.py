"""Webhooks from a real `sipbridge serve` process, received and verified the way LiveKit users do:
with the official `livekit.api.WebhookReceiver` (WIRE.md s3)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from livekit import api
from livekit.protocol import room as room_proto
from livekit.protocol.models import DisconnectReason
from livekit.protocol.webhook import WebhookEvent

from tests.harness import eventually, leave_clean, module_server
from tests.helpers import API_KEY, API_SECRET, ServerProcess, free_port

EVENT_TIMEOUT_S = 10.0


@dataclass
class Delivery:
    """One POST the receiver got, verified or not."""

    at: float
    event: WebhookEvent | None
    body: str
    authorization: str
    content_type: str
    error: str = ""


@dataclass
class Receiver:
    """A webhook endpoint on loopback; `statuses` are answered in turn, then 200."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    accepted: asyncio.Queue[WebhookEvent] = field(default_factory=asyncio.Queue)

    async def handle(self, request: web.Request) -> web.Response:
        status, text = self.take(
            await request.text(),
            request.headers.get("Authorization", ""),
            request.headers.get("Content-Type", ""),
        )
        return web.Response(status=status, text=text)

    def take(self, body: str, authorization: str, content_type: str) -> tuple[int, str]:
        """One POST: verified, recorded, answered (status, text)."""
        delivery = Delivery(
            at=time.monotonic(),
            event=None,
            body=body,
            authorization=authorization,
            content_type=content_type,
        )
        self.deliveries.append(delivery)
        verifier = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET))
        try:
            delivery.event = verifier.receive(body, authorization)
        except Exception as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"
            return 401, delivery.error
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.accepted.put_nowait(delivery.event)
        return status, ""

    async def next_event(self) -> WebhookEvent:
        return await asyncio.wait_for(self.accepted.get(), EVENT_TIMEOUT_S)


@asynccontextmanager
async def receiver(statuses: list[int] | None = None) -> AsyncIterator[Receiver]:
    rx = Receiver(statuses=list(statuses or []))
    app = web.Application()
    app.router.add_post("/hook", rx.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rx.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield rx
    finally:
        await runner.cleanup()


class Relay:
    """The webhook endpoint of the module's server: a loopback HTTP server in a thread of its own
    (a module's fixtures are synchronous, each test has an event loop of its own), handing each
    POST to the `Receiver` of the test running (`relayed`), in that test's loop."""

    def __init__(self) -> None:
        self.target: tuple[Receiver, asyncio.AbstractEventLoop] | None = None
        self.unclaimed: list[str] = []  # POSTs that came while no test listened
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                status, text = relay.take(
                    body,
                    self.headers.get("Authorization", ""),
                    self.headers.get("Content-Type", ""),
                )
                self.send_response(status)
                self.send_header("Content-Length", str(len(text.encode())))
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def take(self, body: str, authorization: str, content_type: str) -> tuple[int, str]:
        target = self.target
        if target is None:
            self.unclaimed.append(body)
            return 200, ""
        rx, loop = target

        async def in_the_tests_loop() -> tuple[int, str]:
            return rx.take(body, authorization, content_type)

        return asyncio.run_coroutine_threadsafe(in_the_tests_loop(), loop).result(EVENT_TIMEOUT_S)


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    made = Relay()
    made.thread.start()
    yield made
    made.http.shutdown()
    made.http.server_close()
    made.thread.join()


@pytest.fixture(scope="module")
def hooked_server(
    tmp_path_factory: pytest.TempPathFactory, relay: Relay
) -> Iterator[ServerProcess]:
    """One server for the tests here that need one webhook receiver (`relayed`); the others
    start servers with flags of their own. It must stop cleanly, with no stuck call."""
    yield from module_server(tmp_path_factory, "webhooks", "--webhook", relay.url)


@asynccontextmanager
async def relayed(
    relay: Relay, server: ServerProcess, statuses: list[int] | None = None
) -> AsyncIterator[Receiver]:
    """A `Receiver` for the events of the module's server while the test runs. The test must
    have taken every event it caused (an event left over would go to the next test): none came
    before it began, and after it nothing else is left on the server (`leave_clean`)."""
    assert not relay.unclaimed, relay.unclaimed
    rx = Receiver(statuses=list(statuses or []))
    relay.target = (rx, asyncio.get_running_loop())
    try:
        yield rx
    finally:
        relay.target = None
    await leave_clean(server)


@asynccontextmanager
async def server_with_webhook(tmp_path: Path, *urls: str) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(tmp_path, *(arg for url in urls for arg in ("--webhook", url)))
    # The server process is started and stopped in a thread: both block for a while.
    await asyncio.to_thread(proc.start)
    try:
        yield proc
    finally:
        code = await asyncio.to_thread(proc.stop)
        assert code == 0, proc.log.read_text()


def client(proc: ServerProcess) -> api.LiveKitAPI:
    return api.LiveKitAPI(url=proc.url, api_key=API_KEY, api_secret=API_SECRET)


def assert_signed_like_livekit(delivery: Delivery) -> None:
    """WIRE.md s3: content type, bare JWT, 5 min validity, sha256 claim, protojson body."""
    assert delivery.error == "", delivery.error
    assert delivery.content_type.split(";")[0].strip() == "application/webhook+json"
    assert not delivery.authorization.lower().startswith("bearer"), delivery.authorization
    claims = jwt.decode(delivery.authorization, API_SECRET, algorithms=["HS256"])
    assert claims["iss"] == API_KEY
    assert claims["sha256"]
    assert 240 <= claims["exp"] - claims.get("nbf", claims.get("iat", 0)) <= 360, claims
    doc = json.loads(delivery.body)
    # protojson: camelCase names, int64 as strings.
    assert "createdAt" in doc and isinstance(doc["createdAt"], str), doc
    assert "created_at" not in doc
    assert isinstance(doc["room"]["creationTime"], str), doc["room"]


async def test_room_started_and_finished_are_signed_and_verifiable(
    relay: Relay, hooked_server: ServerProcess
) -> None:
    proc = hooked_server
    async with relayed(relay, proc) as rx, client(proc) as lk:
        before = int(time.time())
        room = await lk.room.create_room(room_proto.CreateRoomRequest(name="hooked"))
        started = await rx.next_event()
        assert started.event == "room_started"
        assert (started.room.name, started.room.sid) == ("hooked", room.sid)
        assert started.id.startswith("EV_") and len(started.id) > 3
        assert before - 5 <= started.created_at <= time.time() + 5

        await lk.room.delete_room(room_proto.DeleteRoomRequest(room="hooked"))
        finished = await rx.next_event()
        assert finished.event == "room_finished"
        assert (finished.room.name, finished.room.sid) == ("hooked", room.sid)
        assert finished.id.startswith("EV_") and finished.id != started.id

        assert [d.event.event for d in rx.deliveries if d.event] == [
            "room_started",
            "room_finished",
        ]
        for delivery in rx.deliveries:
            assert_signed_like_livekit(delivery)


# Rooms "one", "two", "three" made, then deleted in another order: the events a receiver must get.
THREE_ROOMS_EVENTS = [
    ("room_started", "one"),
    ("room_started", "two"),
    ("room_started", "three"),
    ("room_finished", "two"),
    ("room_finished", "one"),
    ("room_finished", "three"),
]


async def three_rooms_come_and_go(lk: api.LiveKitAPI) -> dict[str, str]:
    """Rooms "one", "two", "three" created, then deleted "two" first (THREE_ROOMS_EVENTS); their
    sids by name."""
    sids = {}
    for name in ("one", "two", "three"):
        sids[name] = (await lk.room.create_room(room_proto.CreateRoomRequest(name=name))).sid
    for name in ("two", "one", "three"):
        await lk.room.delete_room(room_proto.DeleteRoomRequest(room=name))
    return sids


async def test_each_room_gets_its_own_events_in_order(
    relay: Relay, hooked_server: ServerProcess
) -> None:
    proc = hooked_server
    async with relayed(relay, proc) as rx, client(proc) as lk:
        sids = await three_rooms_come_and_go(lk)
        got = [await rx.next_event() for _ in range(6)]
        assert [(e.event, e.room.name) for e in got] == THREE_ROOMS_EVENTS
        assert all(e.room.sid == sids[e.room.name] for e in got)
        assert len({e.id for e in got}) == 6


async def test_each_receiver_gets_every_event_in_order(tmp_path: Path) -> None:
    # The second receiver fails its first two attempts: it is retried on its own, the first one
    # is not held back, and both end up with the same events, each its own copy.
    async with (
        receiver() as rx1,
        receiver(statuses=[500, 500]) as rx2,
        server_with_webhook(tmp_path, rx1.url, rx2.url) as proc,
        client(proc) as lk,
    ):
        await three_rooms_come_and_go(lk)
        got1 = [await rx1.next_event() for _ in range(6)]
        got2 = [await rx2.next_event() for _ in range(6)]
        assert [(e.event, e.room.name) for e in got1] == THREE_ROOMS_EVENTS
        assert [e.id for e in got2] == [e.id for e in got1]
        assert got2 == got1  # the same content too, nothing added by the other receiver
        assert len({e.id for e in got1}) == 6
        assert all(e.num_dropped == 0 for e in got1 + got2)
        # The failing receiver did not hold the other one back.
        first_ok = next(d for d in rx1.deliveries if d.event and d.event.id == got1[0].id)
        attempts = [d for d in rx2.deliveries if d.event and d.event.id == got1[0].id]
        assert len(attempts) == 3
        assert first_ok.at < attempts[-1].at
        for delivery in rx1.deliveries + rx2.deliveries:
            assert_signed_like_livekit(delivery)


async def test_failed_delivery_is_retried_with_backoff(
    relay: Relay, hooked_server: ServerProcess
) -> None:
    proc = hooked_server
    async with relayed(relay, proc, statuses=[500, 500]) as rx, client(proc) as lk:
        room = await lk.room.create_room(room_proto.CreateRoomRequest(name="retried"))
        started = await rx.next_event()
        assert (started.event, started.room.sid) == ("room_started", room.sid)
        attempts = [d for d in rx.deliveries if d.event and d.event.id == started.id]
        assert len(attempts) == 3, [(d.at, d.error) for d in rx.deliveries]
        for delivery in attempts:
            assert_signed_like_livekit(delivery)
        first_gap = attempts[1].at - attempts[0].at
        second_gap = attempts[2].at - attempts[1].at
        assert first_gap >= 0.1, first_gap  # not a tight loop
        assert second_gap > first_gap, (first_gap, second_gap)  # backing off

        # Later events still arrive, after the retried one.
        await lk.room.delete_room(room_proto.DeleteRoomRequest(room="retried"))
        finished = await rx.next_event()
        assert (finished.event, finished.room.sid) == ("room_finished", room.sid)


async def _time_create_rooms(lk: api.LiveKitAPI, count: int) -> float:
    start = time.monotonic()
    for i in range(count):
        await lk.room.create_room(room_proto.CreateRoomRequest(name=f"fast-{i}"))
    return time.monotonic() - start


async def test_unreachable_receiver_never_blocks_calls(tmp_path: Path) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    async with server_with_webhook(tmp_path, dead_url) as proc, client(proc) as lk:
        elapsed = await _time_create_rooms(lk, 20)
        assert elapsed < 2.0, elapsed
        listed = await lk.room.list_rooms(room_proto.ListRoomsRequest())
        assert len(listed.rooms) == 20
        await lk.room.delete_room(room_proto.DeleteRoomRequest(room="fast-0"))


async def test_hanging_receiver_never_blocks_calls(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 30)
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hang)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        async with server_with_webhook(tmp_path, url) as proc, client(proc) as lk:
            elapsed = await _time_create_rooms(lk, 20)
            assert elapsed < 2.0, elapsed
            stop_started = time.monotonic()
        # Shutting down with a hung delivery in flight is bounded too (and exits 0, above).
        assert time.monotonic() - stop_started < 8.0
    finally:
        release.set()
        await runner.cleanup()


async def test_participant_and_track_events(relay: Relay, hooked_server: ServerProcess) -> None:
    from tests.signal_client import SignalClient  # noqa: PLC0415

    proc = hooked_server
    async with relayed(relay, proc) as rx, client(proc) as lk:
        async with SignalClient(proc.url, "party", "alice", name="Alice") as alice:
            track = await alice.publish_audio()
            await lk.room.remove_participant(
                room_proto.RoomParticipantIdentity(room="party", identity="alice")
            )
            await alice.wait_for("leave")
        await lk.room.delete_room(room_proto.DeleteRoomRequest(room="party"))
        events: list[WebhookEvent] = []
        while not events or events[-1].event != "room_finished":
            events.append(await rx.next_event())
        assert [e.event for e in events] == [
            "room_started",
            "participant_joined",
            "track_published",
            "track_unpublished",
            "participant_left",
            "room_finished",
        ]
        joined, published, unpublished, left = events[1:5]
        assert joined.participant.identity == "alice" and joined.participant.name == "Alice"
        assert joined.room.name == "party"
        assert published.track.sid == track.sid == unpublished.track.sid
        assert published.participant.identity == "alice"
        assert left.participant.sid == joined.participant.sid
        assert left.participant.disconnect_reason == DisconnectReason.PARTICIPANT_REMOVED
        for delivery in rx.deliveries:
            assert_signed_like_livekit(delivery)


async def test_a_receivers_redirect_is_not_followed(tmp_path: Path) -> None:
    """A receiver answering 307 elsewhere gets a failed delivery (retried to it), and the
    signed event never reaches where its Location points."""
    async with receiver() as elsewhere:
        redirects = 0

        async def redirect(_: web.Request) -> web.Response:
            nonlocal redirects
            redirects += 1
            raise web.HTTPTemporaryRedirect(elsewhere.url)

        app = web.Application()
        app.router.add_post("/hook", redirect)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        try:
            async with server_with_webhook(tmp_path, url) as proc, client(proc) as lk:
                await lk.room.create_room(room_proto.CreateRoomRequest(name="redirected"))

                async def retried() -> bool:
                    metrics = await asyncio.to_thread(proc.metrics)
                    return metrics.get('sipbridge_webhooks_total{outcome="retries"}', 0) >= 2

                await eventually(retried, "the redirected delivery to be retried")
                assert redirects >= 2
                assert elsewhere.deliveries == []
        finally:
            await runner.cleanup()
