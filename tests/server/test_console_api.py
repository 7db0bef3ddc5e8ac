"""server/console_api.py and console_web.py in process: the console's sign-in, join tokens, a
call's record and quality over time, the live stream, the built files, and what they refuse."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from livekit.protocol import models
from livekit.protocol import sip as proto

from sipbridge.rooms import RoomRegistry
from sipbridge.server.api.auth import sign_token, verify_token
from sipbridge.server.api.webhooks import WebhookNotifier
from sipbridge.server.console_api import ConsoleApi
from sipbridge.server.console_web import ConsoleFiles
from sipbridge.server.state.call_log import CallLog
from sipbridge.server.state.rooms_runtime import RoomsRuntime
from sipbridge.store import SQLiteStore
from tests.harness import eventually

pytestmark = pytest.mark.timeout(30)

KEYS = {"key": "secret-long-enough-for-hs256-0123456789abcdef"}
SIP = models.ParticipantInfo.Kind.SIP


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Console:
    def __init__(self, client: TestClient[Any, Any], api: ConsoleApi, rooms: RoomsRuntime) -> None:
        self.client, self.api, self.rooms = client, api, rooms

    async def sign_in(self, **extra: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/console/token", json={"key": "key", "secret": KEYS["key"], **extra}
        )
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    store = SQLiteStore(tmp_path / "calls.db")
    await store.open()
    call_log = CallLog(store, time.time, retention_days=0)
    call_log.start()
    rooms = RoomsRuntime(RoomRegistry(), WebhookNotifier([], "key", KEYS["key"]), time.time)
    api = ConsoleApi(KEYS, rooms, call_log)
    app = web.Application()
    api.routes(app)
    dist = tmp_path / "dist"
    ConsoleFiles(dist).routes(app)
    async with TestClient(TestServer(app)) as client:
        yield Console(client, api, rooms)
    await call_log.stop()
    await store.close()


async def test_sign_in_gives_a_short_token_with_the_console_grants(console: Console) -> None:
    started = time.time()
    body = await console.sign_in()
    claims = verify_token(body["token"], KEYS)
    assert claims.api_key == "key" and claims.identity == body["identity"]
    assert claims.identity.startswith("console-")
    assert dict(claims.video) == {"roomList": True, "roomAdmin": True}
    assert dict(claims.sip) == {"admin": True, "call": True}
    assert started + 599 <= body["expires_at"] <= time.time() + 601
    shorter = await console.sign_in(ttl_s=30)
    assert shorter["expires_at"] <= time.time() + 31


async def test_sign_in_refusals(console: Console) -> None:
    cases: list[tuple[Any, int, str]] = [
        ({"key": "key", "secret": "wrong"}, 401, "unauthenticated"),
        ({"key": "nobody", "secret": KEYS["key"]}, 401, "unauthenticated"),
        ({"key": "key"}, 400, "invalid_argument"),
        ({"key": 5, "secret": []}, 400, "invalid_argument"),
        ({"key": "key", "secret": KEYS["key"], "ttl_s": 3600}, 400, "invalid_argument"),
        ({"key": "key", "secret": KEYS["key"], "ttl_s": "10"}, 400, "invalid_argument"),
        ([1, 2], 400, "malformed"),
        ("not json", 400, "malformed"),
        ({"key": "k" * 5000, "secret": "x"}, 400, "malformed"),
    ]
    for body, status, code in cases:
        data = body if isinstance(body, str) else json.dumps(body)
        response = await console.client.post("/console/token", data=data)
        assert response.status == status, (body, await response.text())
        assert (await response.json())["code"] == code, body
    assert console.api.refused == 2


async def test_an_address_that_keeps_failing_is_blocked(console: Console) -> None:
    for _ in range(10):
        response = await console.client.post(
            "/console/token", json={"key": "key", "secret": "guess"}
        )
        assert response.status == 401
    # now even the right secret is refused, without saying whether it was right
    response = await console.client.post(
        "/console/token", json={"key": "key", "secret": KEYS["key"]}
    )
    assert response.status == 429
    assert "too many failed sign-ins" in (await response.json())["msg"]


async def test_join_tokens_listen_hidden_or_talk(console: Console) -> None:
    token = (await console.sign_in())["token"]
    console.rooms.registry.create("support", time.time())
    listen = await console.client.post(
        "/console/join", json={"room": "support"}, headers=bearer(token)
    )
    assert listen.status == 200
    claims = verify_token((await listen.json())["token"], KEYS)
    assert claims.room == "support" and claims.video_grant("hidden")
    assert claims.video["canPublish"] is False and claims.video["canSubscribe"] is True
    talk = await console.client.post(
        "/console/join", json={"room": "support", "talk": True}, headers=bearer(token)
    )
    claims = verify_token((await talk.json())["token"], KEYS)
    assert not claims.video_grant("hidden") and claims.video_grant("canPublish")
    assert claims.video["canPublishSources"] == ["microphone"]

    no_grants = sign_token("key", KEYS["key"], video={"roomJoin": True, "room": "support"})
    cases: list[tuple[dict[str, str], Any, int]] = [
        ({}, {"room": "support"}, 401),
        (bearer(no_grants), {"room": "support"}, 403),
        (bearer(token), {"room": "nowhere"}, 404),
        (bearer(token), {"room": ""}, 400),
        (bearer(token), {"room": "support", "talk": "yes"}, 400),
        (bearer(token), {"room": "x" * 300}, 400),
    ]
    for headers, body, status in cases:
        response = await console.client.post("/console/join", json=body, headers=headers)
        assert response.status == status, (body, await response.text())


async def test_a_calls_record_and_its_quality_over_time(console: Console) -> None:
    token = (await console.sign_in())["token"]
    call_log = console.api.call_log
    info = proto.SIPCallInfo(call_id="SCL_1", room_name="support")
    call_log.record(info)
    for mos in (4.4, 4.1):
        call_log.record_quality("SCL_1", {"mos": mos, "codec": "PCMU"})
    call_log.record_transfer(
        proto.SIPTransferInfo(transfer_id="STR_1", call_id="SCL_1", transfer_to="sip:c@x")
    )

    async def written() -> bool:
        store = call_log.store
        return await store.get("call", "SCL_1") is not None and bool(
            await store.get("transfer", "STR_1")
        )

    await eventually(written, "the call written")  # type: ignore[arg-type]
    response = await console.client.get("/console/calls/SCL_1", headers=bearer(token))
    body = await response.json()
    assert body["call"]["call_id"] == "SCL_1" and body["call"]["room_name"] == "support"
    assert [s["mos"] for s in body["quality"]] == [4.4, 4.1]
    assert all(s["time"] > 0 for s in body["quality"])
    assert [(t["transfer_id"], t["transfer_to"]) for t in body["transfers"]] == [
        ("STR_1", "sip:c@x")
    ]

    # a node with no history of the call reads its last quality from the call log
    console.api.quality.calls.clear()
    body = await (await console.client.get("/console/calls/SCL_1", headers=bearer(token))).json()
    assert [s["mos"] for s in body["quality"]] == [4.1]

    unknown = await console.client.get("/console/calls/SCL_none", headers=bearer(token))
    assert unknown.status == 404
    long = await console.client.get("/console/calls/" + "x" * 300, headers=bearer(token))
    assert long.status == 400


async def test_live_stream_snapshot_events_and_expiry(console: Console) -> None:
    token = (await console.sign_in())["token"]
    registry, now = console.rooms.registry, time.time()
    registry.create("support", now)
    registry.join("support", "sip_+1555", now, kind=SIP, attributes={"sip.callID": "SCL_9"})
    console.rooms.commit()
    console.api.quality.record("SCL_9", {"mos": 4.3})
    response = await console.client.get("/console/live", headers=bearer(token))
    assert response.status == 200
    assert response.content_type == "application/x-ndjson"
    snapshot = json.loads(await response.content.readline())
    assert snapshot["type"] == "snapshot"
    [room] = snapshot["rooms"]
    assert room["room"]["name"] == "support"
    assert room["participants"][0]["attributes"]["sip.callID"] == "SCL_9"
    assert room["participants"][0]["kind"] == "SIP"
    assert snapshot["quality"]["SCL_9"]["mos"] == 4.3

    # each change as it happens, even one undone at once
    registry.update_participant("support", "sip_+1555", attributes={"sip.callStatus": "active"})
    registry.update_participant("support", "sip_+1555", attributes={"sip.callStatus": "hangup"})
    registry.remove("support", "sip_+1555", time.time(), models.DisconnectReason.CLIENT_INITIATED)
    console.rooms.commit()
    lines = [json.loads(await response.content.readline()) for _ in range(3)]
    assert [(x["event"], x["participant"]["attributes"].get("sip.callStatus")) for x in lines] == [
        ("participant_updated", "active"),
        ("participant_updated", "hangup"),
        ("participant_left", "hangup"),
    ]
    quality = json.loads(await response.content.readline())
    assert quality["type"] == "quality"
    response.close()
    await eventually(lambda: not console.api.streams, "the stream forgotten")

    # a token past its expiry (still inside the verifier's leeway) is refused
    stale = sign_token(
        "key",
        KEYS["key"],
        ttl_s=1,
        now=time.time() - 30,
        video={"roomList": True},
        sip={"admin": True},
    )
    response = await console.client.get("/console/live", headers=bearer(stale))
    assert response.status == 401
    assert (await response.json())["msg"] == "invalid token: expired"
    # one that expires while it streams: the stream says so and ends
    soon = sign_token("key", KEYS["key"], ttl_s=1, video={"roomList": True}, sip={"admin": True})
    response = await console.client.get("/console/live", headers=bearer(soon))
    lines = [json.loads(line) for line in (await response.read()).splitlines()]
    assert lines[0]["type"] == "snapshot" and lines[-1]["type"] == "expired"

    for headers, status in ((bearer("nonsense"), 401), ({}, 401)):
        response = await console.client.get("/console/live", headers=headers)
        assert response.status == status


async def test_live_streams_end_when_the_server_stops(console: Console) -> None:
    token = (await console.sign_in())["token"]
    response = await console.client.get("/console/live", headers=bearer(token))
    assert json.loads(await response.content.readline())["type"] == "snapshot"
    await console.client.server.app.shutdown()  # what AppRunner.cleanup runs first
    assert [json.loads(x)["type"] for x in (await response.read()).splitlines()] == ["closing"]
    refused = await console.client.get("/console/live", headers=bearer(token))
    assert refused.status == 503


async def test_built_files_or_how_to_build_them(console: Console, tmp_path: Path) -> None:
    missing = await console.client.get("/console")
    assert missing.status == 503
    assert "make console" in await missing.text()
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>console</title>")
    (dist / "assets" / "index-abc.js").write_text("console.log(1)")
    page = await console.client.get("/console/")
    assert page.status == 200 and page.content_type == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    script = await console.client.get("/console/assets/index-abc.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    assert "immutable" in script.headers["Cache-Control"]
    for path in ("/console/assets/..%2Findex.html", "/console/assets/nope.js"):
        assert (await console.client.get(path)).status == 404
