"""`sipbridge store copy SRC DST`: every kind, SQLite to Redis and back, by id (a second run
changes nothing), and clear errors for what cannot be copied."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest
from livekit.protocol import sip

from sipbridge.cli import main
from sipbridge.store import KINDS, Record, store_at
from tests.helpers import free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)


def data(kind: str, i: int) -> bytes:
    """A record's bytes: a real SIPCallInfo for calls (Redis indexes them), else anything."""
    if kind == "call":
        info = sip.SIPCallInfo(call_id=f"call-{i}", room_name=f"room-{i}", created_at_ns=i)
        return info.SerializeToString(deterministic=True)
    return bytes([i, 0, 255]) + kind.encode()


RECORDS = [
    Record(kind=kind, id=f"{kind}-{i}", data=data(kind, i))
    for kind in sorted(KINDS)
    for i in range(3)
]


def everything(location: str, prefix: str = "sipbridge:") -> dict[str, list[Record]]:
    async def load() -> dict[str, list[Record]]:
        store = store_at(location, redis_prefix=prefix)
        await store.open()
        try:
            return {kind: await store.load(kind) for kind in sorted(KINDS)}
        finally:
            await store.close()

    return asyncio.run(load())


def put(location: str, records: list[Record], prefix: str = "sipbridge:") -> None:
    async def write() -> None:
        store = store_at(location, redis_prefix=prefix)
        await store.open()
        try:
            await store.put_many(records)
        finally:
            await store.close()

    asyncio.run(write())


def copy(src: str, dst: str, prefix: str, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(["store", "copy", src, dst, "--redis-prefix", prefix, "--json"]) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_copy_sqlite_to_redis_and_back(
    tmp_path: Path, redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = f"copy{secrets.token_hex(4)}:"
    first, second = f"sqlite:{tmp_path}/first.db", f"sqlite:{tmp_path}/second.db"
    put(first, RECORDS)
    expected = everything(first)
    assert sum(map(len, expected.values())) == 3 * len(KINDS)

    counts = copy(first, redis.url, prefix, capsys)
    assert counts == {"from": first, "to": redis.url, **dict.fromkeys(sorted(KINDS), 3)}
    assert everything(redis.url, prefix) == expected
    copy(first, redis.url, prefix, capsys)  # again: the same records, none doubled
    assert everything(redis.url, prefix) == expected

    copy(redis.url, second, prefix, capsys)
    assert everything(second) == expected

    # A record changed in Redis, copied back over the first file: replaced by id, and what
    # the destination had besides stays.
    changed = Record(kind="dispatch_rule", id="dispatch_rule-1", data=b"changed")
    put(redis.url, [changed], prefix)
    put(first, [Record(kind="call", id="only-here", data=data("call", 9))])
    copy(redis.url, first, prefix, capsys)
    result = everything(first)
    assert changed in result["dispatch_rule"]
    assert len(result["dispatch_rule"]) == 3
    assert [r.id for r in result["call"]] == ["call-0", "call-1", "call-2", "only-here"]


def test_copy_refuses_what_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = f"redis://127.0.0.1:{free_port()}/0"
    db = f"sqlite:{tmp_path}/a.db"
    put(db, RECORDS[:1])
    cases = {
        (f"sqlite:{tmp_path}/none.db", db): "no database at",
        (str(tmp_path / "a.db"), db): "expected sqlite:PATH or redis://",
        (db, "mysql://x"): "expected sqlite:PATH or redis://",
        (db, absent): "cannot reach Redis at",
        (absent, db): "cannot reach Redis at",
    }
    for (src, dst), message in cases.items():
        assert main(["store", "copy", src, dst]) == 1, (src, dst)
        assert message in capsys.readouterr().err, (src, dst)
