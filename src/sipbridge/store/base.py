"""The store interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

KINDS = frozenset(
    {
        "inbound_trunk",
        "outbound_trunk",
        "dispatch_rule",
        "call",
        "transfer",
        "call_quality",
        "egress",
        "call_recordings",
    }
)
# The kinds every node caches in memory (trunks and rules, `state/trunk_cache.py`): a shared
# store announces each change of one of these so that the other nodes reload it.
CACHED_KINDS = frozenset({"inbound_trunk", "outbound_trunk", "dispatch_rule"})


class StoreUnavailable(Exception):
    """The store cannot be reached or opened (a Redis server down, a file that cannot be
    opened); the message says which and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    kind: str
    id: str
    data: bytes


class RecordStore(Protocol):
    """Durable records. Every method completes only once the change is durable."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def load(self, kind: str) -> list[Record]:
        """All records of a kind, in ascending id order."""
        ...

    async def get(self, kind: str, record_id: str) -> Record | None:
        """One record, or None when there is none by that id."""
        ...

    async def put(self, record: Record) -> None:
        """Insert or replace one record."""
        ...

    async def put_many(self, records: list[Record]) -> None:
        """Insert or replace several records in one durable write."""
        ...

    async def delete(self, kind: str, record_id: str) -> bool:
        """Remove one record; False when it did not exist."""
        ...


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}")
