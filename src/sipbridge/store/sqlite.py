"""SQLite store: one embedded file, written from one thread off the event loop.

WAL journal with `synchronous=FULL`: a write returns only after it reached the disk, and a crash
or kill at any moment leaves the previous or the new state, never a half-written one.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from sipbridge.store.base import Record, check_kind

R = TypeVar("R")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
"""


class SQLiteStore:
    """`RecordStore` on a SQLite file (`:memory:` works too, for one process)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db: sqlite3.Connection | None = None
        # One thread owns the connection: SQLite serialises writers anyway, and the event loop
        # never blocks on disk.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    async def _run(self, fn: Callable[..., R], *args: object) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def load(self, kind: str) -> list[Record]:
        check_kind(kind)
        rows: list[tuple[str, bytes]] = await self._run(self._load, kind)
        return [Record(kind=kind, id=rid, data=bytes(data)) for rid, data in rows]

    def _load(self, kind: str) -> list[tuple[str, bytes]]:
        cur = self._conn().execute(
            "SELECT id, data FROM records WHERE kind = ? ORDER BY id", (kind,)
        )
        return cur.fetchall()

    async def get(self, kind: str, record_id: str) -> Record | None:
        check_kind(kind)
        row: tuple[bytes] | None = await self._run(self._get, kind, record_id)
        return None if row is None else Record(kind=kind, id=record_id, data=bytes(row[0]))

    def _get(self, kind: str, record_id: str) -> tuple[bytes] | None:
        cur = self._conn().execute(
            "SELECT data FROM records WHERE kind = ? AND id = ?", (kind, record_id)
        )
        row: tuple[bytes] | None = cur.fetchone()
        return row

    async def put(self, record: Record) -> None:
        check_kind(record.kind)
        await self._run(self._put, record)

    def _put(self, record: Record) -> None:
        with self._conn():
            self._conn().execute(
                "INSERT OR REPLACE INTO records (kind, id, data) VALUES (?, ?, ?)",
                (record.kind, record.id, record.data),
            )

    async def put_many(self, records: list[Record]) -> None:
        for record in records:
            check_kind(record.kind)
        await self._run(self._put_many, records)

    def _put_many(self, records: list[Record]) -> None:
        db = self._conn()
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO records (kind, id, data) VALUES (?, ?, ?)",
                [(r.kind, r.id, r.data) for r in records],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def delete(self, kind: str, record_id: str) -> bool:
        check_kind(kind)
        deleted: bool = await self._run(self._delete, kind, record_id)
        return deleted

    def _delete(self, kind: str, record_id: str) -> bool:
        with self._conn():
            cur = self._conn().execute(
                "DELETE FROM records WHERE kind = ? AND id = ?", (kind, record_id)
            )
        return cur.rowcount > 0
