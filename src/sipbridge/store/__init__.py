"""Persistence of trunks, dispatch rules and call records behind one narrow interface.

A store keeps opaque records (serialised protobuf messages) by kind and id. Kinds are fixed
names; everything else (validation, indexing, caching) happens above. A SQLite file (one node,
the default) and Redis (`store/redis.py`, several nodes sharing one) both provide it.
"""

from __future__ import annotations

from sipbridge.store.base import KINDS, Record, RecordStore, StoreUnavailable
from sipbridge.store.sqlite import SQLiteStore

__all__ = ["KINDS", "Record", "RecordStore", "SQLiteStore", "StoreUnavailable", "store_at"]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def store_at(location: str, *, redis_prefix: str = "sipbridge:") -> RecordStore:
    """The store a location names: `redis://HOST:PORT/DB` (or `rediss://`, `unix://`) for
    Redis, `sqlite:PATH` or a bare path for a SQLite file. Not opened yet."""
    if location.startswith(REDIS_SCHEMES):
        from sipbridge.store.redis import RedisStore  # noqa: PLC0415 - only when used

        return RedisStore(location, prefix=redis_prefix)
    path = location.removeprefix("sqlite:")
    if not path:
        raise ValueError(f"no path in {location!r}: expected sqlite:PATH or redis://...")
    return SQLiteStore(path)
