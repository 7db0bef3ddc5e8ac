"""`livekit.SIP` Twirp methods: trunks and dispatch rules (calls come with their issues)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message
from livekit.protocol import sip as proto

from sipbridge.errors import ApiError, invalid_argument
from sipbridge.server.api.auth import Claims
from sipbridge.server.api.twirp import Encoded, TwirpServer, not_implemented_yet, repeated_field
from sipbridge.server.state.trunk_cache import SipConfig
from sipbridge.telephony.rules import apply_rule_update, rule_from_create
from sipbridge.telephony.trunks import (
    apply_inbound_update,
    apply_outbound_update,
    inbound_as_legacy,
    inbound_matches_filter,
    outbound_as_legacy,
    outbound_matches_filter,
    paginate,
    paginate_ids,
)

SERVICE = "livekit.SIP"

M = TypeVar("M", proto.SIPInboundTrunkInfo, proto.SIPOutboundTrunkInfo, proto.SIPDispatchRuleInfo)
T = TypeVar("T")


def require_sip_admin(_: Any, claims: Claims) -> None:
    if not claims.sip_grant("admin"):
        raise ApiError("permission_denied", "requires the sip.admin grant")


def require_sip_call(_: Any, claims: Claims) -> None:
    if not claims.sip_grant("call"):
        raise ApiError("permission_denied", "requires the sip.call grant")


def require_transfer(req: proto.TransferSIPParticipantRequest, claims: Claims) -> None:
    require_sip_call(req, claims)
    if not claims.video_grant("roomAdmin") or claims.room != req.room_name:
        raise ApiError("permission_denied", "requires roomAdmin for the participant's room")


def _check_replacement_id(replacement_id: str, request_id: str) -> None:
    if replacement_id not in ("", request_id):
        raise invalid_argument("the id in the replacement must be empty or match the request's")


class SipApi:
    def __init__(
        self, config: SipConfig, *, create_participant: Any = None, transfer_participant: Any = None
    ) -> None:
        self.config = config
        # CreateSIPParticipant / TransferSIPParticipant: the call services', else unimplemented
        self.create_participant = create_participant or not_implemented_yet
        self.transfer_participant = transfer_participant or not_implemented_yet

    def register(self, twirp: TwirpServer) -> None:
        methods: list[tuple[str, type[Any], Any, Any]] = [
            (
                "CreateSIPInboundTrunk",
                proto.CreateSIPInboundTrunkRequest,
                self.create_inbound,
                None,
            ),
            (
                "CreateSIPOutboundTrunk",
                proto.CreateSIPOutboundTrunkRequest,
                self.create_outbound,
                None,
            ),
            (
                "UpdateSIPInboundTrunk",
                proto.UpdateSIPInboundTrunkRequest,
                self.update_inbound,
                None,
            ),
            (
                "UpdateSIPOutboundTrunk",
                proto.UpdateSIPOutboundTrunkRequest,
                self.update_outbound,
                None,
            ),
            ("GetSIPInboundTrunk", proto.GetSIPInboundTrunkRequest, self.get_inbound, None),
            ("GetSIPOutboundTrunk", proto.GetSIPOutboundTrunkRequest, self.get_outbound, None),
            ("ListSIPInboundTrunk", proto.ListSIPInboundTrunkRequest, self.list_inbound, None),
            ("ListSIPOutboundTrunk", proto.ListSIPOutboundTrunkRequest, self.list_outbound, None),
            ("ListSIPTrunk", proto.ListSIPTrunkRequest, self.list_legacy, None),
            ("DeleteSIPTrunk", proto.DeleteSIPTrunkRequest, self.delete_trunk, None),
            ("CreateSIPTrunk", proto.CreateSIPTrunkRequest, self.create_legacy, None),
            ("CreateSIPDispatchRule", proto.CreateSIPDispatchRuleRequest, self.create_rule, None),
            ("UpdateSIPDispatchRule", proto.UpdateSIPDispatchRuleRequest, self.update_rule, None),
            ("ListSIPDispatchRule", proto.ListSIPDispatchRuleRequest, self.list_rules, None),
            ("DeleteSIPDispatchRule", proto.DeleteSIPDispatchRuleRequest, self.delete_rule, None),
            (
                "CreateSIPParticipant",
                proto.CreateSIPParticipantRequest,
                self.create_participant,
                require_sip_call,
            ),
            (
                "TransferSIPParticipant",
                proto.TransferSIPParticipantRequest,
                self.transfer_participant,
                require_transfer,
            ),
        ]
        for name, request_type, handler, auth in methods:
            twirp.register(SERVICE, name, request_type, handler, auth or require_sip_admin)

    # -- inbound trunks --------------------------------------------------------------------

    async def create_inbound(
        self, req: proto.CreateSIPInboundTrunkRequest, _: Claims
    ) -> proto.SIPInboundTrunkInfo:
        return await self.config.put_inbound(_new_trunk(req))

    async def update_inbound(
        self, req: proto.UpdateSIPInboundTrunkRequest, _: Claims
    ) -> proto.SIPInboundTrunkInfo:
        return await _update(
            req, req.sip_trunk_id, "sip_trunk_id", self.config.put_inbound, apply_inbound_update
        )

    async def get_inbound(
        self, req: proto.GetSIPInboundTrunkRequest, _: Claims
    ) -> proto.GetSIPInboundTrunkResponse:
        return proto.GetSIPInboundTrunkResponse(trunk=self.config.get_inbound(req.sip_trunk_id))

    async def list_inbound(self, req: proto.ListSIPInboundTrunkRequest, _: Claims) -> Encoded:
        wanted = set(req.trunk_ids)
        ids = (
            t.sip_trunk_id
            for t in self.config.inbound.values()
            if (not wanted or t.sip_trunk_id in wanted) and inbound_matches_filter(t, req.numbers)
        )
        return self._encoded(proto.ListSIPInboundTrunkResponse, paginate_ids(ids, req.page))

    # -- outbound trunks -------------------------------------------------------------------

    async def create_outbound(
        self, req: proto.CreateSIPOutboundTrunkRequest, _: Claims
    ) -> proto.SIPOutboundTrunkInfo:
        return await self.config.put_outbound(_new_trunk(req))

    async def update_outbound(
        self, req: proto.UpdateSIPOutboundTrunkRequest, _: Claims
    ) -> proto.SIPOutboundTrunkInfo:
        return await _update(
            req, req.sip_trunk_id, "sip_trunk_id", self.config.put_outbound, apply_outbound_update
        )

    async def get_outbound(
        self, req: proto.GetSIPOutboundTrunkRequest, _: Claims
    ) -> proto.GetSIPOutboundTrunkResponse:
        return proto.GetSIPOutboundTrunkResponse(trunk=self.config.get_outbound(req.sip_trunk_id))

    async def list_outbound(self, req: proto.ListSIPOutboundTrunkRequest, _: Claims) -> Encoded:
        wanted = set(req.trunk_ids)
        ids = (
            t.sip_trunk_id
            for t in self.config.outbound.values()
            if (not wanted or t.sip_trunk_id in wanted) and outbound_matches_filter(t, req.numbers)
        )
        return self._encoded(proto.ListSIPOutboundTrunkResponse, paginate_ids(ids, req.page))

    # -- both kinds, legacy ----------------------------------------------------------------

    async def list_legacy(
        self, req: proto.ListSIPTrunkRequest, _: Claims
    ) -> proto.ListSIPTrunkResponse:
        items = [inbound_as_legacy(t) for t in self.config.inbound.values()]
        items += [outbound_as_legacy(t) for t in self.config.outbound.values()]
        return proto.ListSIPTrunkResponse(items=paginate(items, req.page, "sip_trunk_id"))

    async def delete_trunk(self, req: proto.DeleteSIPTrunkRequest, _: Claims) -> proto.SIPTrunkInfo:
        if not req.sip_trunk_id:
            raise invalid_argument("sip_trunk_id: must be set")
        trunk = await self.config.delete_trunk(req.sip_trunk_id)
        if isinstance(trunk, proto.SIPInboundTrunkInfo):
            return inbound_as_legacy(trunk)
        return outbound_as_legacy(trunk)

    async def create_legacy(
        self, req: proto.CreateSIPTrunkRequest, _: Claims
    ) -> proto.SIPTrunkInfo:
        raise ApiError(
            "unimplemented",
            "CreateSIPTrunk is deprecated: use CreateSIPInboundTrunk or CreateSIPOutboundTrunk",
        )

    # -- dispatch rules --------------------------------------------------------------------

    async def create_rule(
        self, req: proto.CreateSIPDispatchRuleRequest, _: Claims
    ) -> proto.SIPDispatchRuleInfo:
        rule = rule_from_create(req)
        return await self.config.put_rule(lambda _: _clone(rule))

    async def update_rule(
        self, req: proto.UpdateSIPDispatchRuleRequest, _: Claims
    ) -> proto.SIPDispatchRuleInfo:
        return await _update(
            req,
            req.sip_dispatch_rule_id,
            "sip_dispatch_rule_id",
            self.config.put_rule,
            apply_rule_update,
        )

    async def list_rules(self, req: proto.ListSIPDispatchRuleRequest, _: Claims) -> Encoded:
        wanted = set(req.dispatch_rule_ids)
        trunks = set(req.trunk_ids)
        ids = (
            r.sip_dispatch_rule_id
            for r in self.config.rules.values()
            if (not wanted or r.sip_dispatch_rule_id in wanted)
            and (not trunks or not r.trunk_ids or trunks.intersection(r.trunk_ids))
        )
        return self._encoded(proto.ListSIPDispatchRuleResponse, paginate_ids(ids, req.page))

    def _encoded(self, response_type: type[Message], ids: list[str]) -> Encoded:
        """A list reply (`items` is field 1 in each) from the stored encodings."""
        encoded = self.config.encoded
        return Encoded(response_type, repeated_field(1, (encoded[i] for i in ids)))

    async def delete_rule(
        self, req: proto.DeleteSIPDispatchRuleRequest, _: Claims
    ) -> proto.SIPDispatchRuleInfo:
        if not req.sip_dispatch_rule_id:
            raise invalid_argument("sip_dispatch_rule_id: must be set")
        return await self.config.delete_rule(req.sip_dispatch_rule_id)


def _new_trunk(req: Any) -> Callable[[Any], Any]:
    """What a Create*Trunk request stores: its `trunk`, which must come without an id."""
    if not req.HasField("trunk"):
        raise invalid_argument("trunk: must be set")
    if req.trunk.sip_trunk_id:
        raise invalid_argument("trunk.sip_trunk_id: must not be set on create")
    return lambda _: _clone(req.trunk)


async def _update(
    req: Any,
    record_id: str,
    id_field: str,
    put: Callable[..., Awaitable[M]],
    apply_update: Callable[[M, Any], M],
) -> M:
    """An Update* request of a trunk or rule: `replace` (the whole record, its id empty or the
    same) or `update` (the fields given, applied to the stored record)."""
    if not record_id:
        raise invalid_argument(f"{id_field}: must be set")
    action = req.WhichOneof("action")
    if action == "replace":
        _check_replacement_id(getattr(req.replace, id_field), record_id)
        return await put(lambda _: _clone(req.replace), existing_id=record_id)
    if action == "update":
        return await put(lambda old: apply_update(_present(old), req.update), existing_id=record_id)
    raise invalid_argument("one of replace or update must be set")


def _clone(message: M) -> M:
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _present(value: T | None) -> T:
    if value is None:  # the store calls `make` with the stored value on every update
        raise AssertionError("update without a stored value")
    return value
