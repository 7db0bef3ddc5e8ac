"""The call log in process: ListCalls over Twirp (JSON and protobuf, pages, filters, refusals),
the retention removing old calls in the background, and `sipbridge call list` on a file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from livekit.protocol import egress, sip

from sipbridge.server.api.auth import sign_token
from sipbridge.server.api.call_log_api import CallLogApi, ListCallsRequest, ListCallsResponse
from sipbridge.server.api.twirp import PREFIX, TwirpServer
from sipbridge.server.recording.records import EgressRecords
from sipbridge.server.state.call_log import CallLog
from sipbridge.store import Record, SQLiteStore
from sipbridge.store.call_query import CallQuery
from tests.harness import eventually

pytestmark = pytest.mark.timeout(30)

KEYS = {"key": "secret-long-enough-for-hs256-0123456789abcdef"}


def admin() -> dict[str, str]:
    """An admin's Authorization header, signed now (a token made at import expires before a
    long suite reaches the test)."""
    return {"Authorization": "Bearer " + sign_token("key", KEYS["key"], sip={"admin": True})}


NOW = 1_700_000_000.0
URL = PREFIX + "sipbridge.CallLog/ListCalls"


def info(
    n: int, *, age_s: float, room: str = "lobby", caller: str = "+15550001"
) -> sip.SIPCallInfo:
    created_ns = int((NOW - age_s) * 1e9)
    call = sip.SIPCallInfo(
        call_id=f"SCL_{n:04}",
        room_name=room,
        trunk_id="ST_a",
        call_status=sip.SIPCallStatus.SCS_DISCONNECTED,
        created_at=created_ns // 10**9,
        created_at_ns=created_ns,
    )
    call.from_uri.user = caller
    call.to_uri.user = "+15105550100"
    return call


@pytest.fixture
async def call_log(tmp_path: Path) -> AsyncIterator[CallLog]:
    store = SQLiteStore(tmp_path / "calls.db")
    await store.open()
    log = CallLog(store, lambda: NOW, retention_days=0)
    log.start()
    yield log
    await log.stop()
    await store.close()


async def fill(log: CallLog, calls: list[sip.SIPCallInfo]) -> None:
    """Record the calls and wait until the background writer has written the last."""
    for call in calls:
        log.record(call)

    async def written() -> bool:
        return await log.store.get("call", calls[-1].call_id) is not None

    await eventually(written, "the call log's write")  # type: ignore[arg-type]  # (as harness.py)


async def test_list_calls_over_twirp(call_log: CallLog) -> None:
    calls = [
        info(n, age_s=3600 * n, room="sales" if n % 2 else "support", caller=f"+1555000{n % 3}")
        for n in range(10)
    ]
    await fill(call_log, calls)
    twirp = TwirpServer(KEYS)
    CallLogApi(call_log, lambda: NOW).register(twirp)
    app = web.Application()
    app.router.add_route("*", PREFIX + "{route:.*}", twirp.handle)
    async with TestClient(TestServer(app)) as client:

        async def ask(body: dict[str, object]) -> tuple[int, Any]:
            response = await client.post(URL, json=body, headers=admin())
            return response.status, await response.json()

        status, page = await ask({"limit": 3})
        assert status == 200
        items = page["items"]
        assert isinstance(items, list)
        assert [c["call_id"] for c in items] == ["SCL_0000", "SCL_0001", "SCL_0002"]
        status, page2 = await ask({"limit": 3, "page_token": page["next_page_token"]})
        assert [c["call_id"] for c in page2["items"]] == ["SCL_0003", "SCL_0004", "SCL_0005"]

        # filters and a window: the sales calls of the last 4 hours (n = 1, 3; since is inclusive)
        status, page = await ask({"room": "sales", "since": "4h"})
        assert [c["call_id"] for c in page["items"]] == ["SCL_0001", "SCL_0003"]
        assert page["next_page_token"] == ""
        status, page = await ask({"number": "+15550002", "status": "DISCONNECTED"})
        assert [c["call_id"] for c in page["items"]] == ["SCL_0002", "SCL_0005", "SCL_0008"]

        # protobuf: the same page, each call's bytes as stored
        request = ListCallsRequest(limit=2, trunk="ST_a")  # type: ignore[call-arg]
        response = await client.post(
            URL,
            data=request.SerializeToString(),
            headers={**admin(), "Content-Type": "application/protobuf"},
        )
        assert response.status == 200
        decoded = ListCallsResponse.FromString(await response.read())
        assert [c.call_id for c in decoded.items] == ["SCL_0000", "SCL_0001"]  # type: ignore[attr-defined]
        assert decoded.next_page_token  # type: ignore[attr-defined]

        bad_requests: list[dict[str, object]] = [
            {"since": "yesterday"},
            {"until": "2023-13-45"},
            {"limit": 1_000_000},
            {"limit": -1},
            {"status": "sideways"},
            {"page_token": "garbage"},
            {"since": "1h", "until": "2h"},
        ]
        for bad in bad_requests:
            status, error = await ask(bad)
            assert (status, error["code"]) == (400, "invalid_argument"), bad
        response = await client.post(URL, json={})
        assert response.status == 401
        caller = {"Authorization": "Bearer " + sign_token("key", KEYS["key"], sip={"call": True})}
        response = await client.post(URL, json={}, headers=caller)
        assert (await response.json())["code"] == "permission_denied"


async def test_retention_removes_old_calls_in_the_background(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "calls.db")
    await store.open()
    await store.put_many(
        [
            Record(kind="call", id=c.call_id, data=c.SerializeToString())
            for c in (info(1, age_s=40 * 86400), info(2, age_s=29 * 86400), info(3, age_s=10))
        ]
    )
    log = CallLog(store, lambda: NOW, retention_days=30, prune_every=3600)
    log.start()
    try:
        await eventually(lambda: log.pruned == 1, "the retention's first pass")
        calls, _ = await log.page(CallQuery())
        assert [c.call_id for c in calls] == ["SCL_0003", "SCL_0002"]
    finally:
        await log.stop()
        await store.close()


def test_call_list_cli(tmp_path: Path) -> None:
    async def write() -> None:
        store = SQLiteStore(tmp_path / "sipbridge.db")
        await store.open()
        log = CallLog(store, lambda: NOW, retention_days=0)
        log.start()
        await fill(log, [info(n, age_s=60 * n, room=f"r{n % 2}") for n in range(6)])
        await log.stop()
        await store.close()

    asyncio.run(write())
    db = str(tmp_path / "sipbridge.db")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sipbridge", "call", "list", "--db", db, *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )

    since = str(int(NOW - 150))  # epoch seconds: the calls of the last 2.5 minutes
    done = cli("--json", "--room", "r0", "--since", since, "--number", "+15550001")
    assert done.returncode == 0, done.stderr
    assert [c["call_id"] for c in json.loads(done.stdout)] == ["SCL_0000", "SCL_0002"]
    done = cli("--limit", "2")
    assert done.returncode == 0 and "SCL_0001" in done.stdout and "SCL_0002" not in done.stdout
    assert "--page-token" in done.stderr
    for args, says in (
        (("--since", "last tuesday"), "--since 'last tuesday'"),
        (("--limit", "0"), "--limit 0"),
        (("--limit", "5000000"), "--limit 5000000"),
        (("--status", "sideways"), "status 'sideways'"),
    ):
        done = cli(*args)
        assert done.returncode == 1 and says in done.stderr, (args, done.stderr)


async def test_a_calls_recordings_over_twirp(call_log: CallLog) -> None:
    """ListCallRecordings: the EgressInfo of each recording the call is in, as stored."""
    records = EgressRecords(call_log.store, shared=False)
    await records.recover("node", 0)
    recorded = egress.EgressInfo(
        egress_id="EG_a", room_name="lobby", status=egress.EgressStatus.EGRESS_COMPLETE
    )
    recorded.file_results.add(filename="lobby.ogg", location="/rec/lobby.ogg")
    records.save(recorded)
    records.link_call("SCL_0001", "EG_a")
    await records.flush()
    twirp = TwirpServer(KEYS)
    CallLogApi(call_log, lambda: NOW, records).register(twirp)
    app = web.Application()
    app.router.add_route("*", PREFIX + "{route:.*}", twirp.handle)
    url = PREFIX + "sipbridge.CallLog/ListCallRecordings"
    async with TestClient(TestServer(app)) as client:
        response = await client.post(url, json={"call_id": "SCL_0001"}, headers=admin())
        assert response.status == 200
        (item,) = (await response.json())["items"]
        assert (item["egress_id"], item["file_results"][0]["location"]) == (
            "EG_a",
            "/rec/lobby.ogg",
        )
        response = await client.post(url, json={"call_id": "SCL_none"}, headers=admin())
        assert (response.status, await response.json()) == (200, {"items": []})
        response = await client.post(url, json={}, headers=admin())
        assert (response.status, (await response.json())["code"]) == (400, "invalid_argument")
        response = await client.post(url, json={"call_id": "SCL_0001"})
        assert response.status == 401
