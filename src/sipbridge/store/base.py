"""The store interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

KINDS = frozenset({"inbound_trunk", "outbound_trunk", "dispatch_rule", "call", "transfer"})


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

    async def put(self, record: Record) -> None:
        """Insert or replace one record."""
        ...

    async def put_many(self, records: list[Record]) -> None:
        """Insert or replace several records in one durable write."""
        ...

    async def delete(self, kind: str, record_id: str) -> bool:
        """Remove one record; False when it did not exist."""
        ...
