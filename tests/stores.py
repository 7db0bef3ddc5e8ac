"""Record stores for the tests' fixtures: SQLite in the test's directory or Redis on a real
redis-server (a key prefix of its own), open for the fixture's life."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from sipbridge.store import SQLiteStore
from sipbridge.store.redis import RedisStore
from tests.redis_server import RedisServer

Store = SQLiteStore | RedisStore
S = TypeVar("S", SQLiteStore, RedisStore)


@asynccontextmanager
async def opened(store: S) -> AsyncIterator[S]:
    """`store` opened for the block, closed after it."""
    await store.open()
    yield store
    await store.close()


def either_store(request: pytest.FixtureRequest, tmp_path: Path, name: str) -> Store:
    """The store a fixture parametrized ["sqlite", "redis"] asks for (not opened): `name`.db in
    `tmp_path`, or the module's `redis` server with keys under `name` and a random part."""
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / f"{name}.db")
    server: RedisServer = request.getfixturevalue("redis")
    return RedisStore(server.url, prefix=f"{name}{secrets.token_hex(4)}:")
