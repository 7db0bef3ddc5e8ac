"""Trunks and dispatch rules: the durable SIP configuration, cached in memory.

Reads (every list call, every INVITE's trunk match) are served from memory; writes are validated
against the whole current set under one lock, written to the store, and only then applied to the
cache, so a failed or cancelled write never leaves the two apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from livekit.protocol import sip as proto

from sipbridge.errors import invalid_argument, not_found
from sipbridge.store import Record, RecordStore
from sipbridge.telephony import ids
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

M = TypeVar("M", bound=Message)
R = TypeVar("R")


class SipConfig:
    """All trunks and dispatch rules; `clock` gives Unix seconds for timestamps."""

    def __init__(self, store: RecordStore, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self.inbound: dict[str, proto.SIPInboundTrunkInfo] = {}
        self.outbound: dict[str, proto.SIPOutboundTrunkInfo] = {}
        self.rules: dict[str, proto.SIPDispatchRuleInfo] = {}
        # Each trunk's and rule's protobuf encoding, made once per write: list replies are
        # assembled from these bytes instead of copying and re-encoding every message.
        self.encoded: dict[str, bytes] = {}
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        self.inbound = await self._load(INBOUND, proto.SIPInboundTrunkInfo)
        self.outbound = await self._load(OUTBOUND, proto.SIPOutboundTrunkInfo)
        self.rules = await self._load(RULE, proto.SIPDispatchRuleInfo)

    async def _load(self, kind: str, message_type: type[M]) -> dict[str, M]:
        records = await self.store.load(kind)
        self.encoded.update((r.id, r.data) for r in records)
        return {r.id: message_type.FromString(r.data) for r in records}

    async def _write(self, fn: Callable[[], Coroutine[Any, Any, R]]) -> R:
        """Run a read-validate-write under the lock, shielded from the caller's cancellation."""

        async def locked() -> R:
            async with self._lock:
                return await fn()

        return await asyncio.shield(locked())

    def _stamp(self, info: Any, created: Timestamp | None) -> None:
        now = Timestamp()
        now.FromNanoseconds(int(self.clock() * 1e9))
        if created is not None and created.ByteSize():
            info.created_at.CopyFrom(created)
        else:
            info.created_at.CopyFrom(now)
        info.updated_at.CopyFrom(now)

    # -- inbound trunks --------------------------------------------------------------------

    async def put_inbound(
        self,
        make: Callable[[proto.SIPInboundTrunkInfo | None], proto.SIPInboundTrunkInfo],
        *,
        existing_id: str = "",
    ) -> proto.SIPInboundTrunkInfo:
        """Create (no `existing_id`) or replace a trunk after full validation.

        `make` builds the new trunk from the stored one (None on create) under the write lock,
        so concurrent partial updates never lose each other's changes. It must return a new
        message, never the stored one modified in place.
        """

        async def write() -> proto.SIPInboundTrunkInfo:
            old = self.get_inbound(existing_id) if existing_id else None
            info = make(old)
            created = None
            if old is not None:
                created = old.created_at
                info.sip_trunk_id = existing_id
            upgrade_media(info)
            validate_inbound_trunk(info)
            conflict = find_inbound_conflict(info, self.inbound.values())
            if conflict:
                raise invalid_argument(conflict)
            if old is None:
                info.sip_trunk_id = ids.new_id(ids.TRUNK)
            self._stamp(info, created)
            data = _bytes(info)
            await self.store.put(Record(kind=INBOUND, id=info.sip_trunk_id, data=data))
            self.inbound[info.sip_trunk_id] = info
            self.encoded[info.sip_trunk_id] = data
            return info

        return await self._write(write)

    def get_inbound(self, trunk_id: str) -> proto.SIPInboundTrunkInfo:
        trunk = self.inbound.get(trunk_id)
        if trunk is None:
            raise not_found(f"inbound SIP trunk {trunk_id!r} not found")
        return trunk

    # -- outbound trunks -------------------------------------------------------------------

    async def put_outbound(
        self,
        make: Callable[[proto.SIPOutboundTrunkInfo | None], proto.SIPOutboundTrunkInfo],
        *,
        existing_id: str = "",
    ) -> proto.SIPOutboundTrunkInfo:
        async def write() -> proto.SIPOutboundTrunkInfo:
            old = self.get_outbound(existing_id) if existing_id else None
            info = make(old)
            created = None
            if old is not None:
                created = old.created_at
                info.sip_trunk_id = existing_id
            upgrade_media(info)
            validate_outbound_trunk(info)
            if old is None:
                info.sip_trunk_id = ids.new_id(ids.TRUNK)
            self._stamp(info, created)
            data = _bytes(info)
            await self.store.put(Record(kind=OUTBOUND, id=info.sip_trunk_id, data=data))
            self.outbound[info.sip_trunk_id] = info
            self.encoded[info.sip_trunk_id] = data
            return info

        return await self._write(write)

    def get_outbound(self, trunk_id: str) -> proto.SIPOutboundTrunkInfo:
        trunk = self.outbound.get(trunk_id)
        if trunk is None:
            raise not_found(f"outbound SIP trunk {trunk_id!r} not found")
        return trunk

    async def delete_trunk(
        self, trunk_id: str
    ) -> proto.SIPInboundTrunkInfo | proto.SIPOutboundTrunkInfo:
        async def write() -> proto.SIPInboundTrunkInfo | proto.SIPOutboundTrunkInfo:
            if trunk_id in self.inbound:
                await self.store.delete(INBOUND, trunk_id)
                self.encoded.pop(trunk_id, None)
                return self.inbound.pop(trunk_id)
            if trunk_id in self.outbound:
                await self.store.delete(OUTBOUND, trunk_id)
                self.encoded.pop(trunk_id, None)
                return self.outbound.pop(trunk_id)
            raise not_found(f"SIP trunk {trunk_id!r} not found")

        return await self._write(write)

    # -- dispatch rules --------------------------------------------------------------------

    async def put_rule(
        self,
        make: Callable[[proto.SIPDispatchRuleInfo | None], proto.SIPDispatchRuleInfo],
        *,
        existing_id: str = "",
    ) -> proto.SIPDispatchRuleInfo:
        async def write() -> proto.SIPDispatchRuleInfo:
            old = self.get_rule(existing_id) if existing_id else None
            info = make(old)
            created = None
            if old is not None:
                created = old.created_at
                info.sip_dispatch_rule_id = existing_id
            upgrade_media(info)
            validate_rule(info)
            conflict = find_rule_conflict(info, self.rules.values())
            if conflict:
                raise invalid_argument(conflict)
            if old is None:
                info.sip_dispatch_rule_id = ids.new_id(ids.DISPATCH_RULE)
            self._stamp(info, created)
            data = _bytes(info)
            await self.store.put(Record(kind=RULE, id=info.sip_dispatch_rule_id, data=data))
            self.rules[info.sip_dispatch_rule_id] = info
            self.encoded[info.sip_dispatch_rule_id] = data
            return info

        return await self._write(write)

    def get_rule(self, rule_id: str) -> proto.SIPDispatchRuleInfo:
        rule = self.rules.get(rule_id)
        if rule is None:
            raise not_found(f"SIP dispatch rule {rule_id!r} not found")
        return rule

    async def delete_rule(self, rule_id: str) -> proto.SIPDispatchRuleInfo:
        async def write() -> proto.SIPDispatchRuleInfo:
            rule = self.get_rule(rule_id)
            await self.store.delete(RULE, rule_id)
            del self.rules[rule_id]
            self.encoded.pop(rule_id, None)
            return rule

        return await self._write(write)


def _bytes(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)
