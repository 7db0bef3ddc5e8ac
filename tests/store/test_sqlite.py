"""The SQLite record store: put/load/delete by kind and id, order, durability across reopen."""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit.protocol import sip

from sipbridge.store import Record, RecordStore, SQLiteStore
from sipbridge.store.base import KINDS
from tests.stores import opened


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with opened(SQLiteStore(tmp_path / "sipbridge.db")) as s:
        yield s


def rec(kind: str, record_id: str, data: bytes = b"") -> Record:
    return Record(kind=kind, id=record_id, data=data or record_id.encode())


def test_sqlite_store_satisfies_the_protocol() -> None:
    store: RecordStore = SQLiteStore(":memory:")  # checked by mypy
    for name in ("open", "close", "load", "put", "delete"):
        assert inspect.iscoroutinefunction(getattr(store, name)), name


def test_kinds_are_the_documented_ones() -> None:
    assert {
        "inbound_trunk",
        "outbound_trunk",
        "dispatch_rule",
        "call",
        "transfer",
        "call_quality",
        "egress",
        "call_recordings",
    } == KINDS


async def test_empty_store_loads_nothing(store: SQLiteStore) -> None:
    for kind in sorted(KINDS):
        assert await store.load(kind) == []


async def test_put_then_load(store: SQLiteStore) -> None:
    trunk = sip.SIPInboundTrunkInfo(sip_trunk_id="ST_a", numbers=["+15105550100"])
    await store.put(Record(kind="inbound_trunk", id="ST_a", data=trunk.SerializeToString()))
    [loaded] = await store.load("inbound_trunk")
    assert loaded.kind == "inbound_trunk"
    assert loaded.id == "ST_a"
    assert isinstance(loaded.data, bytes)
    assert sip.SIPInboundTrunkInfo.FromString(loaded.data) == trunk


async def test_load_is_ordered_by_id(store: SQLiteStore) -> None:
    for record_id in ["ST_c", "ST_a", "ST_B", "ST_b", "ST_aa"]:
        await store.put(rec("inbound_trunk", record_id))
    loaded = await store.load("inbound_trunk")
    assert [r.id for r in loaded] == sorted(["ST_c", "ST_a", "ST_B", "ST_b", "ST_aa"])
    assert [r.data for r in loaded] == [r.id.encode() for r in loaded]


async def test_kinds_are_separate(store: SQLiteStore) -> None:
    await store.put(rec("inbound_trunk", "X", b"in"))
    await store.put(rec("outbound_trunk", "X", b"out"))
    await store.put(rec("dispatch_rule", "SDR_1"))
    assert await store.load("inbound_trunk") == [rec("inbound_trunk", "X", b"in")]
    assert await store.load("outbound_trunk") == [rec("outbound_trunk", "X", b"out")]
    assert [r.id for r in await store.load("dispatch_rule")] == ["SDR_1"]
    assert await store.load("call") == []
    assert await store.delete("inbound_trunk", "X")
    assert await store.load("outbound_trunk") == [rec("outbound_trunk", "X", b"out")]


async def test_put_replaces(store: SQLiteStore) -> None:
    await store.put(rec("dispatch_rule", "SDR_1", b"old"))
    await store.put(rec("dispatch_rule", "SDR_1", b"new"))
    assert await store.load("dispatch_rule") == [rec("dispatch_rule", "SDR_1", b"new")]


async def test_binary_data_round_trips(store: SQLiteStore) -> None:
    data = bytes(range(256)) * 4
    await store.put(rec("call", "SCL_1", data))
    assert (await store.load("call"))[0].data == data


async def test_delete(store: SQLiteStore) -> None:
    await store.put(rec("dispatch_rule", "SDR_1"))
    await store.put(rec("dispatch_rule", "SDR_2"))
    assert await store.delete("dispatch_rule", "SDR_1") is True
    assert [r.id for r in await store.load("dispatch_rule")] == ["SDR_2"]
    assert await store.delete("dispatch_rule", "SDR_1") is False
    assert await store.delete("dispatch_rule", "missing") is False
    assert await store.delete("call", "SDR_2") is False


async def test_records_persist_across_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "store.db"  # parent folders are created
    first = SQLiteStore(path)
    await first.open()
    await first.put(rec("inbound_trunk", "ST_1", b"one"))
    await first.put(rec("inbound_trunk", "ST_2", b"two"))
    await first.put(rec("dispatch_rule", "SDR_1", b"rule"))
    await first.delete("inbound_trunk", "ST_2")
    await first.close()
    assert path.exists()

    second = SQLiteStore(str(path))
    await second.open()
    try:
        assert await second.load("inbound_trunk") == [rec("inbound_trunk", "ST_1", b"one")]
        assert await second.load("dispatch_rule") == [rec("dispatch_rule", "SDR_1", b"rule")]
    finally:
        await second.close()


async def test_file_is_plain_sqlite_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    await store.open()
    await store.put(rec("call", "SCL_1", b"x"))
    await store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT kind, id, data FROM records").fetchall() == [
            ("call", "SCL_1", b"x")
        ]
    finally:
        db.close()


async def test_memory_store() -> None:
    store = SQLiteStore(":memory:")
    await store.open()
    try:
        await store.put(rec("call", "SCL_1"))
        assert [r.id for r in await store.load("call")] == ["SCL_1"]
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["", "trunk", "INBOUND_TRUNK", "records", "call; DROP TABLE"])
async def test_unknown_kind_is_refused(store: SQLiteStore, kind: str) -> None:
    with pytest.raises(ValueError, match="unknown record kind"):
        await store.put(rec(kind, "x"))
    with pytest.raises(ValueError, match="unknown record kind"):
        await store.load(kind)
    with pytest.raises(ValueError, match="unknown record kind"):
        await store.delete(kind, "x")
    for known in sorted(KINDS):
        assert await store.load(known) == []


async def test_using_a_store_that_is_not_open(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "never-opened.db")
    try:
        with pytest.raises(RuntimeError, match="not open"):
            await store.load("call")
        with pytest.raises(RuntimeError, match="not open"):
            await store.put(rec("call", "x"))
    finally:
        await store.close()
    assert not (tmp_path / "never-opened.db").exists()
