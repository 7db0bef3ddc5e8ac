"""Trunks and dispatch rules: the durable SIP configuration, cached in memory.

Reads (every list call, every INVITE's trunk match) are served from memory; writes are validated
against the whole current set under one lock, written to the store, and only then applied to the
cache, so a failed or cancelled write never leaves the two apart.

With a shared store (Redis, several nodes) the other nodes' writes arrive as change messages:
`changed` reloads that one record, `resync` everything (after a reconnection). Both run under
the write lock, so a reload never interleaves with a local write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Generic, Protocol, TypeVar, cast

from google.protobuf.timestamp_pb2 import Timestamp
from livekit.protocol import sip as proto

from sipbridge import ids
from sipbridge.errors import ApiError, invalid_argument, not_found
from sipbridge.store import Record, RecordStore
from sipbridge.telephony.rules import find_rule_conflict, validate_rule
from sipbridge.telephony.trunks import (
    find_inbound_conflict,
    upgrade_media,
    validate_inbound_trunk,
    validate_outbound_trunk,
)

INBOUND = "inbound_trunk"
OUTBOUND = "outbound_trunk"
RULE = "dispatch_rule"

M = TypeVar("M", proto.SIPInboundTrunkInfo, proto.SIPOutboundTrunkInfo, proto.SIPDispatchRuleInfo)
R = TypeVar("R")


class _Kind(Generic[M]):
    """One kind of stored object and the rules that apply to it. (Not a dataclass: a generic
    dataclass does not compile with mypyc.)"""

    store_kind: str
    message_type: type[M]
    id_field: str
    prefix: str
    label: str
    validate: Callable[[M], None]
    conflict: Callable[[M, Iterable[M]], str | None] | None
    items: dict[str, M]

    def __init__(
        self,
        *,
        store_kind: str,
        message_type: type[M],
        id_field: str,
        prefix: str,
        label: str,
        validate: Callable[[M], None],
        conflict: Callable[[M, Iterable[M]], str | None] | None,
    ) -> None:
        self.store_kind = store_kind
        self.message_type = message_type
        self.id_field = id_field
        self.prefix = prefix
        self.label = label
        self.validate = validate
        self.conflict = conflict
        self.items = {}


class ValidatedWrites(Protocol):
    """A store several nodes write (Redis): a write validated against its current records."""

    async def put_validated(
        self, kind: str, build: Callable[[dict[str, bytes]], Record]
    ) -> Record: ...


def validated_writes(store: RecordStore) -> ValidatedWrites | None:
    """`store` if it is `ValidatedWrites` (what `isinstance` on a runtime-checkable Protocol
    says, which a Protocol compiled by mypyc cannot be)."""
    return cast(ValidatedWrites, store) if callable(getattr(store, "put_validated", None)) else None


def _finished_write(task: asyncio.Task[Any]) -> None:
    """Read the outcome of a write whose caller may have gone (a deadline): an abandoned
    write's refusal is expected, not an unretrieved task exception."""
    if not task.cancelled():
        task.exception()


class SipConfig:
    """All trunks and dispatch rules; `clock` gives Unix seconds for timestamps."""

    def __init__(self, store: RecordStore, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self._inbound = _Kind(
            store_kind=INBOUND,
            message_type=proto.SIPInboundTrunkInfo,
            id_field="sip_trunk_id",
            prefix=ids.TRUNK,
            label="inbound SIP trunk",
            validate=validate_inbound_trunk,
            conflict=find_inbound_conflict,
        )
        self._outbound = _Kind(
            store_kind=OUTBOUND,
            message_type=proto.SIPOutboundTrunkInfo,
            id_field="sip_trunk_id",
            prefix=ids.TRUNK,
            label="outbound SIP trunk",
            validate=validate_outbound_trunk,
            conflict=None,
        )
        self._rules = _Kind(
            store_kind=RULE,
            message_type=proto.SIPDispatchRuleInfo,
            id_field="sip_dispatch_rule_id",
            prefix=ids.DISPATCH_RULE,
            label="SIP dispatch rule",
            validate=validate_rule,
            conflict=find_rule_conflict,
        )
        self._kinds: dict[str, _Kind[Any]] = {
            k.store_kind: k for k in (self._inbound, self._outbound, self._rules)
        }
        # Each trunk's and rule's protobuf encoding, made once per write: list replies are
        # assembled from these bytes instead of copying and re-encoding every message.
        self.encoded: dict[str, bytes] = {}
        self._lock = asyncio.Lock()
        self._writes: set[asyncio.Task[Any]] = set()

    @property
    def inbound(self) -> dict[str, proto.SIPInboundTrunkInfo]:
        return self._inbound.items

    @property
    def outbound(self) -> dict[str, proto.SIPOutboundTrunkInfo]:
        return self._outbound.items

    @property
    def rules(self) -> dict[str, proto.SIPDispatchRuleInfo]:
        return self._rules.items

    async def load(self) -> None:
        await self._load(self._inbound)
        await self._load(self._outbound)
        await self._load(self._rules)

    async def _load(self, kind: _Kind[M]) -> None:
        records = await self.store.load(kind.store_kind)
        items = {r.id: kind.message_type.FromString(r.data) for r in records}
        for gone in kind.items.keys() - items.keys():
            self.encoded.pop(gone, None)
        self.encoded.update((r.id, r.data) for r in records)
        kind.items.clear()
        kind.items.update(items)

    async def resync(self) -> None:
        """Reload every trunk and rule (another node may have changed any of them)."""
        async with self._lock:
            await self.load()

    async def changed(self, store_kind: str, object_id: str) -> None:
        """Reload one record that another node (or this one) wrote or deleted; a kind this
        cache does not hold is ignored."""
        kind = self._kinds.get(store_kind)
        if kind is not None:
            async with self._lock:
                await self._reload(kind, object_id)

    async def look_up_outbound(self, trunk_id: str) -> None:
        """Before using outbound trunk `trunk_id`: a trunk this cache does not hold is read from
        the store, in case another node wrote it a moment ago and its change message is still on
        the way (a client creates a trunk on one node and dials through another at once)."""
        if trunk_id and trunk_id not in self._outbound.items:
            await self.changed(OUTBOUND, trunk_id)

    async def _reload(self, kind: _Kind[M], object_id: str) -> None:
        record = await self.store.get(kind.store_kind, object_id)
        if record is None:
            kind.items.pop(object_id, None)
            self.encoded.pop(object_id, None)
        else:
            kind.items[object_id] = kind.message_type.FromString(record.data)
            self.encoded[object_id] = record.data

    async def drain(self) -> None:
        """Wait for writes in flight (at shutdown, before the store closes)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def _write(self, fn: Callable[[], Coroutine[Any, Any, R]]) -> R:
        """Run a read-validate-write under the lock.

        A caller that gives up (a Twirp deadline) before the write starts leaves no change;
        once the write has started it is finished and reported as done, so a client never gets
        a timeout for a change that was in fact made.
        """
        started = False
        abandoned = False

        async def locked() -> R:
            nonlocal started
            async with self._lock:
                if abandoned:
                    raise ApiError("deadline_exceeded", "request timed out")
                started = True
                return await fn()

        task = asyncio.ensure_future(locked())
        self._writes.add(task)
        task.add_done_callback(_finished_write)
        task.add_done_callback(self._writes.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not started:
                abandoned = True
                raise
        return await asyncio.shield(task)

    def _stamp(self, info: Any, created: Timestamp | None) -> None:
        now = Timestamp()
        now.FromNanoseconds(int(self.clock() * 1e9))
        if created is not None and created.ByteSize():
            info.created_at.CopyFrom(created)
        else:
            info.created_at.CopyFrom(now)
        info.updated_at.CopyFrom(now)

    async def _put(self, kind: _Kind[M], make: Callable[[M | None], M], existing_id: str) -> M:
        """Create (no `existing_id`) or replace an object after full validation.

        `make` builds the new object from the stored one (None on create) under the write lock,
        so concurrent partial updates never lose each other's changes. It must return a new
        message, never the stored one modified in place.
        """

        def build(items: dict[str, M]) -> tuple[M, Record]:
            """The new object checked against `items`, and its record."""
            old = items.get(existing_id) if existing_id else None
            if existing_id and old is None:
                raise not_found(f"{kind.label} {existing_id!r} not found")
            info = make(old)
            if old is not None:
                setattr(info, kind.id_field, existing_id)
            upgrade_media(info)
            kind.validate(info)
            if kind.conflict is not None:
                conflict = kind.conflict(info, items.values())
                if conflict:
                    raise invalid_argument(conflict)
            if old is None:
                setattr(info, kind.id_field, ids.new_id(kind.prefix))
            self._stamp(info, old.created_at if old is not None else None)
            object_id = str(getattr(info, kind.id_field))
            data = info.SerializeToString(deterministic=True)
            return info, Record(kind=kind.store_kind, id=object_id, data=data)

        async def write() -> M:
            shared = validated_writes(self.store)
            if shared is not None:
                # Shared with other nodes: checked against the store's records as they are at
                # the write (docs/cluster.md s1: WATCH), not against this node's cache.
                made: list[M] = []

                def checked(stored: dict[str, bytes]) -> Record:
                    fresh = {rid: kind.message_type.FromString(d) for rid, d in stored.items()}
                    info, record = build(fresh)
                    made[:] = [info]
                    return record

                record = await shared.put_validated(kind.store_kind, checked)
                info = made[0]
            else:
                info, record = build(kind.items)
                await self.store.put(record)
            kind.items[record.id] = info
            self.encoded[record.id] = record.data
            return info

        return await self._write(write)

    def _get(self, kind: _Kind[M], object_id: str) -> M:
        info = kind.items.get(object_id)
        if info is None:
            raise not_found(f"{kind.label} {object_id!r} not found")
        return info

    async def _delete(self, kind: _Kind[M], object_id: str) -> M:
        info = self._get(kind, object_id)
        await self.store.delete(kind.store_kind, object_id)
        del kind.items[object_id]
        self.encoded.pop(object_id, None)
        return info

    # -- the typed API -----------------------------------------------------------------------

    async def put_inbound(
        self,
        make: Callable[[proto.SIPInboundTrunkInfo | None], proto.SIPInboundTrunkInfo],
        *,
        existing_id: str = "",
    ) -> proto.SIPInboundTrunkInfo:
        return await self._put(self._inbound, make, existing_id)

    async def put_outbound(
        self,
        make: Callable[[proto.SIPOutboundTrunkInfo | None], proto.SIPOutboundTrunkInfo],
        *,
        existing_id: str = "",
    ) -> proto.SIPOutboundTrunkInfo:
        return await self._put(self._outbound, make, existing_id)

    async def put_rule(
        self,
        make: Callable[[proto.SIPDispatchRuleInfo | None], proto.SIPDispatchRuleInfo],
        *,
        existing_id: str = "",
    ) -> proto.SIPDispatchRuleInfo:
        return await self._put(self._rules, make, existing_id)

    def get_inbound(self, trunk_id: str) -> proto.SIPInboundTrunkInfo:
        return self._get(self._inbound, trunk_id)

    def get_outbound(self, trunk_id: str) -> proto.SIPOutboundTrunkInfo:
        return self._get(self._outbound, trunk_id)

    def get_rule(self, rule_id: str) -> proto.SIPDispatchRuleInfo:
        return self._get(self._rules, rule_id)

    async def delete_trunk(
        self, trunk_id: str
    ) -> proto.SIPInboundTrunkInfo | proto.SIPOutboundTrunkInfo:
        async def write() -> proto.SIPInboundTrunkInfo | proto.SIPOutboundTrunkInfo:
            if trunk_id in self.inbound:
                return await self._delete(self._inbound, trunk_id)
            if trunk_id in self.outbound:
                return await self._delete(self._outbound, trunk_id)
            raise not_found(f"SIP trunk {trunk_id!r} not found")

        return await self._write(write)

    async def delete_rule(self, rule_id: str) -> proto.SIPDispatchRuleInfo:
        async def write() -> proto.SIPDispatchRuleInfo:
            return await self._delete(self._rules, rule_id)

        return await self._write(write)
