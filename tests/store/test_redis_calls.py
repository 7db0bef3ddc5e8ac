"""The call log in Redis (`call:{id}`, `calls`, `calls:by:{field}:{value}`) against a real
redis-server: newest first in pages that cover every call once, filters served by the indexes,
a call moving between indexes as its status changes, and the retention cap."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from livekit.protocol import sip

from sipbridge.store import Record
from sipbridge.store.redis import RedisStore
from sipbridge.store.redis_calls import STATUSES, Cursor
from tests.redis_server import RedisServer
from tests.store.test_call_pages import call, ids
from tests.stores import opened

pytestmark = pytest.mark.timeout(30)

ACTIVE, DISCONNECTED = sip.SIPCallStatus.SCS_ACTIVE, sip.SIPCallStatus.SCS_DISCONNECTED


@pytest.fixture
async def store(redis: RedisServer) -> AsyncIterator[RedisStore]:
    async with opened(RedisStore(redis.url, prefix=f"calls{secrets.token_hex(4)}:")) as s:
        yield s


def flat(pages: list[list[str]]) -> list[str]:
    return [call_id for page in pages for call_id in page]


async def all_pages(store: RedisStore, limit: int, **filters: str) -> list[list[str]]:
    pages, token = [], ""
    while True:
        found, token = await store.call_page(limit=limit, page_token=token, **filters)
        pages.append(ids(found))
        if not token:
            return pages


async def test_pages_newest_first_cover_every_call_once(store: RedisStore) -> None:
    await store.put_many([call(n) for n in range(23)])
    pages = await all_pages(store, 10)
    assert [len(p) for p in pages] == [10, 10, 3]
    assert flat(pages) == [f"SCL_{n:04}" for n in reversed(range(23))]
    # calls created in the same millisecond: ordered by id, none lost between pages
    same = [call(100), call(101), call(102)]
    for record in same:
        info = sip.SIPCallInfo.FromString(record.data)
        info.created_at_ns = 1_800_000_000_000_000_000
        await store.put(Record(kind="call", id=info.call_id, data=info.SerializeToString()))
    pages = await all_pages(store, 2)
    assert flat(pages)[:3] == ["SCL_0102", "SCL_0101", "SCL_0100"]
    assert len(flat(pages)) == 26
    assert (await store.get("call", "SCL_0005")) == call(5)
    assert [r.id for r in await store.load("call")][:2] == ["SCL_0000", "SCL_0001"]


async def test_filters_use_the_indexes(store: RedisStore) -> None:
    await store.put_many(
        [call(n, room="lobby" if n % 2 else "hall", caller=f"+1555000{n % 3}") for n in range(12)]
    )
    await store.put(call(50, room="hall", trunk="ST_b", status=DISCONNECTED))
    lobby, _ = await store.call_page(room="lobby")
    assert ids(lobby) == [f"SCL_{n:04}" for n in (11, 9, 7, 5, 3, 1)]
    caller, _ = await store.call_page(number="+15550002")  # a caller
    assert ids(caller) == ["SCL_0011", "SCL_0008", "SCL_0005", "SCL_0002"]
    called, _ = await store.call_page(number="+15105550100", limit=3)  # the called number
    assert ids(called) == ["SCL_0050", "SCL_0011", "SCL_0010"]
    both, _ = await store.call_page(room="hall", number="+15550002")
    assert ids(both) == ["SCL_0008", "SCL_0002"]
    assert ids((await store.call_page(trunk="ST_b"))[0]) == ["SCL_0050"]
    assert ids((await store.call_page(status="disconnected"))[0]) == ["SCL_0050"]
    assert (await store.call_page(room="nowhere")) == ([], "")
    assert "disconnected" in STATUSES
    with pytest.raises(ValueError, match="unknown call filter"):
        await store.call_page(colour="blue")
    with pytest.raises(ValueError, match="bad page token"):
        await store.call_page(page_token="nonsense")
    assert Cursor.parse("12:SCL_1").token() == "12:SCL_1"


async def test_a_call_moves_between_indexes_and_deletes_cleanly(
    store: RedisStore, redis: RedisServer
) -> None:
    await store.put(call(1, status=ACTIVE, room="lobby"))
    await store.put(call(1, status=DISCONNECTED, room="hall"))
    assert (await store.call_page(status="active")) == ([], "")
    assert (await store.call_page(room="lobby")) == ([], "")
    assert ids((await store.call_page(status="disconnected", room="hall"))[0]) == ["SCL_0001"]
    assert await store.delete("call", "SCL_0001") is True
    assert await store.delete("call", "SCL_0001") is False
    raw = aioredis.Redis.from_url(redis.url)
    try:  # nothing left behind: no hash, no index entry
        assert [k async for k in raw.scan_iter(f"{store.prefix}*")] == []
    finally:
        await raw.aclose()


async def test_retention_keeps_the_newest(redis: RedisServer) -> None:
    store = RedisStore(redis.url, prefix=f"capped{secrets.token_hex(4)}:", call_log_max=5)
    await store.open()
    raw = aioredis.Redis.from_url(redis.url)
    try:
        await store.put_many([call(n, room=f"room-{n}") for n in range(4)])
        await store.put_many([call(n, room=f"room-{n}") for n in range(4, 8)])
        found, _ = await store.call_page(limit=100)
        assert ids(found) == [f"SCL_{n:04}" for n in (7, 6, 5, 4, 3)]
        keys = {
            k.decode().removeprefix(store.prefix) async for k in raw.scan_iter(f"{store.prefix}*")
        }
        assert keys == {"calls"} | {f"call:SCL_{n:04}" for n in range(3, 8)} | {
            f"calls:by:{field}"
            for field in ("trunk:ST_a", "status:active", "number:+15550001", "number:+15105550100")
        } | {f"calls:by:room:room-{n}" for n in range(3, 8)}
    finally:
        await raw.aclose()
        await store.close()
