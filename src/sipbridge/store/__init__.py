"""Persistence of trunks, dispatch rules and call records behind one narrow interface.

A store keeps opaque records (serialised protobuf messages) by kind and id. Kinds are fixed
names; everything else (validation, indexing, caching) happens above. This is what a SQLite file
and a Redis hash can both provide, so a Redis backend can follow without touching callers.
"""

from sipbridge.store.base import Record, RecordStore
from sipbridge.store.sqlite import SQLiteStore

__all__ = ["Record", "RecordStore", "SQLiteStore"]
