"""A page of the call log is the same page from SQLite and from Redis (`store/call_query.py`):
newest first, ties by id, filters by room/trunk/status/number, a time window, page tokens that
cover every call once, retention by age; and a SQLite file from before the call indexes keeps
its calls and is indexed when it is opened."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit.protocol import sip

from sipbridge.store import Record, SQLiteStore
from sipbridge.store.call_query import CallQuery, parse_time
from tests.stores import Store, either_store, opened

pytestmark = pytest.mark.timeout(30)

ACTIVE, DISCONNECTED = sip.SIPCallStatus.SCS_ACTIVE, sip.SIPCallStatus.SCS_DISCONNECTED
T0_MS = 1_700_000_000_000


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with opened(either_store(request, tmp_path, "calls")) as s:
        yield s


def call(
    n: int,
    *,
    room: str = "lobby",
    status: int = ACTIVE,
    caller: str = "+15550001",
    called: str = "+15105550100",
    trunk: str = "ST_a",
    ms: int | None = None,
) -> Record:
    info = sip.SIPCallInfo(
        call_id=f"SCL_{n:04}",
        room_name=room,
        trunk_id=trunk,
        call_status=status,  # type: ignore[arg-type]
        created_at_ns=(T0_MS + (n if ms is None else ms)) * 1_000_000,
    )
    info.from_uri.user = caller
    info.to_uri.user = called
    return Record(kind="call", id=info.call_id, data=info.SerializeToString(deterministic=True))


def ids(datas: list[bytes]) -> list[str]:
    return [sip.SIPCallInfo.FromString(d).call_id for d in datas]


async def every_page(store: Store, limit: int, **query: str | int) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        datas, token = await store.call_page(limit=limit, page_token=token, **query)  # type: ignore[arg-type]
        pages.append(ids(datas))
        if not token:
            return pages


async def test_pages_filters_and_window(store: Store) -> None:
    records = [
        call(
            n,
            room=f"room-{n % 3}",
            trunk="ST_a" if n % 2 else "ST_b",
            status=DISCONNECTED if n % 4 == 0 else ACTIVE,
            caller=f"+1555000{n % 5}",
            called="+15550003" if n == 7 else "+15105550100",
            ms=n // 2,  # pairs share a millisecond: ties are ordered by id
        )
        for n in range(40)
    ]
    await store.put_many(records)
    newest_first = [f"SCL_{n:04}" for n in reversed(range(40))]
    pages = await every_page(store, 7)
    assert [len(p) for p in pages] == [7, 7, 7, 7, 7, 5]
    assert [i for p in pages for i in p] == newest_first

    def expect(keep: object) -> list[str]:
        return [i for i in newest_first if keep(int(i[4:]))]  # type: ignore[operator]

    async def flat(**query: str | int) -> list[str]:
        return [i for p in await every_page(store, 3, **query) for i in p]

    assert await flat(room="room-1") == expect(lambda n: n % 3 == 1)
    assert await flat(trunk="ST_b", status="disconnected") == expect(lambda n: n % 4 == 0)
    # a number is the caller or the called user
    assert await flat(number="+15550003") == expect(lambda n: n % 5 == 3 or n == 7)
    assert await flat(number="+15550003", room="room-1") == expect(
        lambda n: (n % 5 == 3 or n == 7) and n % 3 == 1
    )
    # [since, until): calls 10..29 were created at T0+5 .. T0+14 ms
    assert await flat(since_ms=T0_MS + 5, until_ms=T0_MS + 15) == expect(lambda n: 10 <= n < 30)
    assert await flat(since_ms=T0_MS + 5, trunk="ST_a") == expect(lambda n: n >= 10 and n % 2)
    assert await flat(room="nowhere") == []


async def test_bad_queries_are_refused(store: Store) -> None:
    for bad in (
        {"limit": 0},
        {"limit": 100_000},
        {"status": "sideways"},
        {"page_token": "nonsense"},
        {"since_ms": T0_MS + 10, "until_ms": T0_MS},
    ):
        with pytest.raises(ValueError):
            await store.call_page(**bad)


async def test_a_status_change_moves_the_call(store: Store) -> None:
    await store.put_many([call(1), call(2)])
    await store.put(call(1, status=DISCONNECTED))
    assert ids((await store.call_page(status="active"))[0]) == ["SCL_0002"]
    assert ids((await store.call_page(status="disconnected"))[0]) == ["SCL_0001"]
    assert await store.delete("call", "SCL_0001")
    assert (await store.call_page(status="disconnected"))[0] == []


async def test_prune_removes_only_older_calls(store: Store) -> None:
    await store.put_many([call(n, ms=n * 1000) for n in range(10)])
    assert await store.prune_calls(T0_MS + 4000) == 4
    remaining = [i for p in await every_page(store, 100) for i in p]
    assert remaining == [f"SCL_{n:04}" for n in reversed(range(4, 10))]
    assert await store.get("call", "SCL_0003") is None
    assert await store.prune_calls(T0_MS + 4000) == 0


async def test_an_older_sqlite_file_keeps_its_calls_and_is_indexed(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    # The schema before the call indexes: one records table, user_version 0.
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE records (kind TEXT NOT NULL, id TEXT NOT NULL, data BLOB NOT NULL, "
        "PRIMARY KEY (kind, id)) WITHOUT ROWID"
    )
    old = [call(n, room=f"room-{n % 2}") for n in range(5)]
    transfer = sip.SIPTransferInfo(transfer_id="STR_1", call_id="SCL_0003")
    db.executemany(
        "INSERT INTO records VALUES (?, ?, ?)",
        [(r.kind, r.id, r.data) for r in old]
        + [("transfer", "STR_1", transfer.SerializeToString())],
    )
    db.commit()
    db.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        assert len(await store.load("call")) == 5
        datas, _ = await store.call_page(room="room-1")
        assert ids(datas) == ["SCL_0003", "SCL_0001"]
        assert len(await store.transfers_of(["SCL_0003"])) == 1
    finally:
        await store.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == 1
    check.close()


def test_parse_time() -> None:
    now = 1_700_000_000.0
    assert parse_time("", now) == 0
    assert parse_time("2h", now) == (now - 7200) * 1000
    assert parse_time("7d", now) == (now - 7 * 86400) * 1000
    assert parse_time("2023-11-14T22:13:20Z", now) == 1_700_000_000_000
    assert parse_time("2023-11-14", now) == 1_699_920_000_000
    assert parse_time("1700000000", now) == 1_700_000_000_000
    for bad in ("yesterday", "2h ago", "-5m", "2023-13-45"):
        with pytest.raises(ValueError):
            parse_time(bad, now)
    with pytest.raises(ValueError):
        CallQuery(limit=1001).check()
